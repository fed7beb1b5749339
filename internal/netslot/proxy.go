package netslot

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ProxyPort is the port of the upstream-proxy forwarder on a slot's
// gateway; 3128 is the port tools expect of an HTTP proxy.
const ProxyPort = 3128

// The guest is the client of the forwarder and may be hostile: what it may
// hold is bounded per slot (connections), per request (header bytes and
// the time to send them) and per connection (idle time, also inside
// CONNECT tunnels).
const (
	proxyDialTimeout      = 10 * time.Second
	proxyHandshakeTimeout = 30 * time.Second
	proxyIdleTimeout      = 2 * time.Minute
	// proxyHeaderTimeout bounds sending a request's line and headers once
	// its first byte arrived.
	proxyHeaderTimeout = 30 * time.Second
	// proxyMaxHeaderBytes bounds a request's line and headers.
	proxyMaxHeaderBytes = 32 << 10
	// DefaultProxyMaxConns bounds a forwarder's guest connections.
	DefaultProxyMaxConns = 64
	// proxyTunnelIdleTimeout closes a CONNECT tunnel in which neither
	// side sent a byte for this long.
	proxyTunnelIdleTimeout = 10 * time.Minute
)

// ForwarderOptions tune a Forwarder; the zero value works.
type ForwarderOptions struct {
	// Dial reaches the upstream proxy. Default: a net.Dialer in the
	// process's own network namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Allow decides whether the guest may ask for host:port (host is a
	// name or an IP literal). Nil allows everything.
	Allow func(host string, port int) bool
	// Logger receives one line per refused or failed request.
	Logger *slog.Logger
	// MaxConns bounds guest connections open at once (a forwarder serves
	// one slot); more are answered 503 and closed. Default
	// DefaultProxyMaxConns.
	MaxConns int
	// TunnelIdleTimeout overrides proxyTunnelIdleTimeout (tests).
	TunnelIdleTimeout time.Duration
}

// Forwarder is an HTTP proxy for guests that chains every request to the
// owner's upstream proxy, adding the upstream's credentials itself: the
// guest is configured with a credential-free proxy URL, so the password
// never enters the VM. It understands CONNECT (tunnels, e.g. HTTPS) and
// absolute-URI requests (plain HTTP). Upstreams: http:// with Basic auth,
// and socks5:// (or socks5h://) with RFC 1929 username/password; names are
// always resolved by the upstream.
type Forwarder struct {
	upstream *url.URL
	opts     ForwarderOptions
	log      *slog.Logger

	mu sync.Mutex // guards conns, guests, lns and closed
	// conns are all open connections (guest and upstream), closed by Close.
	conns map[net.Conn]struct{}
	// guests counts open guest connections, against MaxConns.
	guests int
	lns    map[net.Listener]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewForwarder returns a forwarder to upstream (http://[user:pass@]host:port
// or socks5://[user:pass@]host:port).
func NewForwarder(upstream *url.URL, opts ForwarderOptions) (*Forwarder, error) {
	if upstream == nil {
		return nil, errors.New("no upstream proxy")
	}
	switch upstream.Scheme {
	case "http", "socks5", "socks5h":
	default:
		return nil, fmt.Errorf("upstream proxy scheme %q: want http, socks5 or socks5h", upstream.Scheme)
	}
	if upstream.Hostname() == "" {
		return nil, errors.New("upstream proxy has no host")
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = DefaultProxyMaxConns
	}
	if opts.TunnelIdleTimeout <= 0 {
		opts.TunnelIdleTimeout = proxyTunnelIdleTimeout
	}
	if opts.Dial == nil {
		d := &net.Dialer{Timeout: proxyDialTimeout}
		opts.Dial = d.DialContext
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	u := *upstream
	return &Forwarder{upstream: &u, opts: opts, log: log,
		conns: map[net.Conn]struct{}{}, lns: map[net.Listener]struct{}{}}, nil
}

// upstreamAddr is host:port of the upstream, with the scheme's default port.
func (f *Forwarder) upstreamAddr() string {
	port := f.upstream.Port()
	if port == "" {
		port = "1080"
		if f.upstream.Scheme == "http" {
			port = "8080"
		}
	}
	return net.JoinHostPort(f.upstream.Hostname(), port)
}

// Serve accepts guest connections on ln until ln or the forwarder is
// closed. It returns nil after Close.
func (f *Forwarder) Serve(ln net.Listener) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		ln.Close()
		return nil
	}
	f.lns[ln] = struct{}{}
	f.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			f.mu.Lock()
			closed := f.closed
			delete(f.lns, ln)
			f.mu.Unlock()
			if closed {
				return nil
			}
			return fmt.Errorf("accept proxy client: %w", err)
		}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			c.Close()
			return nil
		}
		if f.guests >= f.opts.MaxConns {
			f.mu.Unlock()
			f.log.Warn("proxy connection refused: too many open", "limit", f.opts.MaxConns)
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			writeStatus(c, http.StatusServiceUnavailable, "too many proxy connections from this VM")
			c.Close()
			continue
		}
		f.guests++
		f.conns[c] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go func() {
			defer f.wg.Done()
			defer func() {
				f.mu.Lock()
				delete(f.conns, c)
				f.guests--
				f.mu.Unlock()
				c.Close()
			}()
			f.serveConn(c)
		}()
	}
}

