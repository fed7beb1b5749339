package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/liveview"
	"github.com/hangar-vm/hangar/internal/liveview/rfb"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/pkg/api"
)

// TestLiveViewOfBrowserVM: the live-view handler, bridged to x11vnc in a
// real browser VM over the agent link, gives an RFB client on its
// websocket the VM's 1280x800 screen, and key and pointer events sent
// through it drive the VM's Chromium (a typed data: URL turns the page
// red).
func TestLiveViewOfBrowserVM(t *testing.T) {
	requireVMs(t, "browser")
	h := startDaemon(t, nil)
	vm := h.createReady(h.admin, api.KindBrowser, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	admin, err := h.d.Store().GetUserByName(ctx, "admin")
	if err != nil {
		t.Fatal(err)
	}

	// The handler on its own mux, as the daemon will mount it: the session
	// id here stands for a login session whose browser VM is vm.
	signer := liveview.NewSigner()
	lv := liveview.Handler(liveview.Options{
		Signer: signer,
		Dial: func(ctx context.Context, session string, c liveview.Claims) (net.Conn, error) {
			return h.d.VMs().DialPort(ctx, admin, vm.ID, 5900)
		},
		Alive: func(context.Context, string) bool { return true },
		Log:   testutil.Logger(t),
	})
	defer lv.Close()
	mux := http.NewServeMux()
	mux.Handle(liveview.Prefix, lv)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	q := url.Values{"token": {signer.Issue("sess-e2e", admin.ID, false, 5*time.Minute)}}
	wsURL := "ws" + strings.TrimPrefix(srv.URL, "http") + liveview.Prefix + "sess-e2e/ws?" + q.Encode()

	conn, err := rfb.DialWebsocket(ctx, wsURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := rfb.Handshake(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Width != 1280 || c.Height != 800 {
		t.Fatalf("VM screen is %dx%d, want 1280x800", c.Width, c.Height)
	}
	// "ready" means Chromium's DevTools port is up; its window is drawn a
	// little later (until then the screen is black or grey but for the
	// cursor, a few dozen colours at most), and it is still loading its
	// first page after that: a load that commits while the address bar is
	// being typed into resets it. Wait until the screen shows the browser
	// and has not changed for three seconds.
	start := time.Now()
	var img, prev *image.RGBA
	steady := 0
	for time.Since(start) < 2*time.Minute && steady < 3 {
		img, err = c.Screenshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if colours(img) >= 64 && prev != nil && bytes.Equal(img.Pix, prev.Pix) {
			steady++
		} else {
			steady = 0
		}
		prev = img
		time.Sleep(time.Second)
	}
	t.Logf("screen showed %d colours, steady %v after the first screenshot; desktop %q", colours(img), time.Since(start).Round(time.Millisecond), c.Name)
	savePNG(t, img, "browser-vm.png")
	if n := colours(img); n < 64 || steady < 3 {
		t.Fatalf("the VM's screen shows %d colours, steady for %ds: Chromium's window never appeared and settled", n, steady)
	}

	// Drive Chromium through the live view: click into the page, Ctrl+L,
	// type a data: URL (no network needed) and Return. Under TCG on a
	// loaded host Chromium can take well over 30 s to start the renderer
	// for the new page, and it has been seen to lose the start of a burst
	// typed while it was busy, so the keys go slowly and the whole
	// (idempotent: Ctrl+L selects what is there) sequence is tried twice;
	// each attempt needs every event to arrive.
	c.KeyDelay = 50 * time.Millisecond
	// Chromium's address bar has lost the first characters typed into it
	// after start-up: warm it up with text that is then abandoned (Escape
	// twice restores the address).
	if err := c.Click(ctx, 640, 500); err != nil {
		t.Fatal(err)
	}
	if err := ctrl(ctx, c, 'l'); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := c.Type(ctx, "warm up"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	for i := 0; i < 2; i++ {
		if err := c.Key(ctx, rfb.KeyEscape); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second)
	var red float64
	for attempt := 1; attempt <= 2 && red <= 0.5; attempt++ {
		if err := c.Click(ctx, 640, 500); err != nil {
			t.Fatal(err)
		}
		if err := ctrl(ctx, c, 'l'); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if err := c.Type(ctx, "data:text/html,<body style=background:red>\n"); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			img, err = c.Screenshot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if red = redShare(img); red > 0.5 {
				t.Logf("attempt %d: typed URL rendered", attempt)
				break
			}
			time.Sleep(time.Second)
		}
		savePNG(t, img, fmt.Sprintf("browser-vm-typed-%d.png", attempt))
	}
	if red <= 0.5 {
		t.Fatalf("after typing a red data: URL twice only %.0f%% of the screen is red", red*100)
	}
	t.Logf("typed URL rendered: %.0f%% of the screen red", red*100)
}

// ctrl types Ctrl+key.
func ctrl(ctx context.Context, c *rfb.Client, key uint32) error {
	if err := c.KeyEvent(ctx, true, rfb.KeyControlL); err != nil {
		return err
	}
	if err := c.Key(ctx, key); err != nil {
		return err
	}
	return c.KeyEvent(ctx, false, rfb.KeyControlL)
}

func savePNG(t *testing.T, img image.Image, name string) {
	t.Helper()
	// HANGAR_E2E_ARTIFACTS keeps screenshots after the test (t.TempDir is
	// removed).
	dir := os.Getenv("HANGAR_E2E_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot saved to %s", p)
}

// colours counts distinct colours, up to 1000.
func colours(img *image.RGBA) int {
	seen := map[[3]uint8]bool{}
	for i := 0; i+3 < len(img.Pix) && len(seen) < 1000; i += 4 {
		seen[[3]uint8{img.Pix[i], img.Pix[i+1], img.Pix[i+2]}] = true
	}
	return len(seen)
}

// redShare is the fraction of pixels that are pure red.
func redShare(img *image.RGBA) float64 {
	n := 0
	for i := 0; i+3 < len(img.Pix); i += 4 {
		if img.Pix[i] == 255 && img.Pix[i+1] == 0 && img.Pix[i+2] == 0 {
			n++
		}
	}
	return float64(n) / float64(len(img.Pix)/4)
}

// TestLiveViewMountedByDaemon: the daemon serves the live view without an
// API key (the token is the credential): the vendored noVNC is served as
// JavaScript, and a page or websocket with a bad token is refused by the
// live view itself (403), not by the API's key check (401).
func TestLiveViewMountedByDaemon(t *testing.T) {
	h := startDaemon(t, nil)
	get := func(path string, hdr http.Header) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, h.url+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	if res := get("/live/novnc/core/rfb.js", nil); res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Fatalf("rfb.js through the daemon: %d %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if res := get("/live/ses_nope?token=x.y", nil); res.StatusCode != http.StatusForbidden {
		t.Fatalf("page with a bad token: %d, want 403", res.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := rfb.DialWebsocket(ctx, "ws"+strings.TrimPrefix(h.url, "http")+"/live/ses_nope/ws?token=x.y")
	var se *rfb.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Fatalf("websocket with a bad token: %v, want 403", err)
	}
}
