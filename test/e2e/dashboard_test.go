package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/daemon"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// The dashboard tests drive the real page in a real headless Chromium
// against a real daemon: every request the page makes goes to the daemon's
// API, and every update it shows comes from the API's answers and its event
// stream (read with fetch, since EventSource cannot send the key).

// browserTab is one Chromium tab with the dashboard open.
type browserTab struct {
	t   *testing.T
	ctx context.Context // a chromedp context; never carries a deadline itself

	mu         sync.Mutex // guards exceptions
	exceptions []string   // uncaught exceptions the page threw
}

// newBrowserTab starts a headless Chromium with a fresh profile, or skips
// (fails under CI) when there is none.
func newBrowserTab(t *testing.T) *browserTab {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if _, serr := os.Stat("/usr/bin/chromium"); serr == nil {
			path, err = "/usr/bin/chromium", nil
		}
	}
	testutil.Require(t, err == nil, "chromium is not installed (apt-get install chromium)")
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1100),
	)
	// WithLogf and WithErrorf report chromedp's own trouble; the protocol
	// messages (which carry the typed API key) are not logged.
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf), chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	b := &browserTab{t: t, ctx: ctx}
	// The first Run starts the browser; it must not carry a deadline.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.IsException() {
				b.mu.Lock()
				b.exceptions = append(b.exceptions, m.String())
				b.mu.Unlock()
			}
			t.Logf("page console %s: %s", m.Type, m.Text)
		}
	}()
	t.Cleanup(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, e := range b.exceptions {
			t.Errorf("the page threw: %s", e)
		}
	})
	return b
}

// do runs actions with a time limit, failing the test on error.
func (b *browserTab) do(within time.Duration, what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, within)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v\n%s", what, err, b.diagnose())
	}
}

