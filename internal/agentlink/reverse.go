package agentlink

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// ReverseHandler serves one reverse-forwarded connection from the guest.
type ReverseHandler func(conn net.Conn)

// Limits on reverse-forwarded connections, which the guest opens at will.
const (
	// MaxReverseConns bounds reverse connections open at once per session;
	// more are closed as they arrive.
	MaxReverseConns = 32
	// reverseNameTimeout bounds the wait for a new stream's name line.
	reverseNameTimeout = 10 * time.Second
	// maxReverseNameLine bounds that line (magic, name, newline).
	maxReverseNameLine = 256
	// Limits of ServeHTTPReverse.
	maxReverseHeaderBytes = 16 << 10
	maxReverseBodyBytes   = 1 << 20
	reverseReadTimeout    = 30 * time.Second
	reverseWriteTimeout   = 30 * time.Second
	reverseIdleTimeout    = time.Minute
)

// Reverse asks the agent to listen on listen (127.0.0.1:<port> inside the
// guest) and hand every connection to h on the host. It lasts as long as
// this session; after a reconnect, ask again.
func (c *Client) Reverse(ctx context.Context, listen, name string, h ReverseHandler) error {
	c.reverseMu.Lock()
	if c.reverse == nil {
		c.reverse = map[string]ReverseHandler{}
	}
	c.reverse[name] = h
	c.reverseMu.Unlock()
	return c.postJSON(ctx, proto.PathReverse, proto.ReverseRequest{Listen: listen, Name: name})
}

// acceptStreams takes every stream the agent opens. The only streams an
// agent may open are reverse forwards the host asked for; each is routed to
// the handler its first line names, within MaxReverseConns at a time.
// Anything else is closed.
func (c *Client) acceptStreams() {
	slots := make(chan struct{}, MaxReverseConns)
	for {
		st, err := c.sess.Accept()
		if err != nil {
			return
		}
		select {
		case slots <- struct{}{}:
		default:
			c.log.Warn("agent opened more reverse streams than allowed; closing one", "limit", MaxReverseConns)
			st.Close()
			continue
		}
		go func() {
			defer func() { <-slots }()
			c.serveReverse(st)
		}()
	}
}

// serveReverse reads the stream's name line (bounded in size and time) and
// runs its handler.
func (c *Client) serveReverse(st net.Conn) {
	_ = st.SetReadDeadline(time.Now().Add(reverseNameTimeout))
	br := bufio.NewReaderSize(st, maxReverseNameLine)
	line, err := br.ReadSlice('\n')
	name, ok := strings.CutPrefix(strings.TrimSpace(string(line)), strings.TrimSpace(proto.ReverseMagic))
	name = strings.TrimSpace(name)
	var h ReverseHandler
	if err == nil && ok {
		c.reverseMu.Lock()
		h = c.reverse[name]
		c.reverseMu.Unlock()
	}
	if h == nil {
		if len(name) > 64 {
			name = name[:64]
		}
		c.log.Warn("agent opened an unknown reverse stream; closing it", "name", name)
		st.Close()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	h(&bufferedNetConn{Conn: st, r: br})
	st.Close()
}

// bufferedNetConn reads through a bufio.Reader that may hold bytes already.
type bufferedNetConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedNetConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// ServeHTTPReverse is a ReverseHandler factory serving h over each
// connection (HTTP/1.1, keep-alive), for host services offered to guests.
// The guest is the client here, so headers, bodies and every wait are
// bounded: a request body over 1 MiB fails to read (h sees the error), a
// header over 16 KiB is answered 431, and a slow or idle client is cut off.
func ServeHTTPReverse(h http.Handler) ReverseHandler {
	h = http.MaxBytesHandler(h, maxReverseBodyBytes)
	return func(conn net.Conn) {
		srv := &http.Server{
			Handler:           h,
			ReadHeaderTimeout: reverseReadTimeout,
			ReadTimeout:       reverseReadTimeout,
			WriteTimeout:      reverseWriteTimeout,
			IdleTimeout:       reverseIdleTimeout,
			MaxHeaderBytes:    maxReverseHeaderBytes,
			ErrorLog:          log.New(io.Discard, "", 0),
		}
		ln := &oneConnListener{conn: conn, done: make(chan struct{})}
		_ = srv.Serve(ln)
	}
}

// oneConnListener yields a single connection, then blocks until it closes.
type oneConnListener struct {
	conn net.Conn
	done chan struct{}
	used bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.used {
		l.used = true
		return &closeNotifyConn{Conn: l.conn, done: l.done}, nil
	}
	<-l.done
	return nil, fmt.Errorf("reverse connection closed")
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

type closeNotifyConn struct {
	net.Conn
	done chan struct{}
	once sync.Once
}

func (c *closeNotifyConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.Conn.Close()
}
