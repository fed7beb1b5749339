package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"

	"github.com/hashicorp/yamux"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// sessionKey carries the yamux session of a request, so that handlers can
// open streams toward the host.
type sessionKey struct{}

var reverseNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// handleReverse starts a guest listener whose connections travel to the
// host as agent-opened streams. Only loopback addresses are accepted: the
// point is to give guest programs one host service, never to open the
// guest to the network.
func (a *Agent) handleReverse(w http.ResponseWriter, r *http.Request) {
	var req proto.ReverseRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "bad reverse request: "+err.Error())
		return
	}
	host, _, err := net.SplitHostPort(req.Listen)
	if err != nil || host != "127.0.0.1" {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "listen must be 127.0.0.1:<port>")
		return
	}
	if !reverseNameRE.MatchString(req.Name) {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "name must be 1-32 lower-case letters, digits or -")
		return
	}
	sess, ok := r.Context().Value(sessionKey{}).(*yamux.Session)
	if !ok {
		writeError(w, http.StatusInternalServerError, proto.CodeInternal, "no session for reverse forwarding")
		return
	}
	a.reverseMu.Lock()
	if old := a.reverse[req.Listen]; old != nil {
		// A reconnected host asks again; the old session's listener goes.
		old.Close()
	}
	ln, err := net.Listen("tcp", req.Listen)
	if err != nil {
		a.reverseMu.Unlock()
		writeError(w, http.StatusConflict, proto.CodeUnavailable, "listen: "+err.Error())
		return
	}
	a.reverse[req.Listen] = ln
	a.reverseMu.Unlock()
	a.log.Info("reverse forward", "listen", req.Listen, "name", req.Name)

	go func() {
		<-sess.CloseChan()
		ln.Close()
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go a.reverseConn(sess, req.Name, c)
		}
	}()
	w.WriteHeader(http.StatusNoContent)
}

func (a *Agent) reverseConn(sess *yamux.Session, name string, c net.Conn) {
	defer c.Close()
	st, err := sess.Open()
	if err != nil {
		a.log.Warn("reverse forward: open stream to host", "name", name, "err", err)
		return
	}
	defer st.Close()
	if _, err := fmt.Fprintf(st, "%s%s\n", proto.ReverseMagic, name); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(st, c)
		_ = st.Close()
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(c, st)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	<-done
	<-done
}

// withSession is the http.Server ConnContext that tags requests with sess.
func withSession(sess *yamux.Session) func(context.Context, net.Conn) context.Context {
	return func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, sessionKey{}, sess)
	}
}