// evalIn evaluates a JavaScript expression in the page. DevTools evaluation is
// not subject to the page's CSP (chromedp's Poll is: it builds its predicate
// with new Function, which the dashboard's CSP forbids).
func evalIn[T any](b *browserTab, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// waitJS waits until expr is true in the page.
func (b *browserTab) waitJS(within time.Duration, what, expr string) {
	b.t.Helper()
	if err := b.pollJS(within, expr); err != nil {
		b.t.Fatalf("waiting for %s: %v\n%s", what, err, b.diagnose())
	}
}

func (b *browserTab) pollJS(within time.Duration, expr string) error {
	deadline := time.Now().Add(within)
	var last error
	for {
		ok, err := evalIn[bool](b, "Boolean("+expr+")")
		if err == nil && ok {
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("%w (last: %v)", errTimeout, last)
			}
			return errTimeout
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// text returns the text of the first element matching sel ("" if none).
func (b *browserTab) text(sel string) string {
	s, _ := evalIn[string](b, `(document.querySelector(`+strconv.Quote(sel)+`)?.textContent ?? "").trim()`)
	return s
}

// diagnose describes what the page shows, for failure messages.
func (b *browserTab) diagnose() string {
	var sb strings.Builder
	for _, sel := range []string{"#sign-in-error", "#whoami", "#events-status", "#notice", "#session-state", "#session-error", "#providers", "#vms"} {
		fmt.Fprintf(&sb, "  %s: %q\n", sel, b.text(sel))
	}
	return "page:\n" + sb.String()
}

// shot saves a screenshot of the page as <name>.png in the directory named
// by HANGAR_DASHBOARD_SHOTS, for looking at the page; without it, nothing.
func (b *browserTab) shot(name string) {
	dir := os.Getenv("HANGAR_DASHBOARD_SHOTS")
	if dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
	}
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
	}
}

// dashboardURL checks that the daemon serves the dashboard at "/" and
// returns its address.
func dashboardURL(t *testing.T, h *harness) string {
	t.Helper()
	resp, err := http.Get(h.url + "/")
	if err != nil {
		t.Fatalf("GET /: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		resp.Header.Get("Content-Security-Policy") == "" {
		t.Fatalf("the daemon does not serve the dashboard at /: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return h.url + "/"
}

// adminKey is the daemon's first admin key (never logged).
func (h *harness) adminKey(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.dataDir, daemon.AdminKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// signIn types key into the sign-in form and submits it.
func (b *browserTab) signIn(key string) {
	b.t.Helper()
	b.do(20*time.Second, "sign in",
		chromedp.WaitVisible(chromedp.CSS("#api-key")),
		// (SetValue refuses an empty value.)
		chromedp.Evaluate[chromedp.Void](`document.querySelector("#api-key").value = ""`),
		chromedp.SendKeys(chromedp.CSS("#api-key"), key),
		chromedp.Click(chromedp.CSS("#sign-in")),
	)
}

// vmRowButton selects the button for action in the VM's row.
func vmRowButton(id, action string) chromedp.CSS {
	return chromedp.CSS(`#vms tr[data-vm-id=` + strconv.Quote(id) + `] button[data-action="` + action + `"]`)
}

// TestDashboard proves, in a real browser against a real daemon:
//   - a wrong key is refused with a clear message and the page stays signed
//     out; the admin key signs in, shows "admin" and the VM table;
//   - the page reads the event stream itself: a user created through the API
//     is announced on the page within seconds;
//   - the key survives a reload (sessionStorage) and Sign out forgets it;
//   - with the base image present: a VM created from the page's "New VM"
//     reaches "ready" in the table through events (the page polls only while
//     the event stream is down, and the test checks it is live), stops and
//     starts from its buttons (stop asks for confirmation), and is deleted
//     from the page after confirmation, which the API confirms.
func TestDashboard(t *testing.T) {
	h := startDaemon(t, nil)
	base := dashboardURL(t, h)
	b := newBrowserTab(t)
	b.do(30*time.Second, "open the dashboard", chromedp.Navigate(base), chromedp.WaitVisible(chromedp.CSS("#api-key")))

	// The page's event-stream parser, fed the way a network may split a
	// stream: CRLF cut between chunks, comments, multi-line data, an event
	// without data (not dispatched), a lone CR as line end, an unfinished
	// event at the end (not dispatched, but its id is remembered).
	pctx, pcancel := context.WithTimeout(b.ctx, 10*time.Second)
	parsed, err := chromedp.Run(pctx, chromedp.Evaluate[string](`(async () => {
		const { SSEParser } = await import("/assets/api.js");
		const p = new SSEParser();
		const out = [];
		for (const c of [": hangar events\r\n\r\nid: 1\r", "\nevent: vm_ready\r\ndata: {\"a\":", "1}\r\n\r\n",
			"id: 2\nevent: x\ndata: line1\ndata:line2\n\n", "event: nodata\n\n", "data: plain\r\r", "id: 3\ndata"]) {
			out.push(...p.push(c));
		}
		return JSON.stringify(out) + " last=" + p.lastId;
	})()`, chromedp.EvalAwaitPromise))
	pcancel()
	if err != nil {
		t.Fatalf("run the event-stream parser in the page: %v", err)
	}
	if want := `[{"id":"1","type":"vm_ready","data":"{\"a\":1}"},{"id":"2","type":"x","data":"line1\nline2"},{"id":"2","type":"message","data":"plain"}] last=3`; parsed != want {
		t.Errorf("event-stream parser:\n got %s\nwant %s", parsed, want)
	}

	// A wrong key: the error shows and nothing else does.
	b.signIn("hgr_this-is-not-a-key")
	b.waitJS(10*time.Second, "the wrong-key error", `!document.querySelector("#sign-in-error").hidden`)
	b.shot("signin-wrong-key")
	if got := b.text("#sign-in-error"); got != "That key is not valid." {
		t.Errorf("wrong key: error %q, want %q", got, "That key is not valid.")
	}
	if hidden, _ := evalIn[bool](b, `document.querySelector("#app-view").hidden`); !hidden {
		t.Error("the app is shown after a wrong key")
	}

	// The admin key.
	key := h.adminKey(t)
	b.signIn(key)
	b.waitJS(10*time.Second, "signed in as admin", `document.querySelector("#whoami").textContent.includes("admin") && !document.querySelector("#app-view").hidden`)
	if got := b.text("#whoami"); got != "admin (admin)" {
		t.Errorf("whoami %q, want %q", got, "admin (admin)")
	}
	if vis, _ := evalIn[bool](b, `document.querySelector("#sign-in-error").hidden && document.querySelector("#signin-view").hidden`); !vis {
		t.Error("the sign-in form or its error is still shown after signing in")
	}
	b.waitJS(10*time.Second, "the VM table", `document.querySelector("#vms").rows.length > 0`)
	b.waitJS(15*time.Second, "the event stream to be live", `document.querySelector("#events-status").dataset.state === "live"`)

	// An event produced outside the page shows up on it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "dashboard-probe"}); err != nil {
		t.Fatal(err)
	}
	b.waitJS(15*time.Second, "the user_created event on the page", `document.querySelector("#notice").textContent.includes("User dashboard-probe was created.")`)

	// The key is kept for the tab: a reload stays signed in.
	b.do(30*time.Second, "reload", chromedp.Reload())
	b.waitJS(15*time.Second, "signed in again after reload", `document.querySelector("#whoami").textContent.includes("admin") && !document.querySelector("#app-view").hidden`)

	t.Run("base VM from the page", func(t *testing.T) {
		requireVMs(t, "base")
		b.t = t
		defer func() { b.t = h.t }()
		before := map[string]bool{}
		list, err := h.admin.ListVMs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range list {
			before[v.ID] = true
		}
		b.do(20*time.Second, "create a base VM",
			chromedp.SetValue(chromedp.CSS("#new-vm-kind"), api.KindBase),
			chromedp.Click(chromedp.CSS("#new-vm")),
		)
		var id string
		if err := eventually(20*time.Second, func() bool {
			vms, err := h.admin.ListVMs(ctx)
			if err != nil {
				return false
			}
			for _, v := range vms {
				if !before[v.ID] && v.Kind == api.KindBase {
					id = v.ID
					return true
				}
			}
			return false
		}); err != nil {
			t.Fatalf("no base VM was created from the page: %v\n%s", err, b.diagnose())
		}
		start := time.Now()
		b.waitJS(3*time.Minute, "VM "+id+" ready in the table", `document.querySelector('#vms tr[data-vm-id=`+strconv.Quote(id)+`] [data-state]')?.dataset.state === "ready"`)
		t.Logf("the page showed %s ready %.1fs after it appeared in the API", id, time.Since(start).Seconds())
		b.shot("vm-ready")
		if st := b.text("#events-status"); st != "live" {
			t.Errorf("event stream status %q while waiting for ready; the update may have come from the fallback poll", st)
		}
		if boot := b.text(`#vms tr[data-vm-id=` + strconv.Quote(id) + `] td:nth-child(4)`); !strings.HasSuffix(boot, "s") {
			t.Errorf("boot time column %q, want a duration", boot)
		}

		// Stop asks first; "Keep" leaves the VM alone.
		b.do(20*time.Second, "stop, then keep", chromedp.Click(vmRowButton(id, "stop")), chromedp.WaitVisible(chromedp.CSS("#confirm-no")), chromedp.Click(chromedp.CSS("#confirm-no")))
		time.Sleep(time.Second)
		if vm, err := h.admin.GetVM(ctx, id); err != nil || vm.State != api.VMReady {
			t.Fatalf("after declining the stop: %v %+v", err, vm.State)
		}
		b.do(20*time.Second, "stop", chromedp.Click(vmRowButton(id, "stop")), chromedp.WaitVisible(chromedp.CSS("#confirm-yes")))
		b.shot("vm-stop-confirm")
		b.do(20*time.Second, "confirm stop", chromedp.Click(chromedp.CSS("#confirm-yes")))
		b.waitJS(time.Minute, "VM stopped in the table", `document.querySelector('#vms tr[data-vm-id=`+strconv.Quote(id)+`] [data-state]')?.dataset.state === "stopped"`)
		b.do(20*time.Second, "start", chromedp.Click(vmRowButton(id, "start")))
		b.waitJS(3*time.Minute, "VM ready again", `document.querySelector('#vms tr[data-vm-id=`+strconv.Quote(id)+`] [data-state]')?.dataset.state === "ready"`)

		b.do(20*time.Second, "delete", chromedp.Click(vmRowButton(id, "delete")), chromedp.WaitVisible(chromedp.CSS("#confirm-yes")), chromedp.Click(chromedp.CSS("#confirm-yes")))
		b.waitJS(time.Minute, "the VM's row to go", `!document.querySelector('#vms tr[data-vm-id=`+strconv.Quote(id)+`]')`)
		vm, err := h.admin.GetVM(ctx, id)
		if err == nil && vm.State != api.VMDestroyed {
			t.Errorf("after delete from the page the API shows %s as %s", id, vm.State)
		} else if err != nil && !isStatus(err, http.StatusNotFound) {
			t.Errorf("get %s after delete: %v", id, err)
		}
	})

	// Sign out forgets the key: a reload shows the sign-in form.
	b.do(10*time.Second, "sign out", chromedp.Click(chromedp.CSS("#sign-out")))
	b.waitJS(10*time.Second, "signed out", `!document.querySelector("#signin-view").hidden && document.querySelector("#app-view").hidden`)
	if kept, _ := evalIn[bool](b, `sessionStorage.getItem("hangar.apiKey") !== null`); kept {
		t.Error("the key is still in sessionStorage after Sign out")
	}
	b.do(30*time.Second, "reload", chromedp.Reload())
	b.waitJS(10*time.Second, "the sign-in form after reload", `!document.querySelector("#signin-view").hidden && document.querySelector("#app-view").hidden`)
}

// loginSessionsMounted asks the daemon whether login sessions exist, with a
// request that starts none: an empty provider is refused with 400 by the
// real route, while a missing route answers 404 "no route for …".
func loginSessionsMounted(t *testing.T, h *harness) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := h.admin.Do(ctx, http.MethodPost, "/api/v1/auth/sessions", map[string]string{}, nil)
	var ae *client.Error
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound && strings.HasPrefix(ae.Message, "no route for") {
		return false
	}
	return true
}

// TestDashboardConnectDev proves the whole browser login from the
// dashboard: "Connect dev" starts a login session; the page shows its state
// and, once the browser VM is up, embeds its live view; the test then
// signs in to the dev OAuth server only by typing into the live view's
// canvas inside that iframe (key events travel page → noVNC → websocket →
// agent link → x11vnc → the VM's Chromium); the CLI's callback completes
// inside the VM, the credentials are captured, and the page shows the
// session "Connected" and dev in the providers table, as the API does;
// Disconnect on the page (after confirmation) deletes the credentials.
// Before that, a first login is cancelled from the panel.
func TestDashboardConnectDev(t *testing.T) {
	// This test types into noVNC's canvas; the live view would pick
	// WebRTC when ffmpeg is installed (internal/liveview tests that path).
	h := startDaemon(t, func(c *config.Config) { c.WebRTC.Enabled = false })
	if !loginSessionsMounted(t, h) {
		t.Skip("login sessions not yet mounted")
	}
	requireVMs(t, "browser")
	base := dashboardURL(t, h)
	b := newBrowserTab(t)
	b.do(30*time.Second, "open the dashboard", chromedp.Navigate(base), chromedp.WaitVisible(chromedp.CSS("#api-key")))
	b.signIn(h.adminKey(t))
	b.waitJS(10*time.Second, "signed in", `!document.querySelector("#app-view").hidden`)

	// A login can be cancelled from the panel; Close then hides it and the
	// Connect buttons work again.
	b.do(10*time.Second, "connect dev", chromedp.Click(chromedp.CSS("#connect-dev")))
	b.waitJS(10*time.Second, "the session panel", `!document.querySelector("#session-panel").hidden && document.querySelector("#session-state").dataset.state !== ""`)
	if off, _ := evalIn[bool](b, `document.querySelector("#connect-dev").disabled`); !off {
		t.Error("Connect dev is still enabled while a login runs")
	}
	b.do(10*time.Second, "cancel", chromedp.Click(chromedp.CSS("#session-cancel")))
	b.waitJS(time.Minute, "the session cancelled", `document.querySelector("#session-state").dataset.state === "cancelled"`)
	if got := b.text("#session-state"); got != "Cancelled" {
		t.Errorf("cancelled session shows %q", got)
	}
	b.do(10*time.Second, "close the panel", chromedp.Click(chromedp.CSS("#session-close")))
	b.waitJS(10*time.Second, "the panel closed and Connect enabled", `document.querySelector("#session-panel").hidden && !document.querySelector("#connect-dev").disabled`)

	connectDevThroughLiveView(t, h, b)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var creds []api.Credential
	if err := h.admin.Do(ctx, http.MethodGet, "/api/v1/credentials", nil, &creds); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range creds {
		found = found || c.Provider == "dev"
	}
	if !found {
		t.Fatalf("the page shows dev connected but the API lists %+v", creds)
	}

	// Disconnect from the page, after confirmation.
	b.do(20*time.Second, "disconnect dev",
		chromedp.Click(chromedp.CSS(`#providers tr[data-provider="dev"] button[data-action="disconnect"]`)),
		chromedp.WaitVisible(chromedp.CSS("#confirm-yes")),
		chromedp.Click(chromedp.CSS("#confirm-yes")),
	)
	b.waitJS(20*time.Second, "dev gone from the providers table", `document.querySelector('#providers tr[data-provider="dev"]') === null`)
	creds = nil
	if err := h.admin.Do(ctx, http.MethodGet, "/api/v1/credentials", nil, &creds); err != nil {
		t.Fatal(err)
	}
	for _, c := range creds {
		if c.Provider == "dev" {
			t.Errorf("dev is still stored after Disconnect on the page: %+v", c)
		}
	}
}

// connectDevThroughLiveView clicks "Connect dev" and completes the dev
// provider's login through the live view embedded in the page. It reads
// the VM browser's page title (DevTools over the agent link) only to know
// when to type; every key reaches the VM through the page.
func connectDevThroughLiveView(t *testing.T, h *harness, b *browserTab) {
	t.Helper()
	b.do(10*time.Second, "connect dev", chromedp.Click(chromedp.CSS("#connect-dev")))
	b.waitJS(10*time.Second, "the session panel", `!document.querySelector("#session-panel").hidden && document.querySelector("#session-state").dataset.state !== ""`)
	t.Logf("session state: %s", b.text("#session-state"))
	b.shot("session-starting")
	b.waitJS(4*time.Minute, "the live view", `document.querySelector("#live-view") !== null`)
	// The OAuth page is open in the VM's browser once the session awaits
	// the user.
	b.waitJS(4*time.Minute, "the session to await the user", `document.querySelector("#session-state").dataset.state === "awaiting_user"`)
	sessionID, err := evalIn[string](b, `sessionStorage.getItem("hangar.authSession") ?? ""`)
	if err != nil || sessionID == "" {
		t.Fatalf("the page keeps no open session id (%v)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var sess api.AuthSession
	if err := h.admin.Do(ctx, http.MethodGet, "/api/v1/auth/sessions/"+sessionID, nil, &sess); err != nil || sess.VMID == "" {
		t.Fatalf("session %s: %v (vm %q)", sessionID, err, sess.VMID)
	}

	// Wait until the live view's noVNC client is connected to the VM's
	// screen (the viewer page marks its body; it is same-origin, so the
	// dashboard's document can look into it).
	b.waitJS(time.Minute, "the live view to connect", `document.querySelector("#live-view")?.contentDocument?.body?.dataset.state === "connected"`)
	var frame *chromedp.Node
	if err := eventually(30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(b.ctx, 3*time.Second)
		defer cancel()
		nodes, err := chromedp.Run(ctx, chromedp.Nodes(chromedp.CSS("#live-view")))
		if err != nil || len(nodes) == 0 {
			return false
		}
		if _, err := chromedp.Run(ctx, chromedp.Nodes(chromedp.CSS("canvas"), chromedp.FromNode(nodes[0]))); err != nil {
			return false
		}
		frame = nodes[0]
		return true
	}); err != nil {
		t.Fatalf("no canvas in the live view: %v\n%s", err, b.diagnose())
	}
	// In the VM's bare X server keyboard focus follows the pointer, so the
	// mouse moves over the screen (noVNC forwards the position) but does not
	// click: a click on the page would take the focus away from the
	// autofocused username field. The canvas then gets the focus a click
	// would have given it, and keys typed in this tab go to the VM.
	dctx, dcancel := context.WithTimeout(b.ctx, 10*time.Second)
	box, err := chromedp.Run(dctx, chromedp.Dimensions(chromedp.CSS("#live-view")))
	dcancel()
	if err != nil || len(box.Content) < 8 {
		t.Fatalf("live view box: %v", err)
	}
	x, y := (box.Content[0]+box.Content[4])/2, (box.Content[1]+box.Content[5])/2
	b.do(10*time.Second, "point at the live view and focus its canvas",
		chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, x, y),
		chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, x+5, y+5),
		chromedp.Focus(chromedp.CSS("canvas"), chromedp.FromNode(frame)),
	)
	if focused, _ := evalIn[bool](b, `document.activeElement === document.querySelector("#live-view")`); !focused {
		t.Fatalf("the live view iframe does not have the focus after focusing its canvas\n%s", b.diagnose())
	}
	// The VM browser's title changes before Chromium paints the page (slowly,
	// under TCG), and keys sent to a page still loading are lost: wait until
	// the live view shows the page, unlike the screen before, and holds still.
	painted := func(title string, unlike []int, within time.Duration) []int {
		t.Helper()
		var got string
		var screen []int
		// Once a second: each look at the title is a DevTools request the
		// VM's (emulated, slow) Chromium has to answer while it loads.
		if err := pollEvery(within, time.Second, func() bool {
			if got = pageTitle(ctx, h, sess.VMID); !strings.Contains(got, title) {
				return false
			}
			first := b.liveScreen()
			if len(first) == 0 || blankScreen(first) || (unlike != nil && screenDiff(first, unlike) < 0.02) {
				return false
			}
			time.Sleep(time.Second)
			screen = b.liveScreen()
			return screenDiff(first, screen) < 0.01
		}); err != nil {
			saveLiveViewShot(t, b)
			t.Fatalf("the live view does not show the page %q (the VM's browser shows %q)\n%s", title, got, b.diagnose())
		}
		return screen
	}
	signInScreen := painted("Sign in", nil, 90*time.Second)
	b.shot("session-live-view")
	b.do(30*time.Second, "type the dev credentials into the live view",
		chromedp.KeyEvent("demo"),
		chromedp.KeyEvent(kb.Tab),
		chromedp.KeyEvent("hangar-demo"),
		chromedp.KeyEvent(kb.Enter),
	)
	// The consent page focuses Allow, so Enter approves. Should the page
	// still show consent 20 s later (a key lost while the emulated browser
	// was busy), press Enter again as a user would; the log says so.
	painted("Allow access", signInScreen, 90*time.Second)
	for try := 1; ; try++ {
		b.do(10*time.Second, "approve", chromedp.KeyEvent(kb.Enter))
		moved := pollEvery(20*time.Second, time.Second, func() bool {
			st, _ := evalIn[string](b, `document.querySelector("#session-state").dataset.state`)
			return st != "awaiting_user" || !strings.Contains(pageTitle(ctx, h, sess.VMID), "Allow access")
		}) == nil
		if moved {
			break
		}
		if try == 3 {
			saveLiveViewShot(t, b)
			t.Fatalf("the VM's browser still shows the consent page after %d presses of Enter\n%s", try, b.diagnose())
		}
		t.Logf("the consent page is still shown 20 s after Enter; pressing Enter again")
	}

	ended := `["completed","failed","timeout","cancelled"].includes(document.querySelector("#session-state").dataset.state)`
	if err := b.pollJS(2*time.Minute, ended); err != nil {
		saveLiveViewShot(t, b)
		t.Fatalf("the session did not end after consent (the VM's browser shows %q)\n%s", pageTitle(ctx, h, sess.VMID), b.diagnose())
	}
	if st := b.text("#session-state"); st != "Connected" {
		t.Fatalf("session ended %q (%s)\n%s", st, b.text("#session-error"), b.diagnose())
	}
	b.waitJS(30*time.Second, "dev in the providers table", `document.querySelector('#providers tr[data-provider="dev"]') !== null`)
	b.shot("session-connected")
	if present, _ := evalIn[bool](b, `document.querySelector("#live-view") !== null`); present {
		t.Error("the live view is still embedded after the session completed")
	}
}

// pollEvery checks cond every interval until it holds or within passes.
func pollEvery(within, interval time.Duration, cond func() bool) error {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return errTimeout
		}
		time.Sleep(interval)
	}
	return nil
}

