package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/pkg/api"
)

func vmShellCmd(o *rootOptions) *cobra.Command {
	var user string
	cmd := &cobra.Command{
		Use:   "shell ID [-- COMMAND...]",
		Short: "An interactive terminal in a VM (a login shell, or COMMAND on a terminal)",
		Long: `Open a terminal in a ready VM over the API (a websocket carrying a
pseudo-terminal through the agent; no SSH): a login shell as root, or
--user's, or COMMAND. The local terminal is put in raw mode and its size
follows yours. The command exits with the remote command's exit code.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.apiClient()
			if err != nil {
				return err
			}
			req := api.ShellRequest{Argv: args[1:], User: user, Term: os.Getenv("TERM")}
			fd := int(os.Stdin.Fd())
			resize := make(chan [2]uint16, 1)
			if ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ); err == nil {
				req.Rows, req.Cols = ws.Row, ws.Col
				restore, err := makeRaw(fd)
				if err == nil {
					defer restore()
				}
				winch := make(chan os.Signal, 1)
				signal.Notify(winch, syscall.SIGWINCH)
				defer signal.Stop(winch)
				go func() {
					for range winch {
						if ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ); err == nil {
							select {
							case resize <- [2]uint16{ws.Row, ws.Col}:
							default:
							}
						}
					}
				}()
			}
			code, err := c.Shell(cmd.Context(), args[0], req, os.Stdin, cmd.OutOrStdout(), resize)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "run as this user (default root)")
	return cmd
}

// makeRaw puts the terminal fd in raw mode (as cfmakeraw does) and returns
// what restores it: keys go to the remote terminal unprocessed, Ctrl-C
// included.
func makeRaw(fd int) (func(), error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	t := *old
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return nil, err
	}
	return func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}
