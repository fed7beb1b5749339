package agentlink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// DialQEMU connects to the Unix socket of the QEMU chardev behind the
// virtio-serial port proto.VirtioPortName and runs the handshake; it waits
// until the agent answers or ctx ends. Calling it again after the daemon
// restarted re-attaches to a running VM: the agent drops its old session.
func DialQEMU(ctx context.Context, socketPath string, opts Options) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("dial agent chardev: %w", err)
	}
	return New(ctx, conn, opts)
}

// DialFirecracker connects to the guest's AF_VSOCK port through
// Firecracker's hybrid-vsock Unix socket (uds_path): it writes
// "CONNECT <port>\n" and expects "OK <host port>\n". Firecracker closes the
// connection while nothing listens in the guest yet, so this retries every
// 100ms until ctx ends.
func DialFirecracker(ctx context.Context, udsPath string, port uint32, opts Options) (*Client, error) {
	var lastErr error
	for {
		conn, err := dialHybridVsock(ctx, udsPath, port)
		if err == nil {
			return New(ctx, conn, opts)
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial agent vsock: %w (last error: %w)", ctx.Err(), lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func dialHybridVsock(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("dial vsock socket: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	// Read byte by byte: the bytes after the line belong to the handshake.
	var line []byte
	b := make([]byte, 1)
	for len(line) < 64 {
		if _, err := conn.Read(b); err != nil {
			conn.Close()
			return nil, fmt.Errorf("read CONNECT answer: %w", err)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	if !strings.HasPrefix(string(line), "OK ") {
		conn.Close()
		return nil, errors.New("vsock CONNECT refused: " + strings.TrimSpace(string(line)))
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}
