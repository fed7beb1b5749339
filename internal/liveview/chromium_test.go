package liveview

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/liveview/rfbtest"
	"github.com/hangar-vm/hangar/internal/testutil"
)

// TestViewerPageInChromium loads the real page in headless Chromium: the
// vendored noVNC modules load, the page opens the websocket, noVNC runs
// the RFB handshake through the bridge and asks the (fake) VNC server for
// the screen, and the page reports itself connected.
func TestViewerPageInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	testutil.Require(t, err == nil, "chromium is not installed (apt-get install chromium)")
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu",
		"--no-first-run", "--user-data-dir="+t.TempDir(), "--virtual-time-budget=10000",
		"--dump-dom", e.url("http", "sess-1", "", e.token("sess-1", false, time.Minute), nil))
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	dom := string(out)
	msgs, err := e.vnc.WaitFor(ctx, func(m []rfbtest.Message) bool { return countTypes(m)[3] > 0 })
	if err != nil {
		t.Fatalf("noVNC never asked for the screen; messages %v\nDOM:\n%s", countTypes(msgs), dom)
	}
	n := countTypes(msgs)
	if n[2] == 0 {
		t.Fatalf("noVNC sent no SetEncodings: %v", n)
	}
	if !strings.Contains(dom, `data-state="connected"`) || !strings.Contains(dom, "<canvas") {
		t.Fatalf("page not connected:\n%s", dom)
	}
	t.Logf("noVNC sent %v", n)
}