// liveScreen samples the live view's VNC canvas (every 97th pixel below the
// VM browser's toolbar, as 0xRRGGBB); nil when there is no canvas yet.
func (b *browserTab) liveScreen() []int {
	px, err := evalIn[[]int](b, `(() => {
		const c = document.querySelector("#live-view")?.contentDocument?.querySelector("canvas");
		if (!c || !c.width || !c.height) return [];
		const y0 = Math.floor(c.height / 5);
		const d = c.getContext("2d").getImageData(0, y0, c.width, c.height - y0).data;
		const out = [];
		for (let i = 0; i + 3 < d.length; i += 4 * 97) out.push((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
		return out;
	})()`)
	if err != nil {
		return nil
	}
	return px
}

// blankScreen reports whether every sampled pixel has one colour (a blank page).
func blankScreen(px []int) bool {
	for _, p := range px {
		if p != px[0] {
			return false
		}
	}
	return true
}

// screenDiff is the share of sampled pixels that differ between two
// samples (1 when their sizes differ).
func screenDiff(a, b []int) float64 {
	if len(a) != len(b) || len(a) == 0 {
		return 1
	}
	d := 0
	for i := range a {
		if a[i] != b[i] {
			d++
		}
	}
	return float64(d) / float64(len(a))
}

// saveLiveViewShot writes a screenshot of the page, live view included, to
// a file and logs its path, so a failed login can be looked at.
func saveLiveViewShot(t *testing.T, b *browserTab) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Logf("page screenshot: %v", err)
		return
	}
	path := filepath.Join(os.TempDir(), fmt.Sprintf("hangar-dashboard-liveview-%d.png", time.Now().Unix()))
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Logf("save page screenshot: %v", err)
		return
	}
	t.Logf("page screenshot with the live view: %s", path)
}
