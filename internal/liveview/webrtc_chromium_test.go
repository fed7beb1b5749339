package liveview

import (
	"context"
	"encoding/json"
	"fmt"
	"image/color"
	"log/slog"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/hangar-vm/hangar/internal/liveview/rfbtest"
	"github.com/hangar-vm/hangar/internal/liveview/webrtc"
	htestutil "github.com/hangar-vm/hangar/internal/testutil"
)

// rtcEnv is a live-view handler with the WebRTC transport and an embedded
// TURN server on loopback, and the encoders it started.
type rtcEnv struct {
	*env
	turn    *webrtc.TURN
	metrics *webrtc.Metrics
	// mu guards pids.
	mu   sync.Mutex
	pids []int
}

func newRTCEnv(t *testing.T) *rtcEnv { return newRTCEnvTB(t) }

func newRTCEnvTB(t testing.TB) *rtcEnv {
	t.Helper()
	_, err := exec.LookPath("ffmpeg")
	htestutil.Require(t, err == nil, "ffmpeg is not installed (apt-get install ffmpeg)")
	r := &rtcEnv{metrics: webrtc.NewMetrics()}
	var logged lockedWriter
	var alive func() bool
	r.turn, err = webrtc.NewTURN(webrtc.TURNConfig{
		Listen: "127.0.0.1:0", TCP: true,
		Log:   slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Alive: func(ctx context.Context, s string) bool { return alive() },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.turn.Close() })
	srv, err := webrtc.New(webrtc.Options{
		Log:  slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug})),
		TURN: r.turn, LoopbackCandidates: true, Metrics: r.metrics, MaxFPS: 15,
		OnEncoder: func(_ string, pid int) {
			r.mu.Lock()
			r.pids = append(r.pids, pid)
			r.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.env = newEnv(t, func(o *Options) { o.WebRTC = srv; o.Metrics = r.metrics })
	logged.e = r.env
	alive = r.env.alive.Load
	t.Cleanup(func() {
		if t.Failed() {
			r.env.mu.Lock()
			t.Logf("daemon log:\n%s", r.env.logs.String())
			r.env.mu.Unlock()
		}
	})
	return r
}

func (r *rtcEnv) encoders() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.pids...)
}

// evalAsync evaluates an expression that may return a promise.
func (d *cdp) evalAsync(ctx context.Context, expr string) (string, error) {
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	err := d.call(ctx, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &r)
	if err == nil && r.ExceptionDetails != nil {
		err = fmt.Errorf("javascript: %s", r.ExceptionDetails.Text)
	}
	return string(r.Result.Value), err
}

