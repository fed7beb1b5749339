package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hangar-vm/hangar/pkg/api"
)

func newVMCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "Create, inspect and use VMs"}
	cmd.AddCommand(vmCreateCmd(o), vmListCmd(o), vmShowCmd(o), vmExecCmd(o), vmShellCmd(o), vmLogsCmd(o), vmCpCmd(o),
		vmStopCmd(o), vmStartCmd(o), vmRmCmd(o))
	return cmd
}

func ms(v int64) string {
	return (time.Duration(v) * time.Millisecond).Round(10 * time.Millisecond).String()
}

func (o *rootOptions) printVM(w io.Writer, vm api.VM) error {
	if o.json {
		return o.printJSON(w, vm)
	}
	fmt.Fprintf(w, "id:          %s\nkind:        %s\nstate:       %s\n", vm.ID, vm.Kind, vm.State)
	if vm.LastError != "" {
		fmt.Fprintf(w, "last error:  %s\n", strings.ReplaceAll(sanitize(vm.LastError, true), "\n", "\n             "))
	}
	if vm.Unresponsive && vm.UnresponsiveSince != nil {
		fmt.Fprintf(w, "unresponsive: its agent has not answered for %s\n", time.Since(*vm.UnresponsiveSince).Round(time.Second))
	}
	fmt.Fprintf(w, "owner:       %s\nshape:       %d vCPU, %d MiB\nhypervisor:  %s (%s)\n", vm.OwnerID, vm.VCPUs, vm.MemoryMiB, vm.Hypervisor, vm.Acceleration)
	if vm.ImageID != "" {
		fmt.Fprintf(w, "image:       %.12s\nkernel:      %s\n", vm.ImageID, vm.KernelVersion)
	}
	if p := vm.BootPhases; p != nil {
		fmt.Fprintf(w, "boot:        %s total (spawn %s, kernel %s, agent %s, services %s)\n", ms(p.TotalMS), ms(p.SpawnMS), ms(p.KernelMS), ms(p.AgentUpMS), ms(p.ServicesReadyMS))
	}
	fmt.Fprintf(w, "created:     %s\n", ago(vm.CreatedAt))
	if len(vm.Services) > 0 {
		fmt.Fprintln(w, "services:")
		rows := [][]string{}
		for _, s := range vm.Services {
			rows = append(rows, []string{"  " + s.Name, s.State, strconv.Itoa(s.Restarts), s.Error})
		}
		return table(w, "  NAME\tSTATE\tRESTARTS\tLAST ERROR", rows)
	}
	return nil
}

func vmCreateCmd(o *rootOptions) *cobra.Command {
	var req api.CreateVMRequest
	var wait bool
	cmd := &cobra.Command{
		Use:   "create KIND",
		Short: "Create a VM of kind base, cli or browser",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			req.Kind = args[0]
			vm, err := c.CreateVM(cmd.Context(), req)
			if err != nil {
				return err
			}
			if wait {
				fmt.Fprintf(cmd.ErrOrStderr(), "created %s; waiting until it is ready...\n", vm.ID)
				if vm, err = c.WaitVM(cmd.Context(), vm.ID, api.VMReady); err != nil {
					return err
				}
			}
			return o.printVM(cmd.OutOrStdout(), vm)
		},
	}
	cmd.Flags().IntVar(&req.VCPUs, "vcpus", 0, "virtual CPUs (default 1; browser 2)")
	cmd.Flags().IntVar(&req.MemoryMiB, "memory", 0, "memory in MiB (default 512; browser 2048)")
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until the VM is ready")
	return cmd
}

func vmListCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List VMs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			vms, err := c.ListVMs(cmd.Context())
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), vms)
			}
			rows := [][]string{}
			for _, v := range vms {
				boot := "-"
				if v.BootPhases != nil {
					boot = ms(v.BootPhases.TotalMS)
				}
				errLine, _, _ := strings.Cut(v.LastError, "\n")
				rows = append(rows, []string{v.ID, v.Kind, v.State, boot, ago(v.CreatedAt), errLine})
			}
			return table(cmd.OutOrStdout(), "ID\tKIND\tSTATE\tBOOT\tCREATED\tLAST ERROR", rows)
		},
	}
}

func vmShowCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use: "show ID", Short: "Show a VM, its boot phases and services", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			vm, err := c.GetVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return o.printVM(cmd.OutOrStdout(), vm)
		},
	}
}

// exitError carries a remote command's exit code out of RunE.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("command exited with code %d", e.code) }

