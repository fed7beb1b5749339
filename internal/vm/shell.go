package vm

import (
	"context"
	"io"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// Terminal is a running interactive command: Write types, Wait copies its
// output until it exits.
type Terminal struct {
	s *agentlink.ExecSession
}

// Write sends keystrokes.
func (t *Terminal) Write(p []byte) (int, error) { return t.s.Write(p) }

// Resize changes the terminal size.
func (t *Terminal) Resize(rows, cols uint16) error { return t.s.Resize(rows, cols) }

// Close ends the command (the agent kills its process group).
func (t *Terminal) Close() error { return t.s.Close() }

// Wait copies the terminal's output to out until the command exits and
// returns its exit code.
func (t *Terminal) Wait(out io.Writer) (int, error) {
	st, err := t.s.Wait(out, out)
	if err != nil {
		return 0, err
	}
	return st.ExitCode, nil
}

// Shell starts an interactive command on a PTY in a ready VM; cancelling
// ctx ends it.
func (m *Manager) Shell(ctx context.Context, caller store.User, id string, req api.ShellRequest) (*Terminal, error) {
	c, err := m.readyClient(ctx, caller, id)
	if err != nil {
		return nil, err
	}
	if len(req.Argv) == 0 {
		req.Argv = []string{"/bin/sh", "-c", "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi"}
	}
	if req.Term == "" {
		req.Term = "xterm-256color"
	}
	if req.Rows == 0 || req.Cols == 0 {
		req.Rows, req.Cols = 24, 80
	}
	home := "/root"
	if req.User != "" && req.User != "root" {
		home = "/home/" + req.User
	}
	s, err := c.StartExec(ctx, proto.ExecRequest{Argv: req.Argv, User: req.User, Dir: home,
		Env: map[string]string{"TERM": req.Term, "HOME": home, "LANG": "C.UTF-8"}, PTY: &proto.PTYSize{Rows: req.Rows, Cols: req.Cols}})
	if err != nil {
		if e := agentErr(err); e != err {
			return nil, e
		}
		return nil, errs.Wrap(errs.Unavailable, err, "could not start a terminal in vm %s", id)
	}
	m.log.Info("vm shell started", "vm_id", id, "user_id", caller.ID, "argv0", req.Argv[0])
	return &Terminal{s: s}, nil
}
