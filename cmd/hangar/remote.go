package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hangar-vm/hangar/internal/atomicfile"
	"github.com/hangar-vm/hangar/internal/daemon"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// Remotes are named hangar servers with their API keys, kept in the
// user's config directory (remotes.json, mode 0600 in a 0700 directory),
// so that client commands need no --server/--token on every call, as with
// incus remotes or fly's config.

// remote is one named server.
type remote struct {
	URL   string `json:"url"`
	Token string `json:"token"`
}

// remotesFile is the stored remotes and the current one.
type remotesFile struct {
	Current string            `json:"current,omitempty"`
	Remotes map[string]remote `json:"remotes"`
}

// remotesPath is $HANGAR_CONFIG_DIR/remotes.json, default
// <user config dir>/hangar/remotes.json (~/.config/hangar on Linux).
func remotesPath() (string, error) {
	dir := os.Getenv("HANGAR_CONFIG_DIR")
	if dir == "" {
		base, err := os.UserConfigDir()
		if err != nil {
			return "", fmt.Errorf("find the config directory (set HANGAR_CONFIG_DIR): %w", err)
		}
		dir = filepath.Join(base, "hangar")
	}
	return filepath.Join(dir, "remotes.json"), nil
}

func loadRemotes() (remotesFile, error) {
	rf := remotesFile{Remotes: map[string]remote{}}
	path, err := remotesPath()
	if err != nil {
		return rf, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return rf, nil
	}
	if err != nil {
		return rf, err
	}
	if err := json.Unmarshal(b, &rf); err != nil {
		return rf, fmt.Errorf("%s is not valid JSON: %w", path, err)
	}
	if rf.Remotes == nil {
		rf.Remotes = map[string]remote{}
	}
	return rf, nil
}

