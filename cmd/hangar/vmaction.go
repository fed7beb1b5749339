package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

type apiClient = *client.Client

func vmAction(o *rootOptions, use, short string, do func(context.Context, apiClient, string) (api.VM, error)) *cobra.Command {
	return &cobra.Command{
		Use: use + " ID", Short: short, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			vm, err := do(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			return o.printVM(cmd.OutOrStdout(), vm)
		},
	}
}
