package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// authShareCmd is `hangar auth share ID`: a view-only live-view link of
// one's own login, for someone helping; view-only is signed into it.
func authShareCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use: "share SESSION_ID", Short: "Print a view-only live-view link of your running login (for someone helping)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			s, err := c.ShareAuthSession(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), s)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "view-only link, valid until %s:\n%s%s\n",
				s.ExpiresAt.Local().Format(time.TimeOnly), strings.TrimRight(c.Base(), "/"), s.LiveViewURL)
			return nil
		},
	}
}