// Close stops all listeners and open connections and waits for them.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	for ln := range f.lns {
		ln.Close()
	}
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	return nil
}

func (f *Forwarder) serveConn(c net.Conn) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Request heads go through a byte limit (http.ReadRequest assembles a
	// line of any length); bodies and tunnel bytes do not.
	lim := &limitedReader{r: c}
	br := bufio.NewReader(lim)
	for {
		lim.set(proxyMaxHeaderBytes)
		_ = c.SetReadDeadline(time.Now().Add(proxyIdleTimeout))
		if _, err := br.Peek(1); err != nil {
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(proxyHeaderTimeout))
		req, err := http.ReadRequest(br)
		if err != nil {
			if errors.Is(err, errHeaderTooLarge) {
				writeStatus(c, http.StatusRequestHeaderFieldsTooLarge, "request header too large")
			}
			return
		}
		lim.set(-1)
		_ = c.SetReadDeadline(time.Time{})
		if req.Method == http.MethodConnect {
			f.serveConnect(ctx, c, br, req)
			return
		}
		if !f.serveHTTP(ctx, c, req) {
			return
		}
	}
}

// target returns host and port of a request, and whether the policy allows
// them; it answers the guest itself when not.
func (f *Forwarder) target(c net.Conn, hostport, defPort string) (string, int, bool) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		host, portStr = hostport, defPort
	}
	port, err := strconv.Atoi(portStr)
	if host == "" || err != nil || port <= 0 || port > 65535 {
		writeStatus(c, http.StatusBadRequest, "bad proxy target")
		return "", 0, false
	}
	if f.opts.Allow != nil && !f.opts.Allow(host, port) {
		f.log.Info("proxy target refused by egress policy", "target", net.JoinHostPort(host, portStr))
		writeStatus(c, http.StatusForbidden, "destination not allowed by the egress policy")
		return "", 0, false
	}
	return host, port, true
}

func (f *Forwarder) serveConnect(ctx context.Context, c net.Conn, br *bufio.Reader, req *http.Request) {
	host, port, ok := f.target(c, req.Host, "443")
	if !ok {
		return
	}
	up, err := f.tunnel(ctx, host, port)
	if err != nil {
		f.log.Warn("proxy tunnel failed", "target", net.JoinHostPort(host, strconv.Itoa(port)), "err", err)
		writeStatus(c, http.StatusBadGateway, "upstream proxy failed")
		return
	}
	defer up.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	// Bytes the guest sent right after its CONNECT are already buffered.
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		if _, err := up.Write(b); err != nil {
			return
		}
	}
	f.trackConn(up)
	defer f.untrackConn(up)
	spliceIdle(c, up, f.opts.TunnelIdleTimeout)
}

