package liveview

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Close codes the viewer page understands. 4000 means the session is over
// and reconnecting is pointless; the others may be retried.
const (
	closeSessionEnded websocket.StatusCode = 4000
)

// Reasons a bridge ends. Their text is sent to the browser as the close
// reason (at most 123 bytes) and logged.
var (
	errSessionEnded = errors.New("login session ended")
	errShuttingDown = errors.New("daemon shutting down")
	errServerClosed = errors.New("vnc server closed the connection")
	errClientClosed = errors.New("viewer closed the connection")
	errPingTimeout  = errors.New("viewer stopped answering pings")
)

// pingInterval keeps idle views alive through proxies that cut silent
// connections (a static login page sends no VNC traffic) and notices dead
// viewers.
const pingInterval = 30 * time.Second

// bridge is one websocket viewer joined to one VNC connection.
type bridge struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// end stops the bridge with a reason; the first reason wins.
func (b *bridge) end(reason error) { b.cancel(reason) }

func (s *Server) register(session string, b *bridge) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errShuttingDown
	}
	if len(s.viewers[session]) >= s.opts.MaxViewers {
		return errTooManyViewers
	}
	if s.viewers[session] == nil {
		s.viewers[session] = map[*bridge]struct{}{}
	}
	s.viewers[session][b] = struct{}{}
	s.wg.Add(1)
	return nil
}

func (s *Server) unregister(session string, b *bridge) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.viewers[session], b)
	if len(s.viewers[session]) == 0 {
		delete(s.viewers, session)
	}
	s.wg.Done()
}

var errTooManyViewers = errors.New("too many viewers for this session")

// admit is the start both transports share: GET only, the token and the
// session's liveness (authorize), then a place among the session's viewers.
// The bridge outlives the request's context (the connection is hijacked),
// so it hangs off the server's. When ok is false the answer was written;
// otherwise the caller unregisters b and cancels it when done.
func (s *Server) admit(w http.ResponseWriter, r *http.Request, session string) (claims Claims, viewOnly bool, b *bridge, ok bool) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return claims, false, nil, false
	}
	claims, viewOnly, ok = s.authorize(w, r, session, false)
	if !ok {
		return claims, false, nil, false
	}
	ctx, cancel := context.WithCancelCause(s.ctx)
	b = &bridge{ctx: ctx, cancel: cancel}
	if err := s.register(session, b); err != nil {
		cancel(err)
		status := http.StatusTooManyRequests
		if errors.Is(err, errShuttingDown) {
			status = http.StatusServiceUnavailable
		}
		http.Error(w, err.Error(), status)
		return claims, false, nil, false
	}
	return claims, viewOnly, b, true
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request, session string) {
	claims, viewOnly, b, ok := s.admit(w, r, session)
	if !ok {
		return
	}
	defer s.unregister(session, b)
	defer b.cancel(nil)
	ctx := b.ctx

	// Dial before upgrading, so a VM that cannot be reached is an HTTP
	// error the browser (and the log) can see, not a websocket that opens
	// and dies.
	dctx, dcancel := context.WithTimeout(ctx, s.opts.DialTimeout)
	vnc, err := s.opts.Dial(dctx, session, claims)
	dcancel()
	if err != nil {
		s.log.Warn("live view: vnc dial failed", "session_id", session, "owner_id", claims.OwnerID, "err", err)
		http.Error(w, "the browser VM's screen cannot be reached", http.StatusBadGateway)
		return
	}
	defer vnc.Close()

	// A server with read or write timeouts leaves deadlines on the
	// connection it hands to a hijacker; a live view runs for minutes.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		// noVNC asks for "binary" when told to (the viewer page does);
		// without a requested subprotocol none is chosen.
		Subprotocols:   []string{"binary"},
		OriginPatterns: s.opts.OriginPatterns,
	})
	if err != nil {
		// Accept has written the HTTP error.
		s.log.Info("live view: websocket upgrade failed", "session_id", session, "err", err)
		return
	}
	s.bridge(b, c, vnc, session, claims, viewOnly, remoteHost(r))
}

