package liveview

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/liveview/rfbtest"
	"github.com/hangar-vm/hangar/internal/testutil"
)

// TestViewerPageInChromium loads the real page in headless Chromium: the
// vendored noVNC modules load, the page opens the websocket, and noVNC
// runs the RFB handshake through the bridge (and, for a view-only token,
// the view-only filter) and asks the fake VNC server for the screen.
func TestViewerPageInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	testutil.Require(t, err == nil, "chromium is not installed (apt-get install chromium)")
	for _, viewOnly := range []bool{false, true} {
		t.Run(map[bool]string{false: "interactive", true: "view-only"}[viewOnly], func(t *testing.T) {
			e := newEnv(t, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			// Headless Chromium keeps the page open until it is killed; the
			// test watches the VNC side instead of racing a DOM dump.
			cctx, kill := context.WithCancel(ctx)
			cmd := exec.CommandContext(cctx, chromium, "--headless", "--no-sandbox", "--disable-gpu",
				"--no-first-run", "--user-data-dir="+t.TempDir(), "--remote-debugging-port=0",
				e.url("http", "sess-1", "", e.token("sess-1", viewOnly, time.Minute), nil))
			cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatalf("chromium: %v", err)
			}
			defer func() { kill(); _ = cmd.Wait() }()
			// noVNC asks for the screen only after ServerInit, that is once
			// it is connected.
			msgs, err := e.vnc.WaitFor(ctx, func(m []rfbtest.Message) bool { return countTypes(m)[3] > 0 })
			if err != nil {
				t.Fatalf("noVNC never asked for the screen; messages %v\nchromium:\n%s", countTypes(msgs), stderr.String())
			}
			n := countTypes(msgs)
			if n[2] != 1 || n[0] != 1 {
				t.Fatalf("noVNC sent %v, want one SetPixelFormat and one SetEncodings first", n)
			}
			// noVNC asks for QEMU extended keys and extended mouse
			// buttons; the view-only filter takes them out so the client
			// never switches to message forms it cannot follow.
			var encs []int32
			for _, m := range msgs {
				if m.Type == 2 {
					encs = m.Encodings()
				}
			}
			has := func(e int32) bool { return slices.Contains(encs, e) }
			if viewOnly == (has(encQEMUExtendedKeyEvent) || has(encExtendedMouseButtons)) || !has(0) {
				t.Fatalf("view-only %v: server got encodings %v", viewOnly, encs)
			}
			t.Logf("noVNC sent %v; %d encodings reached the server", n, len(encs))
		})
	}
}
