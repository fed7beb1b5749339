package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/liveview/rfb"
	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

const (
	xkReturn = 0xff0d
	xkTab    = 0xff09
)

// waitSession polls a login session until cond holds.
func waitSession(t *testing.T, c *client.Client, id string, within time.Duration, what string, cond func(api.AuthSession) bool) api.AuthSession {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var s api.AuthSession
		if e := c.Do(context.Background(), http.MethodGet, "/api/v1/auth/sessions/"+id, nil, &s); e == nil && cond(s) {
			return s
		}
		if (s.State == api.AuthFailed || s.State == api.AuthTimeout || s.State == api.AuthCancelled) && !cond(s) {
			t.Fatalf("session ended %s while waiting for %s: %s", s.State, what, s.Error)
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s: no %s within %s (state %s)", id, what, within, s.State)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pageTitle asks the VM's Chromium (DevTools on guest port 9222, over the
// agent link) for the title of its page.
func pageTitle(ctx context.Context, h *harness, vmID string) string {
	admin, err := h.d.Store().GetUserByName(ctx, "admin")
	if err != nil {
		return ""
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return h.d.VMs().DialPort(ctx, admin, vmID, 9222)
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://127.0.0.1:9222/json/list")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var tabs []struct{ Type, Title string }
	_ = json.NewDecoder(resp.Body).Decode(&tabs)
	for _, tb := range tabs {
		if tb.Type == "page" {
			return tb.Title
		}
	}
	return ""
}

// TestDevLoginThroughLiveView is the whole browser login: a browser VM
// boots, the dev CLI's URL opens in its Chromium, the test drives that
// browser only through the live-view websocket (VNC key events) to sign in
// and approve, and the session completes with sealed credentials; the VM is
// destroyed afterwards and no token shows up in logs, console or events.
func TestDevLoginThroughLiveView(t *testing.T) {
	requireVMs(t, "browser")
	h := startDaemon(t, nil)
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
	if sess.State != api.AuthStarting {
		t.Fatalf("new session state %q", sess.State)
	}
	sess = waitSession(t, ac, sess.ID, 4*time.Minute, "awaiting_user", func(s api.AuthSession) bool { return s.State == api.AuthAwaitingUser && s.LiveViewURL != "" })
	t.Logf("awaiting the user after %v ms; oauth url host ok: %v", sess.TimingsMS, strings.Contains(sess.OAuthURL, "/dev-oauth/authorize?"))
	if !strings.Contains(sess.OAuthURL, "/dev-oauth/authorize?") || !strings.Contains(sess.OAuthURL, "code_challenge=") {
		t.Fatalf("oauth url %q", sess.OAuthURL)
	}

	// Another user's session id with this token, or no token, is refused.
	wsURL := "ws://" + strings.TrimPrefix(h.url, "http://") + strings.Replace(sess.LiveViewURL, "?", "/ws?", 1)
	if _, err := rfb.DialWebsocket(ctx, strings.Replace(wsURL, sess.ID, "auth_notmine", 1)); err == nil {
		t.Fatal("a live-view token opened another session's view")
	}
	conn, err := rfb.DialWebsocket(ctx, wsURL)
	if err != nil {
		t.Fatalf("live view websocket: %v", err)
	}
	defer conn.Close()
	vc, err := rfb.Handshake(ctx, conn)
	if err != nil {
		t.Fatalf("rfb handshake through the live view: %v", err)
	}
	shotDir := t.TempDir()
	if d := os.Getenv("HANGAR_TEST_SCREENSHOTS"); d != "" {
		shotDir = d
	}
	shot := func(name string) string {
		img, err := vc.Screenshot(ctx)
		if err != nil {
			return "screenshot failed: " + err.Error()
		}
		p := filepath.Join(shotDir, name+".png")
		f, _ := os.Create(p)
		png.Encode(f, img)
		f.Close()
		return p
	}
	// Keyboard focus follows the pointer in a bare X server: keep it over
	// the browser, without clicking (the username field has autofocus).
	if err := vc.Pointer(ctx, 640, 500, 0); err != nil {
		t.Fatal(err)
	}
	// The title changes before Chromium paints (slowly, under TCG), and
	// keys sent to a page still loading are lost: wait until the screen
	// shows the page. Every poll takes a screenshot, which also keeps the
	// websocket reading (a viewer that never reads stops answering pings
	// and is disconnected).
	vc.KeyDelay = 50 * time.Millisecond
	painted := func(title string, unlike *image.RGBA, within time.Duration) (*image.RGBA, bool) {
		t.Helper()
		var img *image.RGBA
		err := eventually(within, func() bool {
			// Poll gently: a busy guest is slower still when asked for
			// its page title many times a second.
			time.Sleep(700 * time.Millisecond)
			var err error
			if img, err = vc.Screenshot(ctx); err != nil {
				t.Fatalf("screenshot through the live view: %v", err)
			}
			return strings.Contains(pageTitle(ctx, h, sess.VMID), title) && !uniform(img) && (unlike == nil || differs(img, unlike) > 0.02)
		})
		if err != nil {
			return img, false
		}
		time.Sleep(time.Second)
		return img, true
	}
	signIn, ok := painted("Sign in", nil, 120*time.Second)
	if !ok {
		t.Fatalf("the browser does not show the sign-in page; screen: %s", shot("sign-in"))
	}
	// Chromium under TCG sometimes drops keys while busy; if the consent
	// page does not come, reload the form (F5) and type again.
	const xkF5 = 0xffc2
	consented := false
	for attempt := 1; attempt <= 3 && !consented; attempt++ {
		for _, step := range []func() error{
			func() error { return vc.Type(ctx, "demo") },
			func() error { return vc.Key(ctx, xkTab) },
			func() error { return vc.Type(ctx, "hangar-demo") },
			func() error { return vc.Key(ctx, xkReturn) },
		} {
			if err := step(); err != nil {
				t.Fatal(err)
			}
		}
		if _, consented = painted("Allow access", signIn, 60*time.Second); consented {
			break
		}
		t.Logf("attempt %d: no consent page; screen: %s; reloading the form", attempt, shot(fmt.Sprintf("no-consent-%d", attempt)))
		if err := vc.Key(ctx, xkF5); err != nil {
			t.Fatal(err)
		}
		if signIn, ok = painted("Sign in", nil, 60*time.Second); !ok {
			t.Fatalf("the sign-in page did not come back; screen: %s", shot("reload"))
		}
	}
	if !consented {
		t.Fatalf("no consent page after three sign-ins through VNC")
	}
	t.Logf("consent page: %s", shot("consent"))
	approved := false
	for attempt := 1; attempt <= 3 && !approved; attempt++ {
		if err := vc.Key(ctx, xkReturn); err != nil {
			t.Fatal(err)
		}
		approved = eventually(40*time.Second, func() bool {
			_, _ = vc.Screenshot(ctx)
			s, _ := getSession(ac, sess.ID)
			return s.State != api.AuthAwaitingUser || !strings.Contains(pageTitle(ctx, h, sess.VMID), "Allow access")
		}) == nil
		if !approved {
			t.Logf("attempt %d: still on the consent page after Enter; screen: %s", attempt, shot(fmt.Sprintf("consent-after-%d", attempt)))
		}
	}
	if !approved {
		t.Fatal("the consent page never took Enter")
	}
	done := waitSession(t, ac, sess.ID, 2*time.Minute, "completed", func(s api.AuthSession) bool { return s.State == api.AuthCompleted })
	t.Logf("login completed; timings %v", done.TimingsMS)

	var creds []api.Credential
	if err := ac.Do(ctx, http.MethodGet, "/api/v1/credentials", nil, &creds); err != nil {
		t.Fatal(err)
	}
	if len(creds) != 1 || creds[0].Provider != "dev" || creds[0].Account != "demo@hangar.dev" || creds[0].ExpiresAt == nil {
		t.Fatalf("credentials = %+v", creds)
	}

	// The record opens with the daemon's keyring and holds the CLI's file.
	rec, err := h.d.Store().GetCredential(ctx, alice.ID, "dev")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := seal.Open(h.dataDir, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	plain, err := keys.OpenRecord(rec)
	if err != nil {
		t.Fatalf("open sealed record: %v", err)
	}
	var sealed struct {
		Files map[string]string `json:"files"`
	}
	json.Unmarshal(plain, &sealed)
	raw, _ := base64.StdEncoding.DecodeString(sealed.Files["/home/hangar/.hangar-dev/auth.json"])
	var auth struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.Unmarshal(raw, &auth); err != nil || auth.AccessToken == "" || auth.RefreshToken == "" {
		t.Fatalf("sealed record lacks the credential file's tokens")
	}
	if strings.Contains(string(rec.Ciphertext), auth.AccessToken) || strings.Contains(string(rec.Metadata), auth.AccessToken) {
		t.Fatal("a token is stored in the clear")
	}

	// The login VM is destroyed through the durable queue.
	if err := eventually(60*time.Second, func() bool {
		v, err := h.d.Store().GetVM(ctx, sess.VMID, "")
		return err == nil && v.State == api.VMDestroyed
	}); err != nil {
		t.Fatalf("login VM %s not destroyed after completion", sess.VMID)
	}

	// No token in the daemon's logs, the VM's console, or the events.
	var console strings.Builder
	_ = h.admin.Logs(ctx, sess.VMID, "", false, &console)
	var evs strings.Builder
	ectx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_ = h.admin.Events(ectx, 0, func(e api.Event) error { fmt.Fprintf(&evs, "%s %s\n", e.Type, e.Data); return nil })
	cancel()
	for name, text := range map[string]string{"daemon log": h.logs.String(), "console": console.String(), "events": evs.String()} {
		for _, tok := range []string{auth.AccessToken, auth.RefreshToken} {
			if strings.Contains(text, tok) {
				t.Errorf("a token from the credential file appears in the %s", name)
			}
		}
	}
	for _, want := range []string{"auth_awaiting_user", "auth_completed"} {
		if !strings.Contains(evs.String(), want) {
			t.Errorf("no %s event", want)
		}
	}
	_ = store.ErrNotFound
}

// uniform reports whether a screen is one colour (nothing painted yet).
func uniform(img *image.RGBA) bool {
	p := img.Pix
	for i := 4; i+3 < len(p); i += 4 * 97 {
		if p[i] != p[0] || p[i+1] != p[1] || p[i+2] != p[2] {
			return false
		}
	}
	return true
}

// differs is the share of sampled pixels that differ between two screens.
func differs(a, b *image.RGBA) float64 {
	if len(a.Pix) != len(b.Pix) {
		return 1
	}
	n, d := 0, 0
	for i := 0; i+3 < len(a.Pix); i += 4 * 13 {
		n++
		if a.Pix[i] != b.Pix[i] || a.Pix[i+1] != b.Pix[i+1] || a.Pix[i+2] != b.Pix[i+2] {
			d++
		}
	}
	return float64(d) / float64(n)
}
