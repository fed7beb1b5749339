package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// bufferedConn reads through the handshake's reader (it may hold the first
// yamux bytes) and writes and closes the underlying stream.
type bufferedConn struct {
	r *bufio.Reader
	io.WriteCloser
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = 15 * time.Second
	cfg.MaxStreamWindowSize = 1 << 20
	return cfg
}

// ServeConn runs the handshake on conn, then one yamux session with the
// HTTP server on it, and returns when the session ends. It closes conn.
func (a *Agent) ServeConn(ctx context.Context, conn io.ReadWriteCloser) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	bc, err := a.handshake(conn)
	if err != nil {
		return err
	}
	return a.serveSession(ctx, bc)
}

// serveListenerConn is ServeConn with a deadline on the handshake: a peer
// that connects and says nothing must not hold a goroutine forever.
func (a *Agent) serveListenerConn(ctx context.Context, conn net.Conn) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	bc, err := a.handshake(conn)
	if err != nil {
		return err
	}
	_ = conn.SetDeadline(time.Time{})
	return a.serveSession(ctx, bc)
}

func (a *Agent) handshake(conn io.ReadWriteCloser) (*bufferedConn, error) {
	br := bufio.NewReaderSize(conn, 4096)
	res, err := proto.ServerHandshake(br, conn, a.cfg.Version)
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if !res.HostTime.IsZero() {
		a.setClock(res.HostTime)
	}
	return &bufferedConn{r: br, WriteCloser: conn}, nil
}

func (a *Agent) serveSession(ctx context.Context, conn io.ReadWriteCloser) error {
	sess, err := yamux.Server(conn, yamuxConfig())
	if err != nil {
		return fmt.Errorf("yamux server: %w", err)
	}
	a.log.Info("host connected")
	srv := &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(newLineWriter(a.logs, proto.AgentService), "http: ", 0),
		ConnContext:       withSession(sess),
	}
	go func() {
		select {
		case <-sess.CloseChan():
		case <-ctx.Done():
		}
		srv.Close()
		sess.Close()
	}()
	err = srv.Serve(sess)
	sess.Close()
	a.log.Info("host session ended")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ServeListener serves every connection accepted on ln (Unix socket or TCP
// when not PID 1, AF_VSOCK under Firecracker), one session each.
func (a *Agent) ServeListener(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("accept: %w", err)
		}
		go func() {
			if err := a.serveListenerConn(ctx, conn); err != nil && ctx.Err() == nil {
				a.log.Warn("host connection ended", "err", err)
			}
		}()
	}
}

// ServePort serves a persistent stream such as a virtio-serial port: open
// returns a fresh handle on it. Whenever a session ends (the host
// disconnected, or its reconnect preamble broke the old session), the
// handle is closed and reopened and the agent waits for a new handshake.
// While no host is connected a virtio-serial read returns EOF at once, so
// reopening is paced.
func (a *Agent) ServePort(ctx context.Context, open func() (io.ReadWriteCloser, error)) error {
	const pace = 100 * time.Millisecond
	var lastOpenErr string
	for ctx.Err() == nil {
		h, err := open()
		if err != nil {
			if err.Error() != lastOpenErr {
				a.log.Error("open agent port", "err", err)
				lastOpenErr = err.Error()
			}
			sleepCtx(ctx, time.Second)
			continue
		}
		lastOpenErr = ""
		start := time.Now()
		err = a.ServeConn(ctx, h)
		if err != nil && !errors.Is(err, io.EOF) && ctx.Err() == nil {
			a.log.Debug("agent port session ended", "err", err)
		}
		if time.Since(start) < pace {
			sleepCtx(ctx, pace)
		}
	}
	return ctx.Err()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// FindVirtioPort returns the /dev path of the virtio-serial port called
// name, looking in sysfsDir (normally /sys/class/virtio-ports) because
// there is no udev to create /dev/virtio-ports/<name> links.
func FindVirtioPort(sysfsDir, name string) (string, error) {
	entries, err := filepath.Glob(filepath.Join(sysfsDir, "*", "name"))
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		b, err := os.ReadFile(e)
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(e)), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %q under %s", name, sysfsDir)
}

// OpenVirtioPort returns an opener for ServePort on the port called name.
func OpenVirtioPort(name string) func() (io.ReadWriteCloser, error) {
	return func() (io.ReadWriteCloser, error) {
		dev, err := FindVirtioPort("/sys/class/virtio-ports", name)
		if err != nil {
			return nil, err
		}
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("open virtio port: %w", err)
		}
		return f, nil
	}
}

// vsockListener accepts AF_VSOCK connections. net.FileListener does not
// know AF_VSOCK, so accept runs through the runtime poller by hand.
type vsockListener struct {
	f    *os.File
	port uint32
}

// ListenVsock listens on AF_VSOCK port on any CID.
func ListenVsock(port uint32) (net.Listener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock listen: %w", err)
	}
	return &vsockListener{f: os.NewFile(uintptr(fd), "vsock"), port: port}, nil
}

func (l *vsockListener) Accept() (net.Conn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		return !errors.Is(aerr, unix.EAGAIN)
	})
	if err != nil {
		return nil, err
	}
	if aerr != nil {
		return nil, fmt.Errorf("vsock accept: %w", aerr)
	}
	return &vsockConn{File: os.NewFile(uintptr(nfd), "vsock-conn")}, nil
}

func (l *vsockListener) Close() error   { return l.f.Close() }
func (l *vsockListener) Addr() net.Addr { return vsockAddr(l.port) }

type vsockAddr uint32

func (a vsockAddr) Network() string { return "vsock" }
func (a vsockAddr) String() string  { return fmt.Sprintf("vsock:%d", uint32(a)) }

// vsockConn adapts an accepted vsock fd to net.Conn.
type vsockConn struct{ *os.File }

func (c *vsockConn) LocalAddr() net.Addr  { return vsockAddr(0) }
func (c *vsockConn) RemoteAddr() net.Addr { return vsockAddr(0) }
