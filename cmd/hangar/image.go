package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// Placeholder until internal/image lands (issue 3); replaced by the image helper.
func newImageCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{Use: "image", Short: "Build and manage guest images", RunE: func(*cobra.Command, []string) error {
		return errors.New("not built yet")
	}}
}
