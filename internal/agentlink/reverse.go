package agentlink

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// ReverseHandler serves one reverse-forwarded connection from the guest.
type ReverseHandler func(conn net.Conn)

// Reverse asks the agent to listen on listen (127.0.0.1:<port> inside the
// guest) and hand every connection to h on the host. It lasts as long as
// this session; after a reconnect, ask again.
func (c *Client) Reverse(ctx context.Context, listen, name string, h ReverseHandler) error {
	c.reverseMu.Lock()
	if c.reverse == nil {
		c.reverse = map[string]ReverseHandler{}
		go c.acceptReverse()
	}
	c.reverse[name] = h
	c.reverseMu.Unlock()
	return c.postJSON(ctx, proto.PathReverse, proto.ReverseRequest{Listen: listen, Name: name})
}

// acceptReverse takes the streams the agent opens and routes each to the
// handler its first line names.
func (c *Client) acceptReverse() {
	for {
		st, err := c.sess.Accept()
		if err != nil {
			return
		}
		go func() {
			_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(st)
			line, err := br.ReadString('\n')
			name, ok := strings.CutPrefix(strings.TrimSpace(line), strings.TrimSpace(proto.ReverseMagic))
			name = strings.TrimSpace(name)
			c.reverseMu.Lock()
			h := c.reverse[name]
			c.reverseMu.Unlock()
			if err != nil || !ok || h == nil {
				c.log.Warn("agent opened an unknown reverse stream; closing it", "name", name)
				st.Close()
				return
			}
			_ = st.SetReadDeadline(time.Time{})
			h(&bufferedNetConn{Conn: st, r: br})
		}()
	}
}

// bufferedNetConn reads through a bufio.Reader that may hold bytes already.
type bufferedNetConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedNetConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// ServeHTTPReverse is a ReverseHandler factory serving h over each
// connection (HTTP/1.1, keep-alive), for host services offered to guests.
func ServeHTTPReverse(h http.Handler) ReverseHandler {
	return func(conn net.Conn) {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
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
