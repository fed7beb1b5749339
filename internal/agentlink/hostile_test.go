package agentlink_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/agenttest"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// hostileAgent is a guest that replaced hangar-agent with its own program
// (see package agenttest).
type hostileAgent struct {
	client *agentlink.Client
	sess   *yamux.Session // the guest's side
}

func startHostile(t *testing.T, h http.Handler) *hostileAgent {
	a := agenttest.Start(t, h)
	return &hostileAgent{client: a.Client, sess: a.Session}
}

// countingWriter counts what the host copied out of the link.
type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// TestGetFileCapIsTheHosts: an agent that ignores the size cap the host
// asked for (with or without announcing the length) gets a "too large"
// error after at most cap+1 bytes, not a copy of everything it sends.
func TestGetFileCapIsTheHosts(t *testing.T) {
	const sent = 8 << 20
	chunk := make([]byte, 64<<10)
	ha := startHostile(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("announce") != "" {
			w.Header().Set("Content-Length", fmt.Sprint(sent))
		}
		w.WriteHeader(http.StatusOK)
		for n := 0; n < sent; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	const limit = 1 << 20
	for _, path := range []string{"/announced?announce=1", "/chunked"} {
		ctx := ctxT(t, 20*time.Second)
		var cw countingWriter
		_, err := ha.client.GetFile(ctx, path, limit, &cw)
		if !errors.Is(err, agentlink.ErrTooLarge) {
			t.Fatalf("%s: GetFile = %v, want ErrTooLarge", path, err)
		}
		if cw.n > limit+1 {
			t.Fatalf("%s: host copied %d bytes past a cap of %d", path, cw.n, limit)
		}
	}
	// A file within the cap is still copied whole.
	var cw countingWriter
	if _, err := ha.client.GetFile(ctxT(t, 20*time.Second), "/x?announce=1", sent, &cw); err != nil || cw.n != sent {
		t.Fatalf("GetFile within the cap = %d bytes, %v", cw.n, err)
	}
}

// TestGuestJSONIsCapped: answers, events and log lines larger than
// MaxJSONBytes are refused as too large rather than decoded into memory.
func TestGuestJSONIsCapped(t *testing.T) {
	huge := `"` + strings.Repeat("a", 3*agentlink.MaxJSONBytes) + `"`
	ha := startHostile(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case proto.PathHealth:
			io.WriteString(w, `{"version":`+huge+`}`)
		case proto.PathEvents:
			io.WriteString(w, `{"type":"hello"}`+"\n")
			io.WriteString(w, `{"type":`+huge+"}\n")
		case proto.PathLogs:
			io.WriteString(w, `{"line":"ok"}`+"\n\n")
			io.WriteString(w, `{"line":`+huge+"}\n")
		}
	}))
	ctx := ctxT(t, 20*time.Second)
	if _, err := ha.client.Health(ctx); !errors.Is(err, agentlink.ErrTooLarge) {
		t.Fatalf("Health = %v, want ErrTooLarge", err)
	}
	ch, err := ha.client.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []proto.Event
	for ev := range ch {
		got = append(got, ev)
	}
	if len(got) != 1 || got[0].Type != "hello" {
		t.Fatalf("events = %+v, want only the small hello", got)
	}
	var lines []string
	err = ha.client.Logs(ctx, proto.LogsRequest{}, func(l proto.LogLine) error {
		lines = append(lines, l.Line)
		return nil
	})
	if !errors.Is(err, agentlink.ErrTooLarge) || len(lines) != 1 || lines[0] != "ok" {
		t.Fatalf("Logs = %q, %v; want [ok] and ErrTooLarge", lines, err)
	}
}

// TestGuestResponseHeadersAreCapped: a status line or header that never
// ends is refused after MaxResponseHeaderBytes, for plain calls and for the
// upgrades exec and port forwarding use.
func TestGuestResponseHeadersAreCapped(t *testing.T) {
	ha := startHostile(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == proto.PathHealth {
			w.Header().Set("X-Junk", strings.Repeat("j", 2*agentlink.MaxResponseHeaderBytes))
			io.WriteString(w, "{}")
			return
		}
		conn, bw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nX-Junk: ")
		line := strings.Repeat("j", 64<<10)
		for i := 0; i < 256; i++ { // 16 MiB of one header line, never ended
			if _, err := bw.WriteString(line); err != nil {
				return
			}
		}
		bw.Flush()
		time.Sleep(30 * time.Second)
	}))
	ctx := ctxT(t, 20*time.Second)
	if _, err := ha.client.Health(ctx); err == nil || !strings.Contains(err.Error(), "header") {
		t.Fatalf("Health with a huge header = %v, want refused", err)
	}
	_, err := ha.client.StartExec(ctx, proto.ExecRequest{Argv: []string{"true"}})
	if !errors.Is(err, agentlink.ErrTooLarge) {
		t.Fatalf("StartExec with an endless header = %v, want ErrTooLarge", err)
	}
	if _, err := ha.client.DialPort(ctx, 5900); !errors.Is(err, agentlink.ErrTooLarge) {
		t.Fatalf("DialPort with an endless header = %v, want ErrTooLarge", err)
	}
}