func vmExecCmd(o *rootOptions) *cobra.Command {
	var req api.ExecRequest
	var env []string
	var stdin bool
	cmd := &cobra.Command{
		Use:   "exec ID -- COMMAND [ARG...]",
		Short: "Run a command in a VM, streaming its output; exits with its exit code",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			req.Argv = args[1:]
			for _, kv := range env {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--env %q: want KEY=VALUE", kv)
				}
				if req.Env == nil {
					req.Env = map[string]string{}
				}
				req.Env[k] = v
			}
			if stdin {
				b, err := io.ReadAll(os.Stdin)
				if err != nil {
					return err
				}
				req.Stdin = string(b)
			}
			code, err := c.ExecStream(cmd.Context(), args[0], req, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringVarP(&req.Cwd, "workdir", "w", "", "working directory")
	f.StringVarP(&req.User, "user", "u", "", "run as this user (default root)")
	f.IntVar(&req.TimeoutS, "timeout", 0, "kill the command after this many seconds")
	f.BoolVarP(&stdin, "stdin", "i", false, "send this command's standard input")
	return cmd
}

func vmLogsCmd(o *rootOptions) *cobra.Command {
	var service string
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Show a VM's console log (every service's lines, prefixed) or one service's log",
		Long: `Show a VM's serial console, which holds the kernel's messages and every
line each service wrote, prefixed with the service's name. The console log
is kept after the VM failed or was destroyed. --service NAME shows one
service's log (from the agent while the VM runs, else from the console).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			return c.Logs(cmd.Context(), args[0], service, follow, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&service, "service", "s", "", "one service (default: the whole console)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines")
	return cmd
}

func vmCpCmd(o *rootOptions) *cobra.Command {
	var mode string
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy a file into or out of a VM (write the VM side as ID:/path; - is stdin/stdout)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			srcVM, srcPath, srcRemote := splitRemote(args[0])
			dstVM, dstPath, dstRemote := splitRemote(args[1])
			switch {
			case srcRemote == dstRemote:
				return fmt.Errorf("exactly one of SRC and DST must be ID:/path")
			case dstRemote:
				var r io.Reader = os.Stdin
				perm := uint32(0o644)
				if srcPath != "-" {
					f, err := os.Open(srcPath)
					if err != nil {
						return err
					}
					defer f.Close()
					if fi, err := f.Stat(); err == nil {
						perm = uint32(fi.Mode().Perm())
					}
					r = f
				}
				if mode != "" {
					m, err := strconv.ParseUint(mode, 8, 32)
					if err != nil {
						return fmt.Errorf("--mode %q must be octal", mode)
					}
					perm = uint32(m)
				}
				return c.PutFile(ctx, dstVM, dstPath, perm, r)
			default:
				if dstPath == "-" {
					_, err := c.GetFile(ctx, srcVM, srcPath, cmd.OutOrStdout())
					return err
				}
				return getToFile(ctx, func(w io.Writer) (uint32, error) { return c.GetFile(ctx, srcVM, srcPath, w) }, dstPath)
			}
		},
	}
}

func getToFile(_ context.Context, get func(io.Writer) (uint32, error), path string) error {
	tmp := path + ".hangar-tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	mode, err := get(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if mode != 0 {
		_ = os.Chmod(tmp, os.FileMode(mode).Perm())
	}
	return os.Rename(tmp, path)
}

// splitRemote reads "vm_id:/path".
func splitRemote(s string) (vm, path string, remote bool) {
	if i := strings.Index(s, ":"); i > 0 && strings.HasPrefix(s, "vm_") {
		return s[:i], s[i+1:], true
	}
	return "", s, false
}

func vmStopCmd(o *rootOptions) *cobra.Command {
	return vmAction(o, "stop", "Shut a VM down (gracefully, then hard)", func(ctx context.Context, c apiClient, id string) (api.VM, error) { return c.StopVM(ctx, id) })
}

func vmStartCmd(o *rootOptions) *cobra.Command {
	return vmAction(o, "start", "Boot a stopped or failed VM again", func(ctx context.Context, c apiClient, id string) (api.VM, error) { return c.StartVM(ctx, id) })
}

func vmRmCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use: "rm ID...", Aliases: []string{"delete"}, Short: "Destroy VMs (their logs stay readable)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			for _, id := range args {
				if err := c.DeleteVM(cmd.Context(), id); err != nil {
					return fmt.Errorf("%s: %w", id, err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), "destroyed", id)
			}
			return nil
		},
	}
}
