package liveview

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/coder/websocket"
)

// serveWebRTC runs the signalling websocket of a WebRTC view
// (/live/{session}/webrtc). Everything that guards the VNC websocket
// guards this one too: the token, the session's liveness (checked at the
// start and every AliveInterval), the viewer limit, EndSession and Close.
// The media itself is the webrtc package's.
func (s *Server) serveWebRTC(w http.ResponseWriter, r *http.Request, session string) {
	if s.opts.WebRTC == nil {
		http.NotFound(w, r)
		return
	}
	claims, viewOnly, b, ok := s.admit(w, r, session)
	if !ok {
		return
	}
	defer s.unregister(session, b)
	defer b.cancel(nil)
	ctx := b.ctx

	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: s.opts.OriginPatterns})
	if err != nil {
		s.log.Info("live view: websocket upgrade failed", "session_id", session, "err", err)
		return
	}
	go func() {
		alive := time.NewTicker(s.opts.AliveInterval)
		defer alive.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-alive.C:
				actx, acancel := context.WithTimeout(ctx, s.opts.AliveInterval)
				ok := s.opts.Alive(actx, session)
				acancel()
				if !ok && ctx.Err() == nil {
					b.end(errSessionEnded)
				}
			}
		}
	}()
	dial := func(ctx context.Context) (net.Conn, error) {
		dctx, dcancel := context.WithTimeout(ctx, s.opts.DialTimeout)
		defer dcancel()
		return s.opts.Dial(dctx, session, claims)
	}
	err = s.opts.WebRTC.Serve(ctx, c, session, viewOnly, dial)
	if err != nil {
		s.log.Info("webrtc live view ended", "session_id", session, "err", err.Error())
	}
	if reason := context.Cause(ctx); reason != nil {
		code, text := closeStatus(reason)
		_ = c.Close(code, text)
	} else {
		_ = c.Close(websocket.StatusNormalClosure, "")
	}
}
