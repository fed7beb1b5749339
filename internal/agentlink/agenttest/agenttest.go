// Package agenttest runs a stand-in for hangar-agent that a test fully
// controls: it speaks the link handshake and yamux like the real agent,
// then answers with the test's own handler and can open streams towards
// the host at will. It models a guest whose root replaced the agent, which
// is what the host's limits must hold against.
package agenttest

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// Token is the link token the stand-in is dialled with (it checks none).
const Token = "agenttest-token-0123456789"

// Agent is a running stand-in.
type Agent struct {
	// Client is the host's real agentlink client, connected to it.
	Client *agentlink.Client
	// Session is the guest's side of the yamux session: Open on it to
	// send the host streams it did not ask for.
	Session *yamux.Session
}

type guestRW struct {
	br *bufio.Reader
	io.WriteCloser
}

func (g *guestRW) Read(p []byte) (int, error) { return g.br.Read(p) }

// Start runs a stand-in serving h and connects a client to it; both end
// with the test.
func Start(t testing.TB, h http.Handler) *Agent {
	t.Helper()
	// A short directory: Unix socket paths are limited to 107 bytes and
	// t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "agt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	sessCh := make(chan *yamux.Session, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		br := bufio.NewReader(conn)
		if _, err := proto.ServerHandshake(br, conn, "agenttest"); err != nil {
			conn.Close()
			return
		}
		cfg := yamux.DefaultConfig()
		cfg.LogOutput = io.Discard
		sess, err := yamux.Server(&guestRW{br: br, WriteCloser: conn}, cfg)
		if err != nil {
			conn.Close()
			return
		}
		sessCh <- sess
		_ = http.Serve(sess, h)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agentlink.DialQEMU(ctx, sock, agentlink.Options{Token: Token})
	if err != nil {
		t.Fatalf("dial the stand-in agent: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &Agent{Client: c, Session: <-sessCh}
}