// serveHTTP relays one plain-HTTP request; it reports whether the guest
// connection may carry another.
func (f *Forwarder) serveHTTP(ctx context.Context, c net.Conn, req *http.Request) bool {
	if !req.URL.IsAbs() || req.URL.Scheme != "http" {
		writeStatus(c, http.StatusBadRequest, "this proxy takes absolute http:// URLs and CONNECT")
		return false
	}
	host, port, ok := f.target(c, req.URL.Host, "80")
	if !ok {
		return false
	}
	// The guest must not smuggle its own proxy credentials or hop-by-hop
	// options to the upstream.
	for _, h := range []string{"Proxy-Authorization", "Proxy-Connection", "Proxy-Authenticate", "Connection", "Keep-Alive", "Te", "Trailer", "Upgrade"} {
		req.Header.Del(h)
	}
	req.Close = true // one request per upstream connection keeps this simple

	var up net.Conn
	var err error
	if f.upstream.Scheme == "http" {
		up, err = f.dialUpstream(ctx)
		if err == nil {
			if auth := f.basicAuth(); auth != "" {
				req.Header.Set("Proxy-Authorization", auth)
			}
			_ = up.SetDeadline(time.Now().Add(proxyHandshakeTimeout))
			err = req.WriteProxy(up)
		}
	} else {
		up, err = f.tunnel(ctx, host, port)
		if err == nil {
			_ = up.SetDeadline(time.Now().Add(proxyHandshakeTimeout))
			err = req.Write(up)
		}
	}
	if err != nil {
		if up != nil {
			up.Close()
		}
		f.log.Warn("proxy request failed", "target", net.JoinHostPort(host, strconv.Itoa(port)), "err", err)
		writeStatus(c, http.StatusBadGateway, "upstream proxy failed")
		return false
	}
	defer up.Close()
	f.trackConn(up)
	defer f.untrackConn(up)
	resp, err := http.ReadResponse(bufio.NewReader(up), req)
	if err != nil {
		f.log.Warn("proxy response failed", "target", net.JoinHostPort(host, strconv.Itoa(port)), "err", err)
		writeStatus(c, http.StatusBadGateway, "upstream proxy failed")
		return false
	}
	defer resp.Body.Close()
	_ = up.SetDeadline(time.Time{})
	resp.Header.Del("Proxy-Authenticate")
	if err := resp.Write(c); err != nil {
		return false
	}
	return !resp.Close && !req.Close
}

// tunnel opens a byte stream to host:port through the upstream proxy.
func (f *Forwarder) tunnel(ctx context.Context, host string, port int) (net.Conn, error) {
	up, err := f.dialUpstream(ctx)
	if err != nil {
		return nil, err
	}
	_ = up.SetDeadline(time.Now().Add(proxyHandshakeTimeout))
	var conn net.Conn
	if f.upstream.Scheme == "http" {
		conn, err = f.httpConnect(up, host, port)
	} else {
		err = f.socksConnect(up, host, port)
		conn = up
	}
	if err != nil {
		up.Close()
		return nil, err
	}
	_ = up.SetDeadline(time.Time{})
	return conn, nil
}

func (f *Forwarder) dialUpstream(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, proxyDialTimeout)
	defer cancel()
	c, err := f.opts.Dial(ctx, "tcp", f.upstreamAddr())
	if err != nil {
		// The upstream URL may carry credentials: name only its host.
		return nil, fmt.Errorf("dial upstream proxy %s: %w", f.upstreamAddr(), err)
	}
	return c, nil
}

func (f *Forwarder) basicAuth() string {
	if f.upstream.User == nil {
		return ""
	}
	pass, _ := f.upstream.User.Password()
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(f.upstream.User.Username()+":"+pass))
}

// httpConnect asks an HTTP upstream for a tunnel.
func (f *Forwarder) httpConnect(up net.Conn, host string, port int) (net.Conn, error) {
	target := net.JoinHostPort(host, strconv.Itoa(port))
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: target}, Host: target, Header: http.Header{}}
	if auth := f.basicAuth(); auth != "" {
		req.Header.Set("Proxy-Authorization", auth)
	}
	if err := req.Write(up); err != nil {
		return nil, fmt.Errorf("send CONNECT to upstream proxy: %w", err)
	}
	br := bufio.NewReader(up)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("read CONNECT answer of upstream proxy: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("upstream proxy answered CONNECT with %s", resp.Status)
	}
	return &bufferedConn{Conn: up, r: br}, nil
}

