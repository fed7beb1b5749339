package liveview

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/hangar-vm/hangar/internal/liveview/rfb"
	"github.com/hangar-vm/hangar/internal/liveview/rfbtest"
)

// env is a live-view handler on a real HTTP server, bridged to a fake VNC
// server, with every issued token remembered so the logs can be checked
// for them.
type env struct {
	t      testing.TB
	lv     *Server
	http   *httptest.Server
	signer *Signer
	vnc    *rfbtest.Server
	alive  atomic.Bool
	dials  atomic.Int32
	// mu guards claims, tokens and logs.
	mu     sync.Mutex
	claims []Claims
	tokens []string
	logs   bytes.Buffer
}

type lockedWriter struct{ e *env }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.e.mu.Lock()
	defer w.e.mu.Unlock()
	return w.e.logs.Write(p)
}

func newEnv(t testing.TB, mutate func(*Options)) *env {
	t.Helper()
	e := &env{t: t, signer: NewSigner(), vnc: rfbtest.New(320, 200, "fake browser")}
	e.alive.Store(true)
	opts := Options{
		Signer: e.signer,
		Dial: func(ctx context.Context, sessionID string, c Claims) (net.Conn, error) {
			e.dials.Add(1)
			e.mu.Lock()
			e.claims = append(e.claims, c)
			e.mu.Unlock()
			if sessionID == "unreachable" {
				return nil, errors.New("agent link down")
			}
			return e.vnc.Pipe(), nil
		},
		Alive:         func(ctx context.Context, sessionID string) bool { return e.alive.Load() },
		Log:           slog.New(slog.NewTextHandler(lockedWriter{e}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		AliveInterval: 50 * time.Millisecond,
	}
	if mutate != nil {
		mutate(&opts)
	}
	e.lv = Handler(opts)
	mux := http.NewServeMux()
	mux.Handle(Prefix, e.lv)
	e.http = httptest.NewServer(mux)
	t.Cleanup(func() {
		e.lv.Close()
		e.http.Close()
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, tok := range e.tokens {
			if strings.Contains(e.logs.String(), tok) {
				t.Errorf("a token appears in the logs:\n%s", e.logs.String())
			}
		}
	})
	return e
}

func (e *env) token(session string, viewOnly bool, ttl time.Duration) string {
	tok := e.signer.Issue(session, "owner-1", viewOnly, ttl)
	e.mu.Lock()
	e.tokens = append(e.tokens, tok)
	e.mu.Unlock()
	return tok
}

func (e *env) url(scheme, session, sub, token string, extra url.Values) string {
	q := url.Values{"token": {token}}
	for k, v := range extra {
		q[k] = v
	}
	u := strings.Replace(e.http.URL, "http", scheme, 1) + Prefix + session
	if sub != "" {
		u += "/" + sub
	}
	return u + "?" + q.Encode()
}

// view connects an rfb client through the websocket endpoint.
func (e *env) view(ctx context.Context, session, token string, extra url.Values) (*rfb.Client, net.Conn, error) {
	conn, err := rfb.DialWebsocket(ctx, e.url("ws", session, "ws", token, extra))
	if err != nil {
		return nil, nil, err
	}
	c, err := rfb.Handshake(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	e.t.Cleanup(func() { _ = c.Close() })
	return c, conn, nil
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// drive sends one of each input message and then takes a screenshot, which
// also proves that everything sent before it has reached the server (the
// stream is ordered).
func drive(t *testing.T, ctx context.Context, c *rfb.Client, vnc *rfbtest.Server) {
	t.Helper()
	if err := c.Type(ctx, "Hi"); err != nil {
		t.Fatal(err)
	}
	if err := c.Click(ctx, 100, 50); err != nil {
		t.Fatal(err)
	}
	if err := c.CutText(ctx, "clipboard"); err != nil {
		t.Fatal(err)
	}
	if err := c.Key(ctx, rfb.KeyReturn); err != nil {
		t.Fatal(err)
	}
	img, err := c.Screenshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds().Dx() != 320 || img.Bounds().Dy() != 200 {
		t.Fatalf("screenshot %v", img.Bounds())
	}
	for _, p := range [][2]int{{0, 0}, {319, 199}, {123, 45}} {
		if got, want := img.RGBAAt(p[0], p[1]), vnc.Pixel(p[0], p[1]); got != want {
			t.Fatalf("pixel %v = %v, want %v", p, got, want)
		}
	}
}

func countTypes(msgs []rfbtest.Message) map[byte]int {
	n := map[byte]int{}
	for _, m := range msgs {
		n[m.Type]++
	}
	return n
}

func TestInteractiveViewCarriesInput(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t, 10*time.Second)
	c, _, err := e.view(ctx, "sess-1", e.token("sess-1", false, time.Minute), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Width != 320 || c.Height != 200 || c.Name != "fake browser" {
		t.Fatalf("server init through the bridge: %dx%d %q", c.Width, c.Height, c.Name)
	}
	drive(t, ctx, c, e.vnc)
	msgs := e.vnc.Messages()
	n := countTypes(msgs)
	// "Hi": Shift down, H down, H up, Shift up, i down, i up; Return: 2.
	if n[4] != 8 || n[5] != 3 || n[6] != 1 || n[3] != 1 {
		t.Fatalf("server received %v", n)
	}
	var syms []uint32
	for _, m := range msgs {
		if m.Type == 4 {
			if down, s := m.Key(); down {
				syms = append(syms, s)
			}
		}
	}
	if len(syms) != 4 || syms[0] != rfb.KeyShiftL || syms[1] != 'H' || syms[2] != 'i' || syms[3] != rfb.KeyReturn {
		t.Fatalf("key presses %x", syms)
	}
	e.mu.Lock()
	got := e.claims
	e.mu.Unlock()
	if len(got) != 1 || got[0].OwnerID != "owner-1" || got[0].ViewOnly {
		t.Fatalf("Dial got claims %+v", got)
	}
	if v := e.lv.Viewers("sess-1"); v != 1 {
		t.Fatalf("viewers %d, want 1", v)
	}
}

func TestViewOnlyDropsInput(t *testing.T) {
	cases := map[string]struct {
		viewOnlyToken bool
		query         url.Values
	}{
		"view-only token":                  {true, nil},
		"view-only token asking for input": {true, url.Values{"view_only": {"0"}}},
		"interactive token, view_only=1":   {false, url.Values{"view_only": {"1"}}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, nil)
			ctx := ctxT(t, 10*time.Second)
			c, _, err := e.view(ctx, "sess-1", e.token("sess-1", tc.viewOnlyToken, time.Minute), tc.query)
			if err != nil {
				t.Fatal(err)
			}
			drive(t, ctx, c, e.vnc)
			n := countTypes(e.vnc.Messages())
			if n[4] != 0 || n[5] != 0 || n[6] != 0 {
				t.Fatalf("view-only server received input: %v", n)
			}
			if n[0] != 1 || n[2] != 1 || n[3] != 1 {
				t.Fatalf("view-only server did not get the screen requests: %v", n)
			}
		})
	}
}

func TestRefusedTokens(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t, 10*time.Second)
	cases := map[string]struct {
		token  string
		status int
	}{
		"another session's token": {e.token("sess-2", false, time.Minute), http.StatusForbidden},
		"expired token":           {e.token("sess-1", false, -time.Second), http.StatusForbidden},
		"no token":                {"", http.StatusForbidden},
		"garbage":                 {"abc.def", http.StatusForbidden},
	}
	for name, tc := range cases {
		_, _, err := e.view(ctx, "sess-1", tc.token, nil)
		var se *rfb.StatusError
		if !errors.As(err, &se) || se.Code != tc.status {
			t.Errorf("%s: websocket err %v, want status %d", name, err, tc.status)
		}
		res, err := http.Get(e.url("http", "sess-1", "", tc.token, nil))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != tc.status || !strings.Contains(string(body), "live-view link") {
			t.Errorf("%s: page status %d body %q", name, res.StatusCode, body)
		}
	}
	if n := e.dials.Load(); n != 0 {
		t.Fatalf("refused requests dialed the VM %d times", n)
	}
	// The right token still works, so the refusals were about the token.
	if _, _, err := e.view(ctx, "sess-1", e.token("sess-1", false, time.Minute), nil); err != nil {
		t.Fatal(err)
	}
}

func TestEndedSessionRefused(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t, 10*time.Second)
	e.alive.Store(false)
	tok := e.token("sess-1", false, time.Minute)
	_, _, err := e.view(ctx, "sess-1", tok, nil)
	var se *rfb.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusGone {
		t.Fatalf("websocket to an ended session: %v, want 410", err)
	}
	res, err := http.Get(e.url("http", "sess-1", "", tok, nil))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusGone {
		t.Fatalf("page of an ended session: %d", res.StatusCode)
	}
}

