package main

import (
	"github.com/spf13/cobra"
)

// rootOptions are the global flags every subcommand sees.
type rootOptions struct {
	server  string // API address for client commands
	token   string // API key for client commands
	dataDir string // daemon data directory (serve, image, doctor, gc)
	json    bool   // machine-readable output
	remote  string // named remote for client commands
}

func newRootCmd() *cobra.Command {
	o := &rootOptions{}
	root := &cobra.Command{
		Use:           "hangar",
		Short:         "Control plane for per-user microVMs that run AI coding CLIs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&o.server, "server", "", "hangar API address (env HANGAR_SERVER, default http://127.0.0.1:4000)")
	pf.StringVar(&o.token, "token", "", "API key (env HANGAR_TOKEN, default: <data-dir>/admin.key when readable)")
	pf.StringVar(&o.dataDir, "data-dir", "", "data directory (env HANGAR_DATA_DIR, default /var/lib/hangar as root, else ~/.local/share/hangar)")
	pf.BoolVar(&o.json, "json", false, "print JSON instead of tables")
	pf.StringVar(&o.remote, "remote", "", "named remote for client commands (hangar remote ls)")

	root.AddCommand(
		newServeCmd(o),
		newMeCmd(o),
		newUserCmd(o),
		newEventsCmd(o),
		newVMCmd(o),
		newKeysCmd(o),
		newAPIKeyCmd(o),
		newAuthCmd(o),
		newPromptCmd(o),
		newVersionCmd(o),
		newRemoteCmd(o),
		newImageCmd(o),
		newDoctorCmd(o),
		newGCCmd(o),
	)
	return root
}
