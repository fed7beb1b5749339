package netslot

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// targetServer is "the internet": it records the paths it served.
type targetServer struct {
	name  string
	mu    sync.Mutex // guards paths
	paths []string
}

func (s *targetServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.paths = append(s.paths, r.URL.Path)
	s.mu.Unlock()
	fmt.Fprintf(w, "%s %s", s.name, r.URL.Path)
}

func (s *targetServer) saw(path string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.paths {
		if p == path {
			return true
		}
	}
	return false
}

func serveHTTP(t *testing.T, ln net.Listener, h http.Handler) {
	t.Helper()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// startForwarder runs a Forwarder to upstream on loopback and returns the
// credential-free proxy URL a guest would get.
func startForwarder(t *testing.T, upstream *url.URL, opts ForwarderOptions) *url.URL {
	u, _ := startForwarderF(t, upstream, opts)
	return u
}

// startForwarderF is startForwarder that also returns the Forwarder.
func startForwarderF(t *testing.T, upstream *url.URL, opts ForwarderOptions) (*url.URL, *Forwarder) {
	t.Helper()
	opts.Logger = testLogger(t)
	f, err := NewForwarder(upstream, opts)
	if err != nil {
		t.Fatal(err)
	}
	ln := listenLoopback(t)
	go f.Serve(ln)
	t.Cleanup(func() { f.Close() })
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}, f
}

// guestConns is the forwarder's count of open guest connections.
func guestConns(f *Forwarder) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.guests
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func getVia(proxy *url.URL, target string) (*http.Response, string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxy)}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(target)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// connectVia opens a CONNECT tunnel through proxy to target and makes one
// HTTP request over it, as a client does for https (without the TLS).
func connectVia(proxy *url.URL, target, path, extraHeader string) (int, string, error) {
	c, err := net.DialTimeout("tcp", proxy.Host, 5*time.Second)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", target, target, extraHeader)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return 0, "", err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, target)
	resp2, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, "", err
	}
	defer resp2.Body.Close()
	b, err := io.ReadAll(resp2.Body)
	return resp2.StatusCode, string(b), err
}

func TestForwarderHTTPUpstream(t *testing.T) {
	const secret = "s3cret-proxy-pass"
	target := &targetServer{name: "target"}
	tln := listenLoopback(t)
	serveHTTP(t, tln, target)
	up := &testUpstreamHTTP{user: "alice", pass: secret}
	uln := listenLoopback(t)
	serveHTTP(t, uln, up)

	fwd := startForwarder(t, &url.URL{Scheme: "http", User: url.UserPassword("alice", secret), Host: uln.Addr().String()}, ForwarderOptions{})
	if strings.Contains(fwd.String(), secret) {
		t.Fatal("guest proxy URL carries the secret")
	}

	// Plain HTTP through the forwarder.
	resp, body, err := getVia(fwd, "http://"+tln.Addr().String()+"/plain")
	if err != nil {
		t.Fatalf("GET via forwarder: %v", err)
	}
	if resp.StatusCode != 200 || body != "target /plain" || resp.Header.Get("Via") != "1.1 test-upstream" {
		t.Fatalf("GET via forwarder: %d %q via=%q", resp.StatusCode, body, resp.Header.Get("Via"))
	}
	// CONNECT, with a guest-supplied Proxy-Authorization that must not
	// reach the upstream (it would be refused there).
	code, body, err := connectVia(fwd, tln.Addr().String(), "/tunnel", "Proxy-Authorization: Basic Z3Vlc3Q6eA==\r\n")
	if err != nil || code != 200 || body != "target /tunnel" {
		t.Fatalf("CONNECT via forwarder: %d %q %v", code, body, err)
	}
	seen, refused := up.log()
	if refused != 0 || len(seen) != 2 || seen[0] != "GET http://"+tln.Addr().String()+"/plain" || seen[1] != "CONNECT "+tln.Addr().String() {
		t.Fatalf("upstream saw %q, refused %d", seen, refused)
	}
	if !target.saw("/plain") || !target.saw("/tunnel") {
		t.Fatalf("target saw %q", target.paths)
	}

	// Wrong credentials: the guest gets 502 and nothing about the secret.
	bad := startForwarder(t, &url.URL{Scheme: "http", User: url.UserPassword("alice", "wrong-"+secret), Host: uln.Addr().String()}, ForwarderOptions{})
	code, body, err = connectVia(bad, tln.Addr().String(), "/x", "")
	if err != nil || code != http.StatusBadGateway || strings.Contains(body, secret) {
		t.Fatalf("CONNECT with bad upstream credentials: %d %q %v", code, body, err)
	}
	if _, refused := up.log(); refused != 1 {
		t.Fatalf("upstream refused %d times, want 1", refused)
	}
}

