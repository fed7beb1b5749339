package e2e

import (
	"context"
	"encoding/base64"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// TestDevLoginThroughWebRTC completes the dev login in a real browser VM
// through the WebRTC live view: host Chromium opens the session's viewer
// page, which negotiates WebRTC through the daemon's embedded TURN server
// (ICE restricted to relays), shows video the daemon encodes from the
// VM's screen — checked by drawing it to a canvas: the sign-in page, then
// a different consent page — and every key typed travels page → data
// channel → daemon → VNC → the VM's Chromium.
func TestDevLoginThroughWebRTC(t *testing.T) {
	requireVMs(t, "browser")
	_, err := exec.LookPath("ffmpeg")
	testutil.Require(t, err == nil, "ffmpeg is not installed (apt-get install ffmpeg)")
	h := startDaemon(t, func(c *config.Config) {
		c.WebRTC.TURN.Mode = "on"
		c.WebRTC.TURN.Listen = "127.0.0.1:0"
	})
	ctx := context.Background()
	alice, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	ac := client.New(h.url, alice.APIKey)
	var sess api.AuthSession
	if err := ac.Do(ctx, http.MethodPost, "/api/v1/auth/sessions", api.CreateAuthSessionRequest{Provider: "dev", Mode: "browser"}, &sess); err != nil {
		t.Fatal(err)
	}
	sess = waitSession(t, ac, sess.ID, 4*time.Minute, "awaiting_user", func(s api.AuthSession) bool { return s.State == api.AuthAwaitingUser && s.LiveViewURL != "" })

	b := newBrowserTab(t)
	// A long WebRTC timeout: the emulated VM and a loaded host make the
	// first frame slow, and this test is about WebRTC, not the fallback.
	b.do(30*time.Second, "open the live view", chromedp.Navigate(h.url+sess.LiveViewURL+"&ice=relay&webrtc_timeout=60000"))
	b.waitJS(90*time.Second, "the WebRTC view to connect", `window.hangarLiveView?.transport === "webrtc" && hangarLiveView.state === "connected"`)
	if _, err := evalIn[bool](b, `(hangarLiveView.rtc.pc.getStats().then((st) => { st.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) window.hangarPair = st.get(st.get(s.selectedCandidatePairId).localCandidateId).candidateType; }); }), true)`); err != nil {
		t.Fatal(err)
	}
	b.waitJS(10*time.Second, "the selected candidate pair to be a relay", `window.hangarPair === "relay"`)

	screen := func() []int {
		px, err := evalIn[[]int](b, `(() => {
			const v = hangarLiveView.rtc?.video;
			if (!v || !v.videoWidth) return [];
			const c = document.createElement("canvas");
			c.width = 128; c.height = 80;
			const g = c.getContext("2d");
			g.drawImage(v, 0, 0, c.width, c.height);
			const d = g.getImageData(0, 16, 128, 64).data;
			const out = [];
			// Quantized, so encoder noise does not count as a change.
			for (let i = 0; i + 3 < d.length; i += 4 * 7) out.push(((d[i] >> 4) << 8) | ((d[i + 1] >> 4) << 4) | (d[i + 2] >> 4));
			return out;
		})()`)
		if err != nil {
			return nil
		}
		return px
	}
	// painted waits until the video shows a page (unlike the one before)
	// that holds still for a second. It looks at the video only: under a
	// loaded host the VM's DevTools (what the VNC tests ask for the title)
	// often does not answer, and what the user sees is the point here.
	painted := func(what string, unlike []int, within time.Duration) []int {
		t.Helper()
		var shown, first []int
		if err := pollEvery(within, time.Second, func() bool {
			first = screen()
			if len(first) == 0 || blankScreen(first) || (unlike != nil && screenDiff(first, unlike) < 0.02) {
				return false
			}
			time.Sleep(1500 * time.Millisecond)
			shown = screen()
			return screenDiff(first, shown) < 0.005
		}); err != nil {
			videoShot(t, b, "webrtc-not-painted")
			t.Fatalf("the WebRTC video does not show %s (the VM's browser shows %q; video sample of %d pixels, blank %v)", what, pageTitle(ctx, h, sess.VMID), len(first), len(first) > 0 && blankScreen(first))
		}
		return shown
	}
	// Keyboard focus follows the pointer in the VM's bare X server: move
	// it over the screen (the page sends it on the data channel) without
	// clicking; the video has the page's focus, so keys go to the channel.
	b.do(10*time.Second, "point at the video",
		chromedp.MouseEvent("mouseMoved", 700, 500),
		chromedp.MouseEvent("mouseMoved", 705, 505),
	)
	signIn := painted("the sign-in page", nil, 150*time.Second)
	// One key at a time with a pause, as the VNC login test types: the
	// emulated Chromium drops keys of a fast burst while busy.
	for _, k := range []string{"d", "e", "m", "o", kb.Tab, "h", "a", "n", "g", "a", "r", "-", "d", "e", "m", "o", kb.Enter} {
		b.do(10*time.Second, "type into the WebRTC view", chromedp.KeyEvent(k))
		time.Sleep(80 * time.Millisecond)
	}
	painted("the consent page", signIn, 90*time.Second)
	for try := 1; ; try++ {
		b.do(10*time.Second, "approve", chromedp.KeyEvent(kb.Enter))
		moved := pollEvery(20*time.Second, time.Second, func() bool {
			s, _ := getSession(ac, sess.ID)
			return s.State != api.AuthAwaitingUser
		}) == nil
		if moved {
			break
		}
		if try == 3 {
			videoShot(t, b, "webrtc-consent")
			t.Fatalf("the session is still awaiting the user after %d presses of Enter on the consent page (VM browser title %q)", try, pageTitle(ctx, h, sess.VMID))
		}
	}
	done := waitSession(t, ac, sess.ID, 2*time.Minute, "completed", func(s api.AuthSession) bool { return s.State == api.AuthCompleted })
	t.Logf("dev login completed through WebRTC; timings %v", done.TimingsMS)
	if fb, _ := evalIn[int](b, `hangarLiveView.fallbacks`); fb != 0 {
		t.Fatalf("the page fell back to noVNC %d times", fb)
	}
}

// videoShot saves the WebRTC video's current frame as a PNG under
// HANGAR_E2E_ARTIFACTS (or the test's temporary directory) for a failure.
func videoShot(t *testing.T, b *browserTab, name string) {
	t.Helper()
	url, err := evalIn[string](b, `(() => { const v = hangarLiveView.rtc?.video; if (!v) return ""; const c = document.createElement("canvas"); c.width = v.videoWidth; c.height = v.videoHeight; c.getContext("2d").drawImage(v, 0, 0); return c.toDataURL("image/png"); })()`)
	data, ok := strings.CutPrefix(url, "data:image/png;base64,")
	if err != nil || !ok {
		t.Logf("no video frame to save: %v", err)
		return
	}
	png, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		return
	}
	dir := os.Getenv("HANGAR_E2E_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err == nil {
		t.Logf("video frame saved: %s", p)
	}
}
