package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

func newAuthCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "auth", Short: "Connect CLI subscriptions (codex, claude, gemini, dev) and manage stored credentials"}
	cmd.AddCommand(authLoginCmd(o), authListCmd(o), authCredsCmd(o), authLogoutCmd(o), authShareCmd(o))
	return cmd
}

func authLoginCmd(o *rootOptions) *cobra.Command {
	var mode string
	cmd := &cobra.Command{
		Use:   "login PROVIDER",
		Short: "Log in to a provider through a browser VM and store the credentials sealed",
		Long: `Start a login session for PROVIDER (codex, claude, gemini or dev).

browser mode (default) boots a throwaway browser VM and prints the URL of
its live view: open it, complete the provider's login in that browser, and
the credentials the CLI writes are captured and sealed. paste mode prints the
provider's URL for your own browser and asks for the code it shows. device
mode prints a URL and a one-time code. The command follows the session and
exits 0 once the credentials are stored; Ctrl-C cancels the login.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			return followLogin(cmd.Context(), c, args[0], mode, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "browser", "browser, paste or device")
	return cmd
}

// followLogin runs one login session to its end, keeping it alive with
// heartbeats and telling the user what to do at each step.
func followLogin(ctx context.Context, c *client.Client, provider, mode string, stdin io.Reader, stdout, stderr io.Writer) error {
	s, err := c.CreateAuthSession(ctx, api.CreateAuthSessionRequest{Provider: provider, Mode: mode})
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "login session %s started (%s, %s mode); starting its VM...\n", s.ID, provider, mode)
	lastState, shownURL, asked := s.State, false, false
	lastBeat := time.Now()
	codes := make(chan string, 1)
	for {
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, _ = c.CancelAuthSession(cctx, s.ID)
			cancel()
			return errors.New("login cancelled")
		case code := <-codes:
			if err := c.AuthInput(ctx, s.ID, code); err != nil {
				fmt.Fprintf(stderr, "could not deliver the code: %v\n", err)
			}
		case <-time.After(time.Second):
		}
		if time.Since(lastBeat) > 30*time.Second {
			_ = c.HeartbeatAuthSession(ctx, s.ID)
			lastBeat = time.Now()
		}
		if s, err = c.GetAuthSession(ctx, s.ID); err != nil {
			return err
		}
		if s.State != lastState {
			fmt.Fprintf(stderr, "state: %s\n", s.State)
			lastState = s.State
		}
		if !shownURL && s.State == api.AuthAwaitingUser {
			shownURL = true
			switch {
			case s.LiveViewURL != "":
				fmt.Fprintf(stdout, "Open the live view and complete the login there:\n%s%s\n", c.Base(), s.LiveViewURL)
			case s.DeviceCode != "":
				fmt.Fprintf(stdout, "Open %s and enter the code %s\n", s.OAuthURL, s.DeviceCode)
			default:
				fmt.Fprintf(stdout, "Open this URL in your browser and log in:\n%s\n", s.OAuthURL)
			}
			if mode == api.ModePaste && !asked {
				asked = true
				go func() {
					fmt.Fprint(stderr, "Paste the code the provider shows: ")
					line, _ := bufio.NewReader(stdin).ReadString('\n')
					fmt.Fprintln(stderr)
					if line = strings.TrimSpace(line); line != "" {
						codes <- line
					}
				}()
			}
		}
		switch s.State {
		case api.AuthCompleted:
			fmt.Fprintf(stdout, "Connected %s; the credentials are stored sealed.\n", provider)
			return nil
		case api.AuthFailed, api.AuthTimeout, api.AuthCancelled:
			return fmt.Errorf("login %s: %s", s.State, sanitize(s.Error, true))
		}
	}
}

func authListCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use: "ls", Short: "List your login sessions", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			ss, err := c.ListAuthSessions(cmd.Context())
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), ss)
			}
			rows := [][]string{}
			for _, s := range ss {
				rows = append(rows, []string{s.ID, s.Provider, s.Mode, s.State, ago(s.CreatedAt), s.Error})
			}
			return table(cmd.OutOrStdout(), "ID\tPROVIDER\tMODE\tSTATE\tCREATED\tERROR", rows)
		},
	}
}

func authCredsCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use: "creds", Short: "List connected providers (metadata only, never tokens)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			cs, err := c.Credentials(cmd.Context())
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), cs)
			}
			rows := [][]string{}
			for _, cr := range cs {
				exp := "-"
				if cr.ExpiresAt != nil {
					exp = cr.ExpiresAt.Local().Format(time.DateTime)
				}
				rows = append(rows, []string{cr.Provider, cr.Account, cr.Plan, exp, ago(cr.CapturedAt)})
			}
			return table(cmd.OutOrStdout(), "PROVIDER\tACCOUNT\tPLAN\tEXPIRES\tCAPTURED", rows)
		},
	}
}

func authLogoutCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use: "logout PROVIDER", Short: "Delete the stored credentials of a provider", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			if err := c.DeleteCredential(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted the %s credentials\n", args[0])
			return nil
		},
	}
}