// socksConnect runs a SOCKS5 CONNECT (RFC 1928) with username/password
// authentication (RFC 1929) when the upstream URL has a user.
func (f *Forwarder) socksConnect(up net.Conn, host string, port int) error {
	methods := []byte{0x00}
	if f.upstream.User != nil {
		methods = []byte{0x02}
	}
	if _, err := up.Write(append([]byte{0x05, byte(len(methods))}, methods...)); err != nil {
		return fmt.Errorf("socks greeting: %w", err)
	}
	var sel [2]byte
	if _, err := io.ReadFull(up, sel[:]); err != nil {
		return fmt.Errorf("socks method selection: %w", err)
	}
	if sel[0] != 0x05 {
		return errors.New("upstream is not a SOCKS5 proxy")
	}
	switch sel[1] {
	case 0x00:
	case 0x02:
		user := f.upstream.User.Username()
		pass, _ := f.upstream.User.Password()
		if len(user) > 255 || len(pass) > 255 {
			return errors.New("socks username or password longer than 255 bytes")
		}
		msg := []byte{0x01, byte(len(user))}
		msg = append(msg, user...)
		msg = append(msg, byte(len(pass)))
		msg = append(msg, pass...)
		if _, err := up.Write(msg); err != nil {
			return fmt.Errorf("socks authentication: %w", err)
		}
		var st [2]byte
		if _, err := io.ReadFull(up, st[:]); err != nil {
			return fmt.Errorf("socks authentication answer: %w", err)
		}
		if st[1] != 0x00 {
			return errors.New("upstream socks proxy rejected the credentials")
		}
	default:
		return fmt.Errorf("upstream socks proxy offers no acceptable authentication method (0x%02x)", sel[1])
	}

	req := []byte{0x05, 0x01, 0x00}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Is4() {
			req = append(req, 0x01)
		} else {
			req = append(req, 0x04)
		}
		req = append(req, a.AsSlice()...)
	} else {
		if len(host) > 255 {
			return errors.New("target host name too long for socks")
		}
		req = append(req, 0x03, byte(len(host)))
		req = append(req, host...)
	}
	req = binary.BigEndian.AppendUint16(req, uint16(port))
	if _, err := up.Write(req); err != nil {
		return fmt.Errorf("socks connect: %w", err)
	}
	var rep [4]byte
	if _, err := io.ReadFull(up, rep[:]); err != nil {
		return fmt.Errorf("socks connect answer: %w", err)
	}
	if rep[1] != 0x00 {
		return fmt.Errorf("upstream socks proxy refused the connection (reply %d)", rep[1])
	}
	var skip int
	switch rep[3] {
	case 0x01:
		skip = 4
	case 0x04:
		skip = 16
	case 0x03:
		var l [1]byte
		if _, err := io.ReadFull(up, l[:]); err != nil {
			return fmt.Errorf("socks connect answer: %w", err)
		}
		skip = int(l[0])
	default:
		return fmt.Errorf("socks connect answer: unknown address type %d", rep[3])
	}
	if _, err := io.CopyN(io.Discard, up, int64(skip+2)); err != nil {
		return fmt.Errorf("socks connect answer: %w", err)
	}
	return nil
}

func (f *Forwarder) trackConn(c net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		c.Close()
		return
	}
	f.conns[c] = struct{}{}
}

func (f *Forwarder) untrackConn(c net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
}

// bufferedConn reads through the bufio.Reader that parsed the upstream's
// CONNECT answer, which may already hold tunnel bytes.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// CloseWrite half-closes the underlying TCP connection, so splice can pass
// an end of stream through.
func (b *bufferedConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// errHeaderTooLarge ends a request head over proxyMaxHeaderBytes.
var errHeaderTooLarge = errors.New("request header too large")

// limitedReader lets n bytes through, then fails with errHeaderTooLarge;
// n < 0 is unlimited. set is called between reads by the same goroutine.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) set(n int64) { l.n = n }

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return l.r.Read(p)
	}
	if l.n == 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// activityConn records the time of every read, for spliceIdle.
type activityConn struct {
	net.Conn
	last *atomic.Int64
}

func (a activityConn) Read(p []byte) (int, error) {
	n, err := a.Conn.Read(p)
	if n > 0 {
		a.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// CloseWrite passes a half-close through to the wrapped connection.
func (a activityConn) CloseWrite() error {
	if cw, ok := a.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// spliceIdle is splice that also closes both sides once neither sent a
// byte for idle.
func spliceIdle(a, b net.Conn, idle time.Duration) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(max(idle/8, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if time.Since(time.Unix(0, last.Load())) > idle {
					a.Close()
					b.Close()
					return
				}
			}
		}
	}()
	splice(activityConn{a, &last}, activityConn{b, &last})
}

// splice copies both ways until either side ends, then closes both.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	// Give the other direction a moment to drain its half-closed stream.
	t := time.NewTimer(proxyIdleTimeout)
	select {
	case <-done:
	case <-t.C:
	}
	t.Stop()
	a.Close()
	b.Close()
}

func writeStatus(c net.Conn, code int, msg string) {
	body := msg + "\n"
	_, _ = fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(body), body)
}