// readClose reads from a viewer's connection until it ends and returns the
// error, which carries the websocket close status.
func readClose(t *testing.T, conn net.Conn, within time.Duration) error {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(within))
	buf := make([]byte, 4096)
	for {
		if _, err := conn.Read(buf); err != nil {
			return err
		}
	}
}

func TestSessionEndClosesView(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t, 10*time.Second)
	_, conn, err := e.view(ctx, "sess-1", e.token("sess-1", false, time.Minute), nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e.alive.Store(false)
	err = readClose(t, conn, 5*time.Second)
	if websocket.CloseStatus(err) != closeSessionEnded {
		t.Fatalf("view ended with %v, want close status %d", err, closeSessionEnded)
	}
	if !strings.Contains(err.Error(), "login session ended") {
		t.Fatalf("close reason: %v", err)
	}
	t.Logf("view closed %v after the session ended", time.Since(start))
	waitViewers(t, e.lv, "sess-1", 0)
}

func TestEndSessionClosesAtOnce(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.AliveInterval = time.Hour })
	ctx := ctxT(t, 10*time.Second)
	var conns []net.Conn
	for i := 0; i < 2; i++ {
		_, conn, err := e.view(ctx, "sess-1", e.token("sess-1", i == 1, time.Minute), nil)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	_, other, err := e.view(ctx, "sess-2", e.token("sess-2", false, time.Minute), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitViewers(t, e.lv, "sess-1", 2)
	e.lv.EndSession("sess-1")
	for _, conn := range conns {
		if err := readClose(t, conn, 2*time.Second); websocket.CloseStatus(err) != closeSessionEnded {
			t.Fatalf("viewer ended with %v", err)
		}
	}
	if v := e.lv.Viewers("sess-2"); v != 1 {
		t.Fatalf("the other session has %d viewers, want 1", v)
	}
	_ = other
}

func TestCloseEndsViews(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.AliveInterval = time.Hour })
	ctx := ctxT(t, 10*time.Second)
	tok := e.token("sess-1", false, time.Minute)
	_, conn, err := e.view(ctx, "sess-1", tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { e.lv.Close(); close(done) }()
	// Going away is a clean close for a net.Conn view of the websocket.
	if err := readClose(t, conn, 5*time.Second); !errors.Is(err, io.EOF) {
		t.Fatalf("view ended with %v, want EOF (close 1001)", err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	_, _, err = e.view(ctx, "sess-1", tok, nil)
	var se *rfb.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable {
		t.Fatalf("after Close: %v, want 503", err)
	}
}

func TestViewerLimitAndDialFailure(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxViewers = 2 })
	ctx := ctxT(t, 10*time.Second)
	tok := e.token("sess-1", true, time.Minute)
	for i := 0; i < 2; i++ {
		if _, _, err := e.view(ctx, "sess-1", tok, nil); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err := e.view(ctx, "sess-1", tok, nil)
	var se *rfb.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusTooManyRequests {
		t.Fatalf("third viewer: %v, want 429", err)
	}
	_, _, err = e.view(ctx, "unreachable", e.token("unreachable", false, time.Minute), nil)
	if !errors.As(err, &se) || se.Code != http.StatusBadGateway {
		t.Fatalf("unreachable VM: %v, want 502", err)
	}
}

func waitViewers(t *testing.T, lv *Server, session string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for lv.Viewers(session) != n {
		if time.Now().After(deadline) {
			t.Fatalf("session %s has %d viewers, want %d", session, lv.Viewers(session), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