// waitJS polls a boolean expression until it is true.
func (d *cdp) waitJS(ctx context.Context, t *testing.T, expr, what string) {
	t.Helper()
	for {
		v, err := d.evalAsync(ctx, expr)
		if v == "true" {
			return
		}
		if err != nil || ctx.Err() != nil {
			sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
			defer c()
			st, _ := d.eval(sctx, `JSON.stringify({state: hangarLiveView.state, transport: hangarLiveView.transport, fallback: hangarLiveView.lastFallback, status: document.getElementById('status').textContent, pc: hangarLiveView.rtc && hangarLiveView.rtc.pc && {ice: hangarLiveView.rtc.pc.iceConnectionState, gather: hangarLiveView.rtc.pc.iceGatheringState, sig: hangarLiveView.rtc.pc.signalingState, local: hangarLiveView.rtc.pc.localDescription && hangarLiveView.rtc.pc.localDescription.sdp.split('\n').filter(l => l.startsWith('a=cand')).join('|')}})`)
			t.Fatalf("%s: %v (page %s)", what, err, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sampleJS draws the current video frame to a canvas and returns the mean
// colour of its middle, as the page sees it after decoding.
const sampleJS = `(() => {
  const v = hangarLiveView.rtc && hangarLiveView.rtc.video;
  if (!v || !v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  const d = g.getImageData(c.width / 4, c.height / 4, c.width / 2, c.height / 2).data;
  let r = 0, gr = 0, b = 0;
  for (let i = 0; i < d.length; i += 4) { r += d[i]; gr += d[i + 1]; b += d[i + 2]; }
  const n = d.length / 4;
  return [Math.round(r / n), Math.round(gr / n), Math.round(b / n), v.videoWidth, v.videoHeight];
})()`

func sample(ctx context.Context, t *testing.T, d *cdp) []int {
	t.Helper()
	raw, err := d.evalAsync(ctx, sampleJS)
	if err != nil {
		t.Fatal(err)
	}
	var v []int
	_ = json.Unmarshal([]byte(raw), &v)
	return v
}

func near(got []int, want color.RGBA) bool {
	if len(got) < 3 {
		return false
	}
	d := func(a int, b uint8) int {
		if a > int(b) {
			return a - int(b)
		}
		return int(b) - a
	}
	return d(got[0], want.R) < 24 && d(got[1], want.G) < 24 && d(got[2], want.B) < 24
}

func solid(c color.RGBA) func(x, y int) color.RGBA {
	return func(int, int) color.RGBA { return c }
}

// TestWebRTCViewInChromium: headless Chromium opens the live view, which
// picks WebRTC and negotiates it through the embedded TURN server with ICE
// restricted to relay candidates; the video it decodes follows the VNC
// server's screen (checked by drawing frames to a canvas), keys typed into
// the page reach the VNC server over the data channel, and killing the
// encoder makes the page fall back to noVNC, which keeps working, while no
// new encoder is started.
func TestWebRTCViewInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	htestutil.Require(t, err == nil, "chromium is not installed (apt-get install chromium)")
	r := newRTCEnv(t)
	red := color.RGBA{R: 200, G: 30, B: 30, A: 255}
	r.vnc.SetScreen(solid(red))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	u := r.url("http", "sess-1", "", r.token("sess-1", false, time.Minute), url.Values{"ice": {"relay"}, "webrtc_timeout": {"15000"}})
	dir := startChromium(t, chromium, "--window-size=800,600", "--autoplay-policy=no-user-gesture-required", u)
	d, err := attachCDP(ctx, dir, "/live/sess-1")
	if err != nil {
		t.Fatal(err)
	}
	defer d.c.CloseNow()

	d.waitJS(ctx, t, `!!window.hangarLiveView && hangarLiveView.transport === 'webrtc' && hangarLiveView.state === 'connected'`, "webrtc view connects")
	// Only relay candidates were allowed, so the pair in use is a relay
	// of the embedded TURN server.
	pair, err := d.evalAsync(ctx, `(async () => {
	  const st = await hangarLiveView.rtc.pc.getStats();
	  let out = null;
	  st.forEach((s) => {
	    if (s.type === 'transport' && s.selectedCandidatePairId) {
	      const p = st.get(s.selectedCandidatePairId);
	      out = {local: st.get(p.localCandidateId).candidateType, remote: st.get(p.remoteCandidateId).candidateType};
	    }
	  });
	  return JSON.stringify(out);
	})()`)
	if err != nil || !strings.Contains(pair, `\"local\":\"relay\"`) {
		t.Fatalf("selected candidate pair %s (%v), want a local relay candidate", pair, err)
	}
	if n := r.turn.Allocations("sess-1"); n < 1 {
		t.Fatalf("TURN server holds %d allocations for the session", n)
	}

	// Frames follow the screen.
	var got []int
	for !near(got, red) {
		if ctx.Err() != nil {
			t.Fatalf("decoded frame colour %v, want about %v", got, red)
		}
		got = sample(ctx, t, d)
		time.Sleep(100 * time.Millisecond)
	}
	if got[3] != 320 || got[4] != 200 {
		t.Fatalf("video is %dx%d, want the screen's 320x200", got[3], got[4])
	}
	framesBefore := testutil.ToFloat64(r.metrics.Frames)
	blue := color.RGBA{R: 20, G: 60, B: 210, A: 255}
	changed := time.Now()
	r.vnc.SetScreen(solid(blue))
	for !near(got, blue) {
		if ctx.Err() != nil {
			t.Fatalf("after the screen changed the decoded colour is %v, want about %v", got, blue)
		}
		got = sample(ctx, t, d)
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("screen change visible in the page after %v (decoded colour %v)", time.Since(changed).Round(time.Millisecond), got[:3])
	if f := testutil.ToFloat64(r.metrics.Frames); f <= framesBefore {
		t.Fatalf("frames sent %v, want more than %v after a change", f, framesBefore)
	}
	// A static screen costs (almost) no frames.
	time.Sleep(300 * time.Millisecond)
	idle, idleBytes := testutil.ToFloat64(r.metrics.Frames), testutil.ToFloat64(r.metrics.Bytes)
	time.Sleep(2 * time.Second)
	if f := testutil.ToFloat64(r.metrics.Frames); f-idle > 2 {
		t.Fatalf("%v frames sent in 2 s of a static screen", f-idle)
	}

	t.Logf("static screen: %v frames, %.0f bytes/s", testutil.ToFloat64(r.metrics.Frames)-idle, (testutil.ToFloat64(r.metrics.Bytes)-idleBytes)/2)

	// "Typing": a bar grows across the screen ten times a second, the
	// damage of a line of text appearing.
	f0, b0, t0 := testutil.ToFloat64(r.metrics.Frames), testutil.ToFloat64(r.metrics.Bytes), time.Now()
	for i := 1; i <= 20; i++ {
		w := 12 * i
		r.vnc.SetScreen(func(x, y int) color.RGBA {
			if y >= 90 && y < 110 && x < w && x%12 < 9 {
				return color.RGBA{R: 240, G: 240, B: 240, A: 255}
			}
			return blue
		})
		time.Sleep(100 * time.Millisecond)
	}
	secs := time.Since(t0).Seconds()
	var hm dto.Metric
	_ = r.metrics.EncodeSeconds.Write(&hm)
	t.Logf("typing: %.1f frames/s, %.0f bytes/s; mean encode time %.1f ms over %d frames",
		(testutil.ToFloat64(r.metrics.Frames)-f0)/secs, (testutil.ToFloat64(r.metrics.Bytes)-b0)/secs,
		1000*hm.GetHistogram().GetSampleSum()/float64(max(hm.GetHistogram().GetSampleCount(), 1)), hm.GetHistogram().GetSampleCount())

	// Keys typed in the page reach the VNC server through the data channel.
	for _, ev := range []map[string]any{
		{"type": "keyDown", "key": "q", "code": "KeyQ", "text": "q", "windowsVirtualKeyCode": 81},
		{"type": "keyUp", "key": "q", "code": "KeyQ", "windowsVirtualKeyCode": 81},
	} {
		if err := d.call(ctx, "Input.dispatchKeyEvent", ev, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.vnc.WaitFor(ctx, func(m []rfbtest.Message) bool {
		for _, x := range m {
			if down, sym := x.Key(); x.Type == 4 && !down && sym == 'q' {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatalf("typed key never reached the VNC server: %v", err)
	}
	if s := testutil.ToFloat64(r.metrics.Sessions.WithLabelValues("webrtc")); s != 1 {
		t.Fatalf("webrtc sessions gauge %v, want 1", s)
	}

	// The encoder dies: the page falls back to noVNC and goes on.
	pids := r.encoders()
	t.Logf("%d encoder(s) started so far (a new one per key-frame request or large bandwidth change)", len(pids))
	if err := syscall.Kill(pids[len(pids)-1], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.waitJS(ctx, t, `hangarLiveView.transport === 'vnc' && hangarLiveView.state === 'connected' && hangarLiveView.fallbacks === 1`, "fallback to noVNC")
	if f := testutil.ToFloat64(r.metrics.Fallbacks.WithLabelValues("encoder")); f != 1 {
		t.Fatalf("encoder fallbacks %v, want 1", f)
	}
	if s := testutil.ToFloat64(r.metrics.Sessions.WithLabelValues("vnc")); s != 1 {
		t.Fatalf("vnc sessions gauge %v, want 1", s)
	}
	time.Sleep(time.Second)
	if n := len(r.encoders()); n != len(pids) {
		t.Fatalf("%d encoders started after the kill; a dead encoder must not be restarted", n-len(pids))
	}
	r.assertNoSecrets(t)
}

// assertNoSecrets checks the daemon's log for every token issued.
func (r *rtcEnv) assertNoSecrets(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.env.mu.Lock()
	defer r.env.mu.Unlock()
	logs := r.env.logs.String()
	for _, tok := range r.env.tokens {
		if strings.Contains(logs, tok) {
			t.Fatal("a live-view token appears in the log")
		}
	}
}

// TestWebRTCSignallingRefusals: the signalling websocket takes the same
// token as the VNC one: a token of another session, a forged one and an
// ended session are refused before any upgrade, and without the WebRTC
// transport configured the route does not exist.
func TestWebRTCSignallingRefusals(t *testing.T) {
	r := newRTCEnv(t)
	ctx := ctxT(t, 10*time.Second)
	status := func(e *env, session, token string) int {
		_, resp, err := websocket.Dial(ctx, e.url("ws", session, "webrtc", token, nil), nil)
		if err == nil {
			t.Fatalf("signalling for %s opened", session)
		}
		if resp == nil {
			t.Fatalf("no HTTP answer: %v", err)
		}
		return resp.StatusCode
	}
	if s := status(r.env, "sess-2", r.token("sess-1", false, time.Minute)); s != http.StatusForbidden {
		t.Fatalf("token of another session: status %d, want 403", s)
	}
	if s := status(r.env, "sess-1", "forged"); s != http.StatusForbidden {
		t.Fatalf("forged token: status %d, want 403", s)
	}
	r.alive.Store(false)
	if s := status(r.env, "sess-1", r.token("sess-1", false, time.Minute)); s != http.StatusGone {
		t.Fatalf("ended session: status %d, want 410", s)
	}
	plain := newEnv(t, nil)
	if s := status(plain, "sess-1", plain.token("sess-1", false, time.Minute)); s != http.StatusNotFound {
		t.Fatalf("without WebRTC: status %d, want 404", s)
	}
	if n := r.dials.Load(); n != 0 {
		t.Fatalf("%d VNC dials for refused signalling", n)
	}
	r.assertNoSecrets(t)
}

// TestWebRTCViewOnlyDropsInput: a view-only viewer gets video, but input
// it sends on the data channel (written straight to the channel here, as a
// modified page would) never reaches the VNC server; the daemon counts it
// as dropped, which also proves it arrived.
func TestWebRTCViewOnlyDropsInput(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	htestutil.Require(t, err == nil, "chromium is not installed (apt-get install chromium)")
	r := newRTCEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	u := r.url("http", "sess-1", "", r.token("sess-1", true, time.Minute), url.Values{"ice": {"relay"}, "webrtc_timeout": {"15000"}})
	dir := startChromium(t, chromium, "--window-size=800,600", "--autoplay-policy=no-user-gesture-required", u)
	d, err := attachCDP(ctx, dir, "/live/sess-1")
	if err != nil {
		t.Fatal(err)
	}
	defer d.c.CloseNow()
	d.waitJS(ctx, t, `!!window.hangarLiveView && hangarLiveView.transport === 'webrtc' && hangarLiveView.state === 'connected'`, "view-only webrtc view connects")
	d.waitJS(ctx, t, `hangarLiveView.rtc.dc.readyState === 'open'`, "data channel opens")
	if _, err := d.evalAsync(ctx, `(() => {
	  const dc = hangarLiveView.rtc.dc;
	  for (const m of [{t:'key',down:true,keysym:113},{t:'key',down:false,keysym:113},{t:'ptr',x:5,y:5,buttons:1},{t:'paste',text:'x'}]) dc.send(JSON.stringify(m));
	  return true;
	})()`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(r.metrics.InputDropped) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("daemon dropped %v input messages, want 4", testutil.ToFloat64(r.metrics.InputDropped))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, m := range r.vnc.Messages() {
		if m.Type == 4 || m.Type == 5 || m.Type == 6 {
			t.Fatalf("view-only input reached the VNC server: type %d", m.Type)
		}
	}
}

// TestWebRTCSignallingHelloAndSessionEnd: the first signalling message
// carries the screen size and a TURN credential naming this session (and
// never the live-view token); ending the session closes the signalling
// websocket with the "session ended" code the page stops on.
func TestWebRTCSignallingHelloAndSessionEnd(t *testing.T) {
	r := newRTCEnv(t)
	ctx := ctxT(t, 20*time.Second)
	tok := r.token("sess-1", false, time.Minute)
	c, _, err := websocket.Dial(ctx, r.url("ws", "sess-1", "webrtc", tok, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	_, raw, err := c.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var hello struct {
		Type       string
		Width      int
		Height     int
		ICEServers []webrtc.ICEServer
	}
	if err := json.Unmarshal(raw, &hello); err != nil {
		t.Fatal(err)
	}
	if hello.Type != "hello" || hello.Width != 320 || hello.Height != 200 || len(hello.ICEServers) != 1 {
		t.Fatalf("hello %+v", hello)
	}
	if u := hello.ICEServers[0].Username; !strings.HasSuffix(u, ":sess-1") {
		t.Fatalf("TURN user %q does not name the session", u)
	}
	if strings.Contains(string(raw), tok) {
		t.Fatal("the live-view token is in the signalling hello")
	}
	r.lv.EndSession("sess-1")
	_, _, err = c.Read(ctx)
	if got := websocket.CloseStatus(err); got != closeSessionEnded {
		t.Fatalf("after EndSession: %v (status %d), want close %d", err, got, closeSessionEnded)
	}
	r.assertNoSecrets(t)
}

// TestWebRTCSwitch: the page's switch moves a connected WebRTC view to
// noVNC and back, each time ending the other transport's connection.
func TestWebRTCSwitch(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	htestutil.Require(t, err == nil, "chromium is not installed (apt-get install chromium)")
	r := newRTCEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	u := r.url("http", "sess-1", "", r.token("sess-1", false, time.Minute), url.Values{"ice": {"relay"}, "webrtc_timeout": {"15000"}})
	dir := startChromium(t, chromium, "--window-size=800,600", "--autoplay-policy=no-user-gesture-required", u)
	d, err := attachCDP(ctx, dir, "/live/sess-1")
	if err != nil {
		t.Fatal(err)
	}
	defer d.c.CloseNow()
	gauge := func(tr string) float64 { return testutil.ToFloat64(r.metrics.Sessions.WithLabelValues(tr)) }
	waitGauge := func(tr string, want float64) {
		t.Helper()
		for gauge(tr) != want {
			if ctx.Err() != nil {
				t.Fatalf("%s sessions %v, want %v", tr, gauge(tr), want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	d.waitJS(ctx, t, `!!window.hangarLiveView && hangarLiveView.transport === 'webrtc' && hangarLiveView.state === 'connected'`, "webrtc view connects")
	if _, err := d.evalAsync(ctx, `document.getElementById('switch').click(), true`); err != nil {
		t.Fatal(err)
	}
	d.waitJS(ctx, t, `hangarLiveView.transport === 'vnc' && hangarLiveView.state === 'connected' && !hangarLiveView.rtc`, "switch to noVNC")
	waitGauge("webrtc", 0)
	waitGauge("vnc", 1)
	if _, err := d.evalAsync(ctx, `document.getElementById('switch').click(), true`); err != nil {
		t.Fatal(err)
	}
	d.waitJS(ctx, t, `hangarLiveView.transport === 'webrtc' && hangarLiveView.state === 'connected' && !hangarLiveView.rfb`, "switch back to WebRTC")
	waitGauge("vnc", 0)
	waitGauge("webrtc", 1)
	if f := testutil.ToFloat64(r.metrics.Fallbacks.WithLabelValues("connect")); f != 0 {
		t.Fatalf("a switch by hand counted as %v fallbacks", f)
	}
}
