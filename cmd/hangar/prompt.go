package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

func newPromptCmd(o *rootOptions) *cobra.Command {
	var req api.CreatePromptRequest
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "prompt PROVIDER [TEXT...]",
		Short: "Run a prompt with a connected CLI (codex, claude, gemini, dev) in your CLI VM and stream the answer",
		Long: `Run TEXT (or standard input, when no TEXT is given) as one prompt of
PROVIDER's CLI, non-interactively, in your CLI workspace VM (--vm picks one;
without it your first CLI VM is used, and created on first use). The answer
streams to standard output as it arrives; tool calls and usage go to
standard error. The command exits 0 when the prompt completes, 1 when it
fails (the reason is printed), and the CLI's own exit code when it has one.
Ctrl-C cancels the prompt (its CLI's whole process group in the VM).

  hangar prompt dev "hello"
  hangar prompt codex --vm vm_… "explain main.go"
  hangar prompt ls | show ID | cancel ID`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			req.Provider = args[0]
			req.Prompt = strings.Join(args[1:], " ")
			if len(args) == 1 {
				b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
				if err != nil {
					return fmt.Errorf("read the prompt from standard input: %w", err)
				}
				req.Prompt = strings.TrimRight(string(b), "\n")
			}
			req.TimeoutS = int(timeout / time.Second)
			return runPrompt(cmd.Context(), c, req, o.json, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.VMID, "vm", "", "CLI VM to run in (default: your first CLI workspace VM)")
	f.StringVar(&req.Model, "model", "", "model to ask for (passed to the CLI)")
	f.StringVar(&req.Cwd, "cwd", "", "working directory in the VM (default /home/hangar)")
	f.DurationVar(&timeout, "timeout", 0, "bound on the CLI's run (default 10m, at most 1h)")
	cmd.AddCommand(promptListCmd(o), promptShowCmd(o), promptCancelCmd(o))
	return cmd
}

// runPrompt creates a prompt and follows its events to the end.
func runPrompt(ctx context.Context, c *client.Client, req api.CreatePromptRequest, asJSON bool, stdout, stderr io.Writer) error {
	p, err := c.CreatePrompt(ctx, req)
	if err != nil {
		return err
	}
	if !asJSON {
		fmt.Fprintf(stderr, "prompt %s queued in VM %s\n", p.ID, p.VMID)
	}
	var end *api.PromptEnd
	var final string
	ended := make(chan error, 1)
	go func() {
		ended <- c.FollowPrompt(ctx, p.ID, func(e api.PromptEvent) error {
			if asJSON {
				b, _ := json.Marshal(e)
				fmt.Fprintf(stdout, "%s\n", b)
			}
			switch e.Type {
			case api.PromptEventStarted:
				if !asJSON {
					fmt.Fprintf(stderr, "running %s in VM %s\n", req.Provider, p.VMID)
				}
			case api.PromptEventOutput:
				var out api.PromptOutput
				if json.Unmarshal(e.Data, &out) == nil && !asJSON {
					fmt.Fprint(stdout, out.Text)
				}
			case api.PromptEventTool:
				var t api.PromptTool
				if json.Unmarshal(e.Data, &t) == nil && !asJSON {
					fmt.Fprintf(stderr, "[tool %s %s] %s\n", t.Phase, sanitize(t.Name, false), sanitize(firstLine(t.Input+t.Output), false))
				}
			case api.PromptEventUsage:
				var u api.PromptUsage
				if json.Unmarshal(e.Data, &u) == nil && !asJSON {
					fmt.Fprintf(stderr, "[usage] input %d, output %d tokens\n", u.InputTokens, u.OutputTokens)
				}
			case api.PromptEventCompleted, api.PromptEventFailed:
				var pe api.PromptEnd
				_ = json.Unmarshal(e.Data, &pe)
				end, final = &pe, e.Type
			}
			return nil
		})
	}()
	select {
	case err = <-ended:
	case <-ctx.Done():
		cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, _ = c.CancelPrompt(cctx, p.ID)
		cancel()
		fmt.Fprintln(stderr, "\nprompt cancelled")
		return exitError{130}
	}
	if err != nil {
		return err
	}
	if end == nil {
		return errors.New("the event stream ended without the prompt's end")
	}
	if !asJSON {
		fmt.Fprintln(stdout)
	}
	if final == api.PromptEventCompleted {
		return nil
	}
	if !asJSON {
		fmt.Fprintf(stderr, "prompt failed (%s): %s\n", end.Reason, sanitize(end.Message, true))
	}
	if end.ExitCode != nil && *end.ExitCode > 0 && *end.ExitCode < 126 {
		return exitError{*end.ExitCode}
	}
	return exitError{1}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

func promptListCmd(o *rootOptions) *cobra.Command {
	var before string
	var limit int
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "Your prompts, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			l, err := c.ListPrompts(cmd.Context(), before, limit)
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), l)
			}
			var rows [][]string
			for _, p := range l.Prompts {
				rows = append(rows, []string{p.ID, p.Provider, p.State, p.VMID, ago(p.CreatedAt), sanitize(firstLine(p.Prompt), false)})
			}
			if err := table(cmd.OutOrStdout(), "ID\tPROVIDER\tSTATE\tVM\tCREATED\tPROMPT", rows); err != nil {
				return err
			}
			if l.Next != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "more: hangar prompt ls --before %s\n", l.Next)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&before, "before", "", "page cursor (printed after a full page)")
	cmd.Flags().IntVar(&limit, "limit", 20, "prompts per page (1 to 200)")
	return cmd
}

func promptShowCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "One prompt: state, VM, exit code, error, usage",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			p, err := c.GetPrompt(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), p)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "id:        %s\nprovider:  %s\nstate:     %s\nvm:        %s\ncreated:   %s\n", p.ID, p.Provider, p.State, p.VMID, p.CreatedAt.Format(time.RFC3339))
			if p.ExitCode != nil {
				fmt.Fprintf(w, "exit code: %d\n", *p.ExitCode)
			}
			if p.Error != "" {
				fmt.Fprintf(w, "error:     %s (%s)\n", sanitize(p.Error, true), p.Reason)
			}
			if p.Usage != nil {
				fmt.Fprintf(w, "usage:     input %d, output %d tokens\n", p.Usage.InputTokens, p.Usage.OutputTokens)
			}
			fmt.Fprintf(w, "prompt:    %s\n", sanitize(firstLine(p.Prompt), true))
			return nil
		},
	}
}

func promptCancelCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a queued or running prompt",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			p, err := c.CancelPrompt(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), p)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", p.ID, p.State)
			return nil
		},
	}
}
