package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hangar-vm/hangar/pkg/api"
)

// newUserNetworkCmd is `hangar user network`: the admin's per-user egress
// policy, which the user cannot change or remove.
func newUserNetworkCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "network",
		Short: "Show, set or remove a user's own network policy (admin)",
		Long: `A user's own network policy replaces the per-kind egress defaults
(network.egress in the config) for every VM the user boots afterwards.
Running VMs keep the policy they booted with.`,
	}
	show := &cobra.Command{
		Use:   "show USER_ID",
		Short: "Show a user's own network policy",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			p, err := c.UserNetwork(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), p)
			}
			return printNetworkPolicy(cmd, p)
		},
	}
	var (
		mode  string
		allow []string
		proxy string
	)
	set := &cobra.Command{
		Use:   "set USER_ID --mode none|full|allow [--allow CIDR|DOMAIN]... [--proxy URL]",
		Short: "Set a user's own network policy",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			p, err := c.SetUserNetwork(cmd.Context(), args[0], api.PutNetworkPolicyRequest{Mode: mode, Allow: allow, Proxy: proxy})
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), p)
			}
			return printNetworkPolicy(cmd, p)
		},
	}
	set.Flags().StringVar(&mode, "mode", "", "egress: none, full, or allow (only --allow destinations)")
	set.Flags().StringSliceVar(&allow, "allow", nil, "with --mode allow: a CIDR, address or domain the user's VMs may reach (repeatable)")
	set.Flags().StringVar(&proxy, "proxy", "", "upstream proxy, http:// or socks5://, optionally with user:password; chained on the host, never shown again")
	_ = set.MarkFlagRequired("mode")
	rm := &cobra.Command{
		Use:     "rm USER_ID",
		Aliases: []string{"delete"},
		Short:   "Remove a user's own network policy (the per-kind defaults apply again)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			if err := c.DeleteUserNetwork(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed the network policy of %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(show, set, rm)
	return cmd
}

func printNetworkPolicy(cmd *cobra.Command, p api.NetworkPolicy) error {
	proxy := p.ProxyHost
	if proxy == "" {
		proxy = "-"
	}
	allow := strings.Join(p.Allow, ",")
	if allow == "" {
		allow = "-"
	}
	return table(cmd.OutOrStdout(), "USER\tMODE\tALLOW\tPROXY\tVERSION\tUPDATED",
		[][]string{{p.UserID, p.Mode, allow, proxy, fmt.Sprint(p.Version), ago(p.UpdatedAt)}})
}
