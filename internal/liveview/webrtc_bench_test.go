package liveview

import (
	"context"
	"fmt"
	"image/color"
	"net"
	"net/url"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// countingConn counts bytes the daemon reads from the VNC server.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// waitColourJS resolves once the view (WebRTC video or noVNC canvas) shows
// about the given colour in its middle, checking every animation frame.
const waitColourJS = `new Promise((resolve) => {
  const want = [%d, %d, %d];
  const c = document.createElement('canvas');
  const g = c.getContext('2d', { willReadFrequently: true });
  const check = () => {
    const v = hangarLiveView.rtc && hangarLiveView.rtc.video;
    const src = v || document.querySelector('#screen canvas');
    const w = v ? v.videoWidth : src.width, h = v ? v.videoHeight : src.height;
    if (w) {
      c.width = w; c.height = h;
      g.drawImage(src, 0, 0);
      const d = g.getImageData(w / 2, h / 2, 1, 1).data;
      if (Math.abs(d[0] - want[0]) < 24 && Math.abs(d[1] - want[1]) < 24 && Math.abs(d[2] - want[2]) < 24) { resolve(true); return; }
    }
    requestAnimationFrame(check);
  };
  check();
})`

// BenchmarkLiveViewTransports compares WebRTC and noVNC side by side on
// the fake VNC server (320x200): the glass-to-glass proxy (a screen change
// on the server until the changed frame is decoded and drawable in the
// page; ms/change), and bytes a second for a static and a "typing" screen.
// For WebRTC the bytes are encoded video sent; for noVNC they are what the
// VNC server sent through the bridge — the fake answers every change with
// the whole screen in Raw encoding, where x11vnc would send compressed
// damage, so noVNC's byte figures here are an upper bound.
func BenchmarkLiveViewTransports(b *testing.B) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		b.Skip("chromium is not installed")
	}
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		b.Skip("ffmpeg is not installed")
	}
	for _, transport := range []string{"webrtc", "vnc"} {
		b.Run(transport, func(b *testing.B) {
			r := newRTCEnvTB(b)
			var vncBytes atomic.Int64
			dial := r.lv.opts.Dial
			r.lv.opts.Dial = func(ctx context.Context, s string, c Claims) (net.Conn, error) {
				conn, err := dial(ctx, s, c)
				if err != nil {
					return nil, err
				}
				return countingConn{conn, &vncBytes}, nil
			}
			bytes := func() float64 {
				if transport == "webrtc" {
					return testutil.ToFloat64(r.metrics.Bytes)
				}
				return float64(vncBytes.Load())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			u := r.url("http", "sess-1", "", r.token("sess-1", false, time.Minute), url.Values{"transport": {transport}, "webrtc_timeout": {"15000"}})
			dir := startChromium(b, chromium, "--window-size=800,600", "--autoplay-policy=no-user-gesture-required", u)
			d, err := attachCDP(ctx, dir, "/live/sess-1")
			if err != nil {
				b.Fatal(err)
			}
			defer d.c.CloseNow()
			for {
				v, _ := d.eval(ctx, `!!window.hangarLiveView && hangarLiveView.transport === '`+transport+`' && hangarLiveView.state === 'connected'`)
				if v == "true" {
					break
				}
				if ctx.Err() != nil {
					b.Fatal("view never connected")
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(time.Second)
			b.ResetTimer()
			var total time.Duration
			for i := 0; i < b.N; i++ {
				c := color.RGBA{R: uint8(40 + 60*(i%3)), G: uint8(200 - 70*(i%3)), B: uint8(90 + 50*(i%2)), A: 255}
				start := time.Now()
				r.vnc.SetScreen(solid(c))
				if _, err := d.evalAsync(ctx, fmt.Sprintf(waitColourJS, c.R, c.G, c.B)); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
			}
			b.StopTimer()
			b.Logf("N=%d: %v frames sent, %d encoders", b.N, testutil.ToFloat64(r.metrics.Frames), len(r.encoders()))
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/change")
			time.Sleep(500 * time.Millisecond)
			b0 := bytes()
			time.Sleep(2 * time.Second)
			b.ReportMetric((bytes()-b0)/2, "idle-B/s")
			b0, t0 := bytes(), time.Now()
			for i := 1; i <= 20; i++ {
				w := 12 * i
				r.vnc.SetScreen(func(x, y int) color.RGBA {
					if y >= 90 && y < 110 && x < w && x%12 < 9 {
						return color.RGBA{R: 240, G: 240, B: 240, A: 255}
					}
					return color.RGBA{R: 20, G: 60, B: 210, A: 255}
				})
				time.Sleep(100 * time.Millisecond)
			}
			b.ReportMetric((bytes()-b0)/time.Since(t0).Seconds(), "typing-B/s")
		})
	}
}
