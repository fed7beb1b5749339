package login

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/agenttest"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// TestCaptureIsCappedOnTheHost: a guest whose agent ignores the size cap
// and streams a huge "credential file" makes the capture fail as too
// large, after the host copied at most the cap (+1), instead of being
// buffered whole in the daemon. A file within the cap is captured.
func TestCaptureIsCappedOnTheHost(t *testing.T) {
	var served atomic.Int64
	a := agenttest.Start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != proto.PathFiles {
			http.NotFound(w, r)
			return
		}
		if strings.HasSuffix(r.URL.Query().Get(proto.QueryPath), "small.json") {
			io.WriteString(w, `{"token":"x"}`)
			return
		}
		chunk := make([]byte, 64<<10)
		for served.Load() < 64<<20 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			served.Add(int64(len(chunk)))
		}
	}))
	recipe := &Recipe{Name: "test", Credentials: []CredentialFile{{Path: "/home/hangar/.huge/auth.json", Required: true}}}
	d := NewDriver(a.Client, recipe, "browser", slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := d.capture(ctx)
	if !errors.Is(err, agentlink.ErrTooLarge) {
		t.Fatalf("capture of a 64 MiB credential file = %v, want ErrTooLarge", err)
	}
	// The host stopped reading: the guest could not push the whole file
	// through (yamux flow control stalls it once the host stops).
	if n := served.Load(); n >= 64<<20 {
		t.Fatalf("the guest sent all %d bytes; the host read them all", n)
	}

	recipe.Credentials = []CredentialFile{{Path: "/home/hangar/small.json", Required: true, JSON: true, RequiredFields: []string{"token"}}}
	c, err := d.capture(ctx)
	if err != nil || string(c.Files["/home/hangar/small.json"]) != `{"token":"x"}` {
		t.Fatalf("capture within the cap = %v, %v", c.Files, err)
	}
}
