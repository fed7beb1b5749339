package agentlink

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// ErrTimeout is returned (wrapped) by Exec when the agent killed the command
// because its timeout passed.
var ErrTimeout = errors.New("command timed out")

// ExecSession is a running command in the guest. Write sends stdin; Wait
// copies output until the command exits.
type ExecSession struct {
	stream net.Conn
	br     *bufio.Reader
	wmu    sync.Mutex // serialises frame writes (stdin, resize, signal)
	stop   func() bool
}

// StartExec starts req in the guest. Cancelling ctx kills the command.
func (c *Client) StartExec(ctx context.Context, req proto.ExecRequest) (*ExecSession, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	stream, br, err := c.upgrade(ctx, proto.PathExec, nil, proto.UpgradeExec, body)
	if err != nil {
		return nil, fmt.Errorf("agent exec: %w", err)
	}
	s := &ExecSession{stream: stream, br: br}
	// Closing the stream makes the agent kill the command.
	s.stop = context.AfterFunc(ctx, func() { abort(stream) })
	return s, nil
}

func (s *ExecSession) writeFrame(typ byte, p []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return proto.WriteFrame(s.stream, typ, p)
}

// Write sends p to the command's stdin.
func (s *ExecSession) Write(p []byte) (int, error) {
	const chunk = 32 << 10
	n := 0
	for len(p) > 0 {
		m := min(len(p), chunk)
		if err := s.writeFrame(proto.FrameStdin, p[:m]); err != nil {
			return n, err
		}
		n += m
		p = p[m:]
	}
	return n, nil
}

// CloseStdin closes the command's stdin (sends ^D on a PTY).
func (s *ExecSession) CloseStdin() error { return s.writeFrame(proto.FrameStdinEOF, nil) }

// Resize changes the PTY's size.
func (s *ExecSession) Resize(rows, cols uint16) error {
	var p [4]byte
	binary.BigEndian.PutUint16(p[:], rows)
	binary.BigEndian.PutUint16(p[2:], cols)
	return s.writeFrame(proto.FrameResize, p[:])
}

// Signal sends sig to the command's process group.
func (s *ExecSession) Signal(sig syscall.Signal) error {
	return s.writeFrame(proto.FrameSignal, []byte{byte(sig)})
}

// Wait copies stdout and stderr (nil discards) until the command exits and
// returns its status. In PTY mode all output arrives as stdout.
func (s *ExecSession) Wait(stdout, stderr io.Writer) (proto.ExitStatus, error) {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	for {
		typ, payload, err := proto.ReadFrame(s.br)
		if err != nil {
			return proto.ExitStatus{}, fmt.Errorf("agent exec: stream ended before the exit status: %w", err)
		}
		switch typ {
		case proto.FrameStdout:
			if _, err := stdout.Write(payload); err != nil {
				return proto.ExitStatus{}, fmt.Errorf("agent exec: write stdout: %w", err)
			}
		case proto.FrameStderr:
			if _, err := stderr.Write(payload); err != nil {
				return proto.ExitStatus{}, fmt.Errorf("agent exec: write stderr: %w", err)
			}
		case proto.FrameExit:
			var st proto.ExitStatus
			if err := json.Unmarshal(payload, &st); err != nil {
				return st, fmt.Errorf("agent exec: decode exit status: %w", err)
			}
			return st, nil
		}
	}
}

// Close ends the session; a command still running is killed.
func (s *ExecSession) Close() error {
	s.stop()
	return s.stream.Close()
}

// Exec runs req in the guest, feeding stdin (nil: empty) and copying its
// output, and returns the exit code (128+n when killed by signal n). When
// the command's timeout passed it returns an error wrapping ErrTimeout.
func (c *Client) Exec(ctx context.Context, req proto.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	s, err := c.StartExec(ctx, req)
	if err != nil {
		return -1, err
	}
	defer s.Close()
	if stdin == nil {
		if err := s.CloseStdin(); err != nil {
			return -1, fmt.Errorf("agent exec: close stdin: %w", err)
		}
	} else {
		// This goroutine ends when stdin does; a reader that never ends
		// (a terminal) outlives the command, as with os/exec.
		go func() {
			if _, err := io.Copy(s, stdin); err == nil {
				_ = s.CloseStdin()
			}
		}()
	}
	st, err := s.Wait(stdout, stderr)
	if ctx.Err() != nil {
		// The agent killed the command because the stream was closed.
		return -1, fmt.Errorf("agent exec: %w", ctx.Err())
	}
	if err != nil {
		return -1, err
	}
	if st.Error != "" {
		return st.ExitCode, fmt.Errorf("agent exec: %s", st.Error)
	}
	if st.TimedOut {
		return st.ExitCode, fmt.Errorf("agent exec: %w", ErrTimeout)
	}
	return st.ExitCode, nil
}