// bridge copies bytes both ways until either side ends, the session ends,
// or the server closes; then closes both and logs what it carried.
func (s *Server) bridge(b *bridge, c *websocket.Conn, vnc net.Conn, session string, claims Claims, viewOnly bool, remote string) {
	start := time.Now()
	log := s.log.With("session_id", session, "owner_id", claims.OwnerID, "view_only", viewOnly, "remote", remote)
	log.Info("live view connected")
	if m := s.opts.Metrics; m != nil {
		m.Sessions.WithLabelValues("vnc").Inc()
		defer m.Sessions.WithLabelValues("vnc").Dec()
	}

	// The websocket library closes a connection without a close frame when
	// a read or write context is cancelled, so the copies use a context that
	// is never cancelled and the bridge ends them with c.Close, which sends
	// the reason to the viewer.
	ws := websocket.NetConn(context.Background(), c, websocket.MessageBinary)
	var (
		wg                   sync.WaitGroup
		toViewer, fromViewer int64
		toServer             int64
		dropped              int
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		n, err := io.CopyBuffer(ws, vnc, buf)
		toViewer = n
		if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			b.end(errServerClosed)
			return
		}
		b.end(err)
	}()
	go func() {
		defer wg.Done()
		var err error
		if viewOnly {
			var st filterStats
			st, err = viewOnlyCopy(vnc, ws)
			fromViewer, toServer, dropped = st.in, st.out, st.dropped
		} else {
			fromViewer, err = io.Copy(vnc, ws)
			toServer = fromViewer
		}
		if err == nil || errors.Is(err, io.EOF) {
			b.end(errClientClosed)
			return
		}
		b.end(err)
	}()

	alive := time.NewTicker(s.opts.AliveInterval)
	defer alive.Stop()
	ping := time.NewTicker(pingInterval)
	defer ping.Stop()
loop:
	for {
		select {
		case <-b.ctx.Done():
			break loop
		case <-alive.C:
			actx, acancel := context.WithTimeout(b.ctx, s.opts.AliveInterval)
			ok := s.opts.Alive(actx, session)
			acancel()
			if !ok && b.ctx.Err() == nil {
				b.end(errSessionEnded)
			}
		case <-ping.C:
			go func() {
				pctx, pcancel := context.WithTimeout(context.Background(), pingInterval/2)
				defer pcancel()
				if err := c.Ping(pctx); err != nil && b.ctx.Err() == nil {
					b.end(errPingTimeout)
				}
			}()
		}
	}
	reason := context.Cause(b.ctx)

	// Closing the VNC side first stops the server→viewer copy, so the
	// close frame is not queued behind screen updates.
	_ = vnc.Close()
	code, text := closeStatus(reason)
	_ = c.Close(code, text)
	wg.Wait()

	log.Info("live view disconnected", "reason", reasonText(reason),
		"bytes_to_viewer", toViewer, "bytes_from_viewer", fromViewer, "bytes_to_server", toServer,
		"dropped_messages", dropped, "duration_ms", time.Since(start).Milliseconds())
}

// closeStatus maps why a bridge ended to the websocket close frame.
func closeStatus(reason error) (websocket.StatusCode, string) {
	switch {
	case errors.Is(reason, errSessionEnded):
		return closeSessionEnded, errSessionEnded.Error()
	case errors.Is(reason, errShuttingDown):
		return websocket.StatusGoingAway, errShuttingDown.Error()
	case errors.Is(reason, errServerClosed), errors.Is(reason, errClientClosed):
		return websocket.StatusNormalClosure, reason.Error()
	case errors.Is(reason, errFilter):
		return websocket.StatusPolicyViolation, "view-only: unsupported client message"
	default:
		return websocket.StatusInternalError, "live view connection failed"
	}
}

// reasonText is the log form of a reason; websocket close errors from the
// viewer are reported as the viewer closing.
func reasonText(reason error) string {
	if reason == nil {
		return "unknown"
	}
	if websocket.CloseStatus(reason) != -1 {
		return errClientClosed.Error()
	}
	return reason.Error()
}
