package liveview

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"syscall"
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
			startChromium(t, chromium, e.url("http", "sess-1", "", e.token("sess-1", viewOnly, time.Minute), nil))
			// noVNC asks for the screen only after ServerInit, that is once
			// it is connected.
			msgs, err := e.vnc.WaitFor(ctx, func(m []rfbtest.Message) bool { return countTypes(m)[3] > 0 })
			if err != nil {
				t.Fatalf("noVNC never asked for the screen; messages %v", countTypes(msgs))
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

// TestViewerKeyboardAndMouseInChromium: once connected, the page has given
// noVNC's canvas the keyboard focus, so keys a user types (dispatched here
// as real input events through DevTools) reach the VNC server as X
// keysyms, and a click on the scaled canvas arrives as a pointer event
// inside the remote screen.
func TestViewerKeyboardAndMouseInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	testutil.Require(t, err == nil, "chromium is not installed (apt-get install chromium)")
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := startChromium(t, chromium, "--window-size=1000,700", e.url("http", "sess-1", "", e.token("sess-1", false, time.Minute), nil))
	d, err := attachCDP(ctx, dir, "/live/sess-1")
	if err != nil {
		t.Fatal(err)
	}
	defer d.c.CloseNow()
	for {
		state, err := d.eval(ctx, `window.hangarLiveView ? window.hangarLiveView.state : ""`)
		if err != nil {
			t.Fatal(err)
		}
		if state == `"connected"` {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("page state %s, never connected", state)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if el, err := d.eval(ctx, `document.activeElement && document.activeElement.tagName`); err != nil || el != `"CANVAS"` {
		t.Fatalf("focused element %s (%v), want noVNC's CANVAS", el, err)
	}
	for _, ev := range []map[string]any{
		{"type": "keyDown", "key": "q", "code": "KeyQ", "text": "q", "windowsVirtualKeyCode": 81},
		{"type": "keyUp", "key": "q", "code": "KeyQ", "windowsVirtualKeyCode": 81},
	} {
		if err := d.call(ctx, "Input.dispatchKeyEvent", ev, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Click the middle of the canvas: with the screen scaled to the
	// window, that is the middle of the remote screen.
	var box []float64
	raw, err := d.eval(ctx, `(() => { const r = document.querySelector('#screen canvas').getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()`)
	if err == nil {
		err = json.Unmarshal([]byte(raw), &box)
	}
	if err != nil || len(box) != 4 || box[2] == 0 {
		t.Fatalf("canvas box %s: %v", raw, err)
	}
	cx, cy := box[0]+box[2]/2, box[1]+box[3]/2
	for _, typ := range []string{"mouseMoved", "mousePressed", "mouseReleased"} {
		ev := map[string]any{"type": typ, "x": cx, "y": cy, "button": "left", "clickCount": 1}
		if typ == "mouseMoved" {
			ev["button"] = "none"
		}
		if err := d.call(ctx, "Input.dispatchMouseEvent", ev, nil); err != nil {
			t.Fatal(err)
		}
	}
	msgs, err := e.vnc.WaitFor(ctx, func(m []rfbtest.Message) bool {
		keyUp, pressed := false, false
		for _, x := range m {
			if x.Type == 4 {
				if down, sym := x.Key(); !down && sym == 'q' {
					keyUp = true
				}
			}
			if x.Type == 5 {
				if b, _, _ := x.Pointer(); b&1 != 0 {
					pressed = true
				}
			}
		}
		return keyUp && pressed
	})
	if err != nil {
		t.Fatalf("input did not reach the VNC server: %v (got %v)", err, countTypes(msgs))
	}
	for _, x := range msgs {
		if x.Type == 5 {
			if b, px, py := x.Pointer(); b&1 != 0 {
				// 320x200 remote screen: the middle within scaling error.
				if px < 150 || px > 170 || py < 90 || py > 110 {
					t.Fatalf("click at the canvas middle arrived at %d,%d, want about 160,100", px, py)
				}
				t.Logf("canvas %vx%v at %v,%v; click arrived at %d,%d", box[2], box[3], box[0], box[1], px, py)
				break
			}
		}
	}
}

// startChromium runs headless Chromium in its own process group with a
// fresh profile and returns the profile directory. Cleanup kills the whole
// group (Chromium's helpers outlive a killed browser process and keep
// writing to the profile) and then removes the profile.
func startChromium(t testing.TB, chromium string, args ...string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "liveview-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	args = append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--user-data-dir=" + dir, "--remote-debugging-port=0"}, args...)
	cmd := exec.Command(chromium, args...)
	cmd.Env = append(os.Environ(), "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		_ = cmd.Wait()
		// Members of the group may take a moment to die after the kill.
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := os.RemoveAll(dir)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Logf("leaving chromium profile %s: %v", dir, err)
				return
			}
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			time.Sleep(100 * time.Millisecond)
		}
	})
	return dir
}
