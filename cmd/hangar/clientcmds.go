package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/daemon"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// apiClient builds a client from --server/--token, the environment, or the
// local admin key.
func (o *rootOptions) apiClient() (*client.Client, error) {
	server, token := o.server, o.token
	// --remote comes right after the explicit flags; the current remote
	// after the environment.
	for _, allowCurrent := range []bool{false, true} {
		if allowCurrent && (server != "" || os.Getenv("HANGAR_SERVER") != "") {
			break
		}
		r, ok, err := o.resolveRemote(allowCurrent)
		if err != nil {
			return nil, err
		}
		if ok {
			if server == "" {
				server = r.URL
			}
			if token == "" && server == r.URL && (!allowCurrent || os.Getenv("HANGAR_TOKEN") == "") {
				token = r.Token
			}
			break
		}
	}
	if server == "" {
		server = os.Getenv("HANGAR_SERVER")
	}
	if server == "" {
		server = "http://127.0.0.1:4000"
	}
	if !strings.Contains(server, "://") {
		server = "http://" + server
	}
	if token == "" {
		token = os.Getenv("HANGAR_TOKEN")
	}
	if token == "" {
		path := filepath.Join(config.ResolveDataDir(o.dataDir), daemon.AdminKeyFile)
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			token = strings.TrimSpace(string(b))
		case errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("no API key: pass --token or set HANGAR_TOKEN (the local admin key %s does not exist; has `hangar serve` run with this data dir?)", path)
		default:
			return nil, fmt.Errorf("no API key: pass --token or set HANGAR_TOKEN (reading %s: %w)", path, err)
		}
	}
	return client.New(server, token), nil
}

func (o *rootOptions) printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer, header string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		// Cells may hold guest text (errors, service states): one line,
		// no control characters.
		cells := make([]string, len(r))
		for i, c := range r {
			c, _, _ = strings.Cut(c, "\n")
			cells[i] = sanitize(c, false)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return t.Format("2006-01-02")
	}
}

func newMeCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "me",
		Short: "Show who the API key belongs to",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			u, err := c.Me(cmd.Context())
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), u)
			}
			return table(cmd.OutOrStdout(), "ID\tNAME\tROLE\tCREATED", [][]string{{u.ID, u.Name, u.Role, ago(u.CreatedAt)}})
		},
	}
}

func newUserCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Manage users (admin)"}
	var role string
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a user and print their API key (shown only once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			u, err := c.CreateUser(cmd.Context(), api.CreateUserRequest{Name: args[0], Role: role})
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), u)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "created user %s (%s, %s)\n", u.Name, u.ID, u.Role)
			fmt.Fprintf(w, "API key (shown only now, store it safely):\n%s\n", u.APIKey)
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "user", "user or admin")
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List users",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			us, err := c.ListUsers(cmd.Context())
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), us)
			}
			rows := make([][]string, 0, len(us))
			for _, u := range us {
				rows = append(rows, []string{u.ID, u.Name, u.Role, ago(u.CreatedAt)})
			}
			return table(cmd.OutOrStdout(), "ID\tNAME\tROLE\tCREATED", rows)
		},
	}
	rm := &cobra.Command{
		Use:     "rm ID...",
		Aliases: []string{"delete"},
		Short:   "Delete users and everything they own",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			var errs []error
			for _, id := range args {
				if err := c.DeleteUser(cmd.Context(), id); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", id, err))
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", id)
			}
			return errors.Join(errs...)
		},
	}
	cmd.AddCommand(create, ls, rm, newUserNetworkCmd(o))
	return cmd
}

func newEventsCmd(o *rootOptions) *cobra.Command {
	var after int64
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Follow your event stream (admin: everyone's)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			return c.Events(cmd.Context(), after, func(e api.Event) error {
				if o.json {
					// One object per line (NDJSON), for jq and scripts.
					b, err := json.Marshal(e)
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
					return err
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "%d\t%s\t%s\t%s\t%s\n", e.ID, e.CreatedAt.Local().Format(time.TimeOnly), e.Type, e.Subject, e.Data)
				return err
			})
		},
	}
	cmd.Flags().Int64Var(&after, "after", 0, "start after this event id")
	return cmd
}
