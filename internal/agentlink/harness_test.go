package agentlink_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/agent"
	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
	"github.com/hangar-vm/hangar/internal/testutil"
)

const testToken = "test-token-0123456789abcdef"

// TestMain lets the test binary double as a helper process for services:
// HANGAR_TEST_HELPER=echo-listen ADDR listens on ADDR and echoes.
func TestMain(m *testing.M) {
	if os.Getenv("HANGAR_TEST_HELPER") == "echo-listen" {
		ln, err := net.Listen("tcp", os.Args[len(os.Args)-1])
		if err != nil {
			os.Stderr.WriteString("helper listen: " + err.Error() + "\n")
			os.Exit(2)
		}
		os.Stdout.WriteString("helper listening\n")
		for {
			c, err := ln.Accept()
			if err != nil {
				os.Exit(0)
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}
	if sock := os.Getenv("HANGAR_TEST_AGENT_SOCK"); sock != "" {
		// An agent on a Unix socket, in whatever mount namespace the
		// test started this process in (see TestPutFileOnAFullDisk).
		a, err := agent.New(agent.Config{Token: testToken, Console: os.Stderr})
		if err != nil {
			os.Stderr.WriteString("helper agent: " + err.Error() + "\n")
			os.Exit(2)
		}
		ln, err := net.Listen("unix", sock)
		if err != nil {
			os.Stderr.WriteString("helper listen: " + err.Error() + "\n")
			os.Exit(2)
		}
		ctx := context.Background()
		go func() { _ = a.Run(ctx) }()
		_ = a.ServeListener(ctx, ln)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// syncBuffer is testutil.Buffer, a builder safe for concurrent writers.
type syncBuffer = testutil.Buffer

type testAgent struct {
	agent   *agent.Agent
	client  *agentlink.Client
	console *syncBuffer
	sock    string
}

// startAgent runs an agent in non-PID-1 mode on a Unix socket and connects
// a client to it, the way the daemon connects to a QEMU chardev socket.
func startAgent(t *testing.T, cfg agent.Config) *testAgent {
	t.Helper()
	if cfg.Token == "" {
		cfg.Token = testToken
	}
	console := &syncBuffer{}
	if cfg.Console == nil {
		cfg.Console = console
	}
	cfg.LogLevel = slog.LevelDebug
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		_ = a.Run(ctx)
	}()
	go func() { _ = a.ServeListener(ctx, ln) }()
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	c, err := agentlink.DialQEMU(dctx, sock, agentlink.Options{Token: testToken})
	if err != nil {
		cancel()
		t.Fatalf("dial agent: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
		select {
		case <-runDone:
		case <-time.After(10 * time.Second):
			t.Errorf("agent did not stop")
		}
	})
	return &testAgent{agent: a, client: c, console: console, sock: sock}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// fakePort simulates a virtio-serial port: one guest-side byte stream that
// outlives host connections. Bytes the host writes are kept in a
// persistent buffer (stale bytes of a dead session stay there, as in a
// virtqueue); guest writes go to the current host connection or are lost.
// With eofWhenNoHost a guest read returns EOF while no host is connected
// and nothing is buffered (what the kernel driver does); without it the
// guest never learns that the host went away.
type fakePort struct {
	eofWhenNoHost bool

	mu   sync.Mutex // guards every field below and those of the handles
	cond *sync.Cond
	// toGuest holds host→guest bytes not yet read by the guest.
	toGuest []byte
	host    *fakeHostConn
	opens   int
}

func newFakePort(eofWhenNoHost bool) *fakePort {
	p := &fakePort{eofWhenNoHost: eofWhenNoHost}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *fakePort) open() (io.ReadWriteCloser, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.opens++
	return &guestHandle{p: p}, nil
}

func (p *fakePort) connect() *fakeHostConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.host != nil {
		p.host.closed = true
	}
	h := &fakeHostConn{p: p}
	p.host = h
	p.cond.Broadcast()
	return h
}

type guestHandle struct {
	p      *fakePort
	closed bool
}

func (g *guestHandle) Read(b []byte) (int, error) {
	p := g.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.toGuest) == 0 {
		if g.closed {
			return 0, os.ErrClosed
		}
		if p.eofWhenNoHost && p.host == nil {
			return 0, io.EOF
		}
		p.cond.Wait()
	}
	if g.closed {
		return 0, os.ErrClosed
	}
	n := copy(b, p.toGuest)
	p.toGuest = p.toGuest[n:]
	return n, nil
}

func (g *guestHandle) Write(b []byte) (int, error) {
	p := g.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if g.closed {
		return 0, os.ErrClosed
	}
	if p.host != nil && !p.host.closed {
		p.host.in = append(p.host.in, b...)
		p.cond.Broadcast()
	}
	return len(b), nil
}

func (g *guestHandle) Close() error {
	g.p.mu.Lock()
	defer g.p.mu.Unlock()
	g.closed = true
	g.p.cond.Broadcast()
	return nil
}

type fakeHostConn struct {
	p      *fakePort
	in     []byte
	closed bool
}

func (h *fakeHostConn) Read(b []byte) (int, error) {
	p := h.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(h.in) == 0 {
		if h.closed {
			return 0, io.EOF
		}
		p.cond.Wait()
	}
	n := copy(b, h.in)
	h.in = h.in[n:]
	return n, nil
}

func (h *fakeHostConn) Write(b []byte) (int, error) {
	p := h.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if h.closed {
		return 0, errors.New("fake host conn closed")
	}
	p.toGuest = append(p.toGuest, b...)
	p.cond.Broadcast()
	return len(b), nil
}

func (h *fakeHostConn) Close() error {
	p := h.p
	p.mu.Lock()
	defer p.mu.Unlock()
	h.closed = true
	if p.host == h {
		p.host = nil
	}
	p.cond.Broadcast()
	return nil
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

var _ = proto.Version
