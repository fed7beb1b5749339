package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// Terminal is a running interactive command in a VM.
type Terminal interface {
	Write(p []byte) (int, error)
	Resize(rows, cols uint16) error
	// Wait copies output to out until the command exits.
	Wait(out io.Writer) (exitCode int, err error)
	Close() error
}

// ShellService starts interactive terminals in VMs.
type ShellService interface {
	Shell(ctx context.Context, caller store.User, id string, req api.ShellRequest) (Terminal, error)
}

// MountShell adds GET /api/v1/vms/{id}/shell: a websocket carrying a
// terminal (see api.ShellControl for the protocol).
func (s *Server) MountShell(sh ShellService) {
	s.handle(route{"GET /api/v1/vms/{id}/shell", authed, func(w http.ResponseWriter, r *http.Request) error {
		q := r.URL.Query()
		req := api.ShellRequest{Argv: q["arg"], User: q.Get("user"), Term: q.Get("term")}
		rows, err1 := strconv.ParseUint(q.Get("rows"), 10, 16)
		cols, err2 := strconv.ParseUint(q.Get("cols"), 10, 16)
		if err1 == nil && err2 == nil {
			req.Rows, req.Cols = uint16(rows), uint16(cols)
		}
		ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
		defer cancel()
		// Start before upgrading: a VM that is not ready is an HTTP error.
		term, err := sh.Shell(ctx, userFrom(r.Context()), r.PathValue("id"), req)
		if err != nil {
			return err
		}
		defer term.Close()
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Time{})
		_ = rc.SetWriteDeadline(time.Time{})
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return nil // Accept wrote the HTTP error
		}
		c.SetReadLimit(1 << 20)
		log := logFrom(r.Context(), s.log)
		go func() {
			// Client → terminal: binary frames are keystrokes, text
			// frames control messages.
			defer cancel()
			for {
				typ, b, err := c.Read(ctx)
				if err != nil {
					return
				}
				if typ == websocket.MessageBinary {
					if _, err := term.Write(b); err != nil {
						return
					}
					continue
				}
				var m api.ShellControl
				if json.Unmarshal(b, &m) == nil && m.Type == "resize" && m.Rows > 0 && m.Cols > 0 {
					_ = term.Resize(m.Rows, m.Cols)
				}
			}
		}()
		code, err := term.Wait(wsWriter{ctx: ctx, c: c})
		if err != nil && !errors.Is(err, context.Canceled) {
			log.Info("vm shell ended", "vm_id", r.PathValue("id"), "err", err)
			c.Close(websocket.StatusInternalError, "the terminal's stream broke")
			return nil
		}
		b, _ := json.Marshal(api.ShellControl{Type: "exit", ExitCode: code})
		_ = c.Write(ctx, websocket.MessageText, b)
		c.Close(websocket.StatusNormalClosure, "")
		return nil
	}})
}

// wsWriter sends terminal output as binary websocket messages.
type wsWriter struct {
	ctx context.Context
	c   *websocket.Conn
}

func (w wsWriter) Write(p []byte) (int, error) {
	if err := w.c.Write(w.ctx, websocket.MessageBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
