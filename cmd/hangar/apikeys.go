package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/hangar-vm/hangar/pkg/api"
)

// newAPIKeyCmd is `hangar key`: the caller's own API keys. (Not `hangar
// keys`, which manages the keys that seal credentials on the server.)
func newAPIKeyCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "List, create and revoke your API keys"}
	ls := &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List your API keys (never the keys themselves)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			ks, err := c.ListAPIKeys(cmd.Context())
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), ks)
			}
			rows := make([][]string, 0, len(ks))
			for _, k := range ks {
				exp := "never"
				if k.ExpiresAt != nil {
					exp = k.ExpiresAt.Local().Format(time.DateTime)
					if k.Expired {
						exp += " (expired)"
					}
				}
				name := k.Name
				if k.Current {
					name += " (this one)"
				}
				rows = append(rows, []string{k.ID, k.Prefix + "…", name, ago(k.CreatedAt), exp})
			}
			return table(cmd.OutOrStdout(), "ID\tKEY\tNAME\tCREATED\tEXPIRES", rows)
		},
	}
	var (
		name      string
		expiresIn time.Duration
	)
	create := &cobra.Command{
		Use: "create [--name NAME] [--expires-in 720h]", Short: "Create another API key and print it (shown only once)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			req := api.CreateAPIKeyRequest{Name: name}
			if expiresIn > 0 {
				req.ExpiresIn = expiresIn.String()
			}
			k, err := c.CreateAPIKey(cmd.Context(), req)
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), k)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "created API key %s", k.ID)
			if k.ExpiresAt != nil {
				fmt.Fprintf(w, ", expires %s", k.ExpiresAt.Local().Format(time.DateTime))
			}
			fmt.Fprintf(w, "\nAPI key (shown only now, store it safely):\n%s\n", k.Key)
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "", "a label to recognise the key by (letters, digits, - _ . @)")
	create.Flags().DurationVar(&expiresIn, "expires-in", 0, "the key stops working after this long (1m to 43800h); 0: never")
	revoke := &cobra.Command{
		Use: "revoke ID...", Aliases: []string{"rm"}, Short: "Revoke API keys by id (see hangar key ls)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			var errs []error
			for _, id := range args {
				if err := c.RevokeAPIKey(cmd.Context(), id); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", id, err))
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", id)
			}
			return errors.Join(errs...)
		},
	}
	cmd.AddCommand(ls, create, revoke)
	return cmd
}