// readClosed reports whether the host closed the guest's stream within d.
func readClosed(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// TestGuestOpenedStreamsAreBounded: streams the guest opens are closed
// unless they name a reverse forward the host asked for, and reverse
// forwards are limited in number, name length, header and body size.
func TestGuestOpenedStreamsAreBounded(t *testing.T) {
	ha := startHostile(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "{}") // the reverse request is accepted
	}))
	// No reverse forward asked for: the stream is closed at once.
	st, err := ha.sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(st, proto.ReverseMagic+"dev-oauth\n")
	if !readClosed(st, 5*time.Second) {
		t.Fatal("a stream for an unrequested reverse forward stayed open")
	}

	var bodyErr error
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, bodyErr = io.ReadAll(r.Body)
		if bodyErr != nil {
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
			return
		}
		io.WriteString(w, "ok")
	})
	ctx := ctxT(t, 30*time.Second)
	if err := ha.client.Reverse(ctx, "127.0.0.1:1", "dev-oauth", agentlink.ServeHTTPReverse(h)); err != nil {
		t.Fatal(err)
	}
	open := func() net.Conn {
		st, err := ha.sess.Open()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(st, proto.ReverseMagic+"dev-oauth\n")
		return st
	}
	status := func(st net.Conn, req string) string {
		defer st.Close()
		go io.WriteString(st, req)
		_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(st).ReadString('\n')
		return strings.TrimSpace(line)
	}
	if s := status(open(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); s != "HTTP/1.1 200 OK" {
		t.Fatalf("plain request: %q", s)
	}
	bigHeader := "GET / HTTP/1.1\r\nHost: x\r\nX-Junk: " + strings.Repeat("j", 1<<20) + "\r\n\r\n"
	if s := status(open(), bigHeader); !strings.Contains(s, "431") {
		t.Fatalf("1 MiB header: %q, want 431", s)
	}
	bigBody := fmt.Sprintf("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", 4<<20, strings.Repeat("b", 4<<20))
	if s := status(open(), bigBody); !strings.Contains(s, "413") || bodyErr == nil {
		t.Fatalf("4 MiB body: %q (handler saw %v), want 413", s, bodyErr)
	}

	// A name line that never ends is cut off.
	st, err = ha.sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	go io.WriteString(st, proto.ReverseMagic+strings.Repeat("n", 1<<20))
	if !readClosed(st, 5*time.Second) {
		t.Fatal("an endless reverse name line was not cut off")
	}

}

// TestReverseConnectionCap: MaxReverseConns connections the guest keeps
// open are served; the next one is closed at once.
func TestReverseConnectionCap(t *testing.T) {
	ha := startHostile(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "{}")
	}))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	if err := ha.client.Reverse(ctxT(t, 10*time.Second), "127.0.0.1:1", "dev-oauth", agentlink.ServeHTTPReverse(h)); err != nil {
		t.Fatal(err)
	}
	open := func() net.Conn {
		st, err := ha.sess.Open()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(st, proto.ReverseMagic+"dev-oauth\n")
		return st
	}
	// MaxReverseConns kept-alive connections are kept; the next one is
	// closed. (Each is used once so the host has surely taken it.)
	var idle []net.Conn
	for i := 0; i < agentlink.MaxReverseConns; i++ {
		c := open()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if line, _ := bufio.NewReader(c).ReadString('\n'); !strings.Contains(line, "200") {
			t.Fatalf("reverse connection %d: %q", i, line)
		}
		idle = append(idle, c)
	}
	extra := open()
	if !readClosed(extra, 5*time.Second) {
		t.Fatalf("reverse connection %d past the limit stayed open", agentlink.MaxReverseConns+1)
	}
	if readClosed(idle[0], 200*time.Millisecond) {
		t.Fatal("a connection within the limit was closed")
	}
	for _, c := range idle {
		c.Close()
	}
}

// TestOpenFileStreams: OpenFile hands back the content as it arrives (no
// staging), and a body that ends short of its announced size is an error.
func TestOpenFileStreams(t *testing.T) {
	release := make(chan struct{})
	ha := startHostile(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(1<<20))
		w.Header().Set(proto.HeaderMode, "600")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "first bytes")
		w.(http.Flusher).Flush()
		<-release // then the agent dies without sending the rest
	}))
	ctx := ctxT(t, 20*time.Second)
	body, st, err := ha.client.OpenFile(ctx, "/big", 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if st.Size != 1<<20 || st.Mode != 0o600 {
		t.Fatalf("stat = %+v", st)
	}
	buf := make([]byte, len("first bytes"))
	if _, err := io.ReadFull(body, buf); err != nil || string(buf) != "first bytes" {
		t.Fatalf("first read = %q, %v; want the bytes sent so far", buf, err)
	}
	close(release)
	if _, err := io.Copy(io.Discard, body); err == nil {
		t.Fatal("a body cut short of its announced size read as complete")
	}
}

// TestCallsEndWithTheirContextOnAHungAgent: an agent that takes a request
// and never answers (a hung guest; its session stays up) does not hold a
// call past its context. yamux's Close is only a half-close, so a call
// that merely closed its stream kept waiting for an answer until the
// whole session died.
func TestCallsEndWithTheirContextOnAHungAgent(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	ha := startHostile(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-hang // ignores the request's context, as a frozen guest does
	}))
	for name, call := range map[string]func(ctx context.Context) error{
		"exec": func(ctx context.Context) error {
			_, err := ha.client.Exec(ctx, proto.ExecRequest{Argv: []string{"true"}}, nil, nil, nil)
			return err
		},
		"port": func(ctx context.Context) error { _, err := ha.client.DialPort(ctx, 5900); return err },
		"get":  func(ctx context.Context) error { _, err := ha.client.Health(ctx); return err },
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		began := time.Now()
		err := call(ctx)
		cancel()
		if err == nil || time.Since(began) > 3*time.Second {
			t.Fatalf("%s against a hung agent: %v after %v; want an error soon after 300ms", name, err, time.Since(began))
		}
	}
}