func TestForwarderSOCKSUpstream(t *testing.T) {
	const secret = "socks-pa55"
	target := &targetServer{name: "target"}
	tln := listenLoopback(t)
	serveHTTP(t, tln, target)
	up := &testUpstreamSOCKS{user: "bob", pass: secret}
	uln := listenLoopback(t)
	up.serve(uln)

	fwd := startForwarder(t, &url.URL{Scheme: "socks5", User: url.UserPassword("bob", secret), Host: uln.Addr().String()}, ForwarderOptions{})
	resp, body, err := getVia(fwd, "http://"+tln.Addr().String()+"/plain")
	if err != nil || resp.StatusCode != 200 || body != "target /plain" {
		t.Fatalf("GET via socks forwarder: %v %q", err, body)
	}
	code, body, err := connectVia(fwd, tln.Addr().String(), "/tunnel", "")
	if err != nil || code != 200 || body != "target /tunnel" {
		t.Fatalf("CONNECT via socks forwarder: %d %q %v", code, body, err)
	}
	seen, refused := up.log()
	if refused != 0 || len(seen) != 2 || seen[0] != tln.Addr().String() || seen[1] != tln.Addr().String() {
		t.Fatalf("socks upstream saw %q, refused %d", seen, refused)
	}

	bad := startForwarder(t, &url.URL{Scheme: "socks5", User: url.UserPassword("bob", "nope"), Host: uln.Addr().String()}, ForwarderOptions{})
	code, _, err = connectVia(bad, tln.Addr().String(), "/x", "")
	if err != nil || code != http.StatusBadGateway {
		t.Fatalf("CONNECT with bad socks credentials: %d %v", code, err)
	}
	if _, refused := up.log(); refused != 1 {
		t.Fatalf("socks upstream refused %d times, want 1", refused)
	}
}

func TestForwarderAllow(t *testing.T) {
	target := &targetServer{name: "target"}
	tln := listenLoopback(t)
	serveHTTP(t, tln, target)
	up := &testUpstreamHTTP{user: "u", pass: "p"}
	uln := listenLoopback(t)
	serveHTTP(t, uln, up)
	var asked []string
	var mu sync.Mutex
	fwd := startForwarder(t, &url.URL{Scheme: "http", User: url.UserPassword("u", "p"), Host: uln.Addr().String()}, ForwarderOptions{
		Allow: func(host string, port int) bool {
			mu.Lock()
			asked = append(asked, fmt.Sprintf("%s:%d", host, port))
			mu.Unlock()
			return host == "allowed.example"
		},
	})
	code, _, err := connectVia(fwd, tln.Addr().String(), "/x", "")
	if err != nil || code != http.StatusForbidden {
		t.Fatalf("CONNECT to a refused target: %d %v", code, err)
	}
	resp, _, err := getVia(fwd, "http://"+tln.Addr().String()+"/y")
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("GET of a refused target: %v %v", resp, err)
	}
	if seen, _ := up.log(); len(seen) != 0 || len(target.paths) != 0 {
		t.Fatalf("refused requests went out: upstream %q target %q", seen, target.paths)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 2 || asked[0] != tln.Addr().String() {
		t.Fatalf("Allow asked %q", asked)
	}
}

// TestForwarderBoundsTheGuest: a guest cannot make the forwarder hold an
// endless request head, more connections than its cap, or a CONNECT
// tunnel nobody uses.
func TestForwarderBoundsTheGuest(t *testing.T) {
	target := &targetServer{name: "target"}
	tln := listenLoopback(t)
	serveHTTP(t, tln, target)
	up := &testUpstreamHTTP{user: "alice", pass: "pw"}
	uln := listenLoopback(t)
	serveHTTP(t, uln, up)
	fwd, f := startForwarderF(t, &url.URL{Scheme: "http", User: url.UserPassword("alice", "pw"), Host: uln.Addr().String()},
		ForwarderOptions{MaxConns: 3, TunnelIdleTimeout: 300 * time.Millisecond})

	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", fwd.Host, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	status := func(c net.Conn) string {
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil && line == "" {
			return "error: " + err.Error()
		}
		return strings.TrimSpace(line)
	}

	// A 1 MiB header is refused with 431, not read into memory.
	c := dial()
	go fmt.Fprintf(c, "GET http://%s/x HTTP/1.1\r\nHost: x\r\nX-Junk: %s\r\n\r\n", tln.Addr(), strings.Repeat("j", 1<<20))
	if s := status(c); !strings.Contains(s, "431") {
		t.Fatalf("1 MiB request header: %q, want 431", s)
	}
	c.Close()

	// A CONNECT tunnel in which nothing moves is closed after the idle
	// timeout (the target would hold it for 5 s).
	c = dial()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", tln.Addr(), tln.Addr())
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	began := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatalf("idle tunnel not closed within 2 s: %v", err)
	}
	t.Logf("idle tunnel closed after %v", time.Since(began).Round(time.Millisecond))
	c.Close()

	// MaxConns connections that send nothing are held; the next is
	// answered 503 at once.
	waitUntil(t, 5*time.Second, "earlier connections released", func() bool { return guestConns(f) == 0 })
	for range 3 {
		dial()
	}
	waitUntil(t, 5*time.Second, "three connections taken", func() bool { return guestConns(f) == 3 })
	if s := status(dial()); !strings.Contains(s, "503") {
		t.Fatalf("connection past the cap: %q, want 503", s)
	}
}
