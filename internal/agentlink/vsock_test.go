package agentlink_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/agent"
	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// fakeFirecrackerVsock plays Firecracker's hybrid-vsock Unix socket: it
// reads "CONNECT <port>\n", refuses the first attempts (as Firecracker does
// while nothing listens in the guest), then answers "OK <n>\n" and hands
// the connection to the agent.
func fakeFirecrackerVsock(t *testing.T, a *agent.Agent, refuse int) (string, *int) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var gotPort int
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(conn)
			line, err := br.ReadString('\n')
			if err != nil {
				conn.Close()
				continue
			}
			_, _ = fmt.Sscanf(line, "CONNECT %d\n", &gotPort)
			if refuse > 0 {
				refuse--
				conn.Close()
				continue
			}
			_, _ = io.WriteString(conn, "OK 1073741824\n")
			go func() {
				_ = a.ServeConn(ctx, &struct {
					io.Reader
					io.WriteCloser
				}{br, conn})
			}()
		}
	}()
	return sock, &gotPort
}

func TestDialFirecrackerHybridVsock(t *testing.T) {
	a, err := agent.New(agent.Config{Token: testToken, Console: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = a.Run(ctx) }()
	sock, port := fakeFirecrackerVsock(t, a, 2)
	c, err := agentlink.DialFirecracker(ctxT(t, 10*time.Second), sock, proto.VsockPort, agentlink.Options{Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if *port != proto.VsockPort {
		t.Fatalf("CONNECT port %d", *port)
	}
	var out bytes.Buffer
	if code, err := c.Exec(ctxT(t, 10*time.Second), proto.ExecRequest{Argv: []string{"echo", "vsock"}}, nil, &out, nil); err != nil || code != 0 || out.String() != "vsock\n" {
		t.Fatalf("code=%d err=%v out=%q", code, err, out.String())
	}
}

// TestListenVsockLoopback runs the agent's AF_VSOCK listener for real over
// the host kernel's vsock loopback (CID 1), when the host has one.
func TestListenVsockLoopback(t *testing.T) {
	const port = 52011
	ln, err := agent.ListenVsock(port)
	if err != nil {
		t.Skip("AF_VSOCK unavailable on this host (vsock_loopback module not loaded?): ", err)
	}
	a, err := agent.New(agent.Config{Token: testToken, Console: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = a.Run(ctx) }()
	go func() { _ = a.ServeListener(ctx, ln) }()
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_LOCAL, Port: port}); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.ETIMEDOUT) {
			t.Skip("no vsock loopback transport on this host: ", err)
		}
		t.Fatal(err)
	}
	conn := &fdConn{fd: fd}
	c, err := agentlink.New(ctxT(t, 10*time.Second), conn, agentlink.Options{Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h, err := c.Health(ctxT(t, 10*time.Second))
	if err != nil || !strings.HasPrefix(h.ProtocolVersion, proto.Version) {
		t.Fatalf("health over vsock: %+v %v", h, err)
	}
}

type fdConn struct{ fd int }

func (c *fdConn) Read(p []byte) (int, error) {
	n, err := unix.Read(c.fd, p)
	if n == 0 && err == nil {
		return 0, io.EOF
	}
	if n < 0 {
		n = 0
	}
	return n, err
}
func (c *fdConn) Write(p []byte) (int, error) {
	n, err := unix.Write(c.fd, p)
	if n < 0 {
		n = 0
	}
	return n, err
}
func (c *fdConn) Close() error { return unix.Close(c.fd) }