// saveRemotes writes the file atomically, 0600, in a 0700 directory: it
// holds API keys.
func saveRemotes(rf remotesFile) error {
	path, err := remotesPath()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(rf, "", "  ")
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

func validRemoteName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func newRemoteCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "remote",
		Short: "Named hangar servers and their API keys (stored 0600 in your config directory)",
		Long: `Remotes name hangar servers so client commands need no --server and
--token: "hangar remote add prod https://hangar.example.com" stores the URL
and a key (asked for, or --token) in ~/.config/hangar/remotes.json (mode
0600; HANGAR_CONFIG_DIR moves it), "hangar remote use prod" makes it the
default, and --remote NAME picks one for a single command.

A client command finds its server in this order: --server/--token,
--remote, HANGAR_SERVER/HANGAR_TOKEN, the current remote, then the local
daemon (http://127.0.0.1:4000 with <data-dir>/admin.key).`,
	}
	var token string
	var noVerify bool
	add := &cobra.Command{
		Use:   "add NAME URL",
		Short: "Add a remote (checks the key against the server)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, url := args[0], strings.TrimRight(args[1], "/")
			if !validRemoteName(name) {
				return fmt.Errorf("remote name %q: use letters, digits, '-', '_' and '.'", name)
			}
			if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
				return fmt.Errorf("remote URL %q must start with http:// or https://", url)
			}
			if token == "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "API key for %s: ", url)
				line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if err != nil && line == "" {
					return errors.New("no API key given (pass --token or type it)")
				}
				token = strings.TrimSpace(line)
			}
			if token == "" {
				return errors.New("no API key given")
			}
			rf, err := loadRemotes()
			if err != nil {
				return err
			}
			if _, ok := rf.Remotes[name]; ok {
				return fmt.Errorf("remote %s exists; remove it first (hangar remote rm %s)", name, name)
			}
			if !noVerify {
				ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
				me, err := client.New(url, token).Me(ctx)
				cancel()
				if err != nil {
					return fmt.Errorf("check the key with %s: %w (add --no-verify to store it anyway)", url, err)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%s answers: you are %s (%s)\n", url, me.Name, me.Role)
			}
			rf.Remotes[name] = remote{URL: url, Token: token}
			if rf.Current == "" {
				rf.Current = name
			}
			if err := saveRemotes(rf); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "remote %s added%s\n", name, map[bool]string{true: " (current)", false: ""}[rf.Current == name])
			return nil
		},
	}
	add.Flags().StringVar(&token, "token", "", "API key (asked for when absent)")
	add.Flags().BoolVar(&noVerify, "no-verify", false, "store without asking the server")
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List remotes (* marks the current one)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rf, err := loadRemotes()
			if err != nil {
				return err
			}
			names := make([]string, 0, len(rf.Remotes))
			for n := range rf.Remotes {
				names = append(names, n)
			}
			sort.Strings(names)
			if o.json {
				type row struct {
					Name    string `json:"name"`
					URL     string `json:"url"`
					Current bool   `json:"current"`
				}
				out := []row{}
				for _, n := range names {
					out = append(out, row{n, rf.Remotes[n].URL, n == rf.Current})
				}
				return o.printJSON(cmd.OutOrStdout(), out)
			}
			var rows [][]string
			for _, n := range names {
				mark := ""
				if n == rf.Current {
					mark = "*"
				}
				rows = append(rows, []string{mark + n, rf.Remotes[n].URL})
			}
			return table(cmd.OutOrStdout(), "NAME\tURL", rows)
		},
	}
	use := &cobra.Command{
		Use:   "use NAME",
		Short: "Make a remote the default of client commands",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rf, err := loadRemotes()
			if err != nil {
				return err
			}
			if _, ok := rf.Remotes[args[0]]; !ok {
				return fmt.Errorf("no remote %s (hangar remote ls)", args[0])
			}
			rf.Current = args[0]
			if err := saveRemotes(rf); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "using remote %s (%s)\n", args[0], rf.Remotes[args[0]].URL)
			return nil
		},
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Forget a remote and its key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rf, err := loadRemotes()
			if err != nil {
				return err
			}
			if _, ok := rf.Remotes[args[0]]; !ok {
				return fmt.Errorf("no remote %s", args[0])
			}
			delete(rf.Remotes, args[0])
			if rf.Current == args[0] {
				rf.Current = ""
			}
			return saveRemotes(rf)
		},
	}
	cmd.AddCommand(add, ls, use, rm)
	return cmd
}

// resolveRemote returns the server and key of --remote, or of the current
// remote when allowCurrent; ok is false when none applies.
func (o *rootOptions) resolveRemote(allowCurrent bool) (r remote, ok bool, err error) {
	if o.remote == "" && !allowCurrent {
		return r, false, nil
	}
	rf, err := loadRemotes()
	if err != nil {
		return r, false, err
	}
	name := o.remote
	if name == "" {
		name = rf.Current
	}
	if name == "" {
		return r, false, nil
	}
	r, ok = rf.Remotes[name]
	if !ok {
		return r, false, fmt.Errorf("no remote %s (hangar remote ls)", name)
	}
	return r, true, nil
}

func newVersionCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the client's version and, when it answers, the server's",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := struct {
				Client string `json:"client"`
				Server string `json:"server,omitempty"`
				URL    string `json:"url,omitempty"`
				Error  string `json:"error,omitempty"`
			}{Client: daemon.Version}
			if c, err := o.apiClient(); err == nil {
				out.URL = c.Base()
				ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
				var h api.Health
				h, err = c.Health(ctx)
				cancel()
				if err == nil {
					out.Server = h.Version
				} else {
					out.Error = err.Error()
				}
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "client  hangar %s\n", out.Client)
			switch {
			case out.Server != "":
				fmt.Fprintf(w, "server  hangar %s at %s\n", out.Server, out.URL)
			case out.URL != "":
				fmt.Fprintf(w, "server  not reachable at %s: %s\n", out.URL, out.Error)
			}
			return nil
		},
	}
}
