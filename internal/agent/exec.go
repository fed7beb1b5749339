package agent

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// upgrade hijacks the request's stream and answers 101; from then on the
// stream belongs to the caller. The returned reader holds bytes the HTTP
// server had already buffered.
func upgrade(w http.ResponseWriter, protocol string) (net.Conn, *bufio.Reader, error) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be hijacked")
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	_, err = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+protocol+"\r\n\r\n")
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, brw.Reader, nil
}

// execProc is a running command and the state its goroutines share.
type execProc struct {
	pid int
	mu  sync.Mutex // guards exited and timedOut
	// exited is set once the process is reaped: its pid may be reused, so
	// no signal may be sent after that.
	exited   bool
	timedOut bool
}

func (p *execProc) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.exited {
		// The command leads its own process group (Setpgid or Setsid):
		// signal the whole group so its children go too.
		_ = unix.Kill(-p.pid, sig)
	}
}

func (a *Agent) handleExec(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != proto.UpgradeExec {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "exec needs Upgrade: "+proto.UpgradeExec)
		return
	}
	var req proto.ExecRequest
	if !readJSON(w, r, &req) {
		return
	}
	cmd, err := buildCmd(req.Argv, a.net.withEnv(req.Env), req.Dir, req.User)
	if err != nil {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, err.Error())
		return
	}
	// closeAfterStart are the child's ends of its stdio.
	var closeAfterStart []*os.File
	var stdinW, ptmx *os.File
	var outputs []*os.File // read ends; outputs[0] → stdout, [1] → stderr
	fail := func(status int, code, msg string) {
		for _, f := range append(append(closeAfterStart, outputs...), stdinW, ptmx) {
			if f != nil {
				f.Close()
			}
		}
		writeError(w, status, code, msg)
	}
	if req.PTY != nil {
		cmd.Env = append(cmd.Env, "TERM=xterm-256color")
		m, tty, err := pty.Open()
		if err != nil {
			fail(http.StatusInternalServerError, proto.CodeInternal, "open pty: "+err.Error())
			return
		}
		ptmx = m
		closeAfterStart = append(closeAfterStart, tty)
		if err := pty.Setsize(ptmx, &pty.Winsize{Rows: req.PTY.Rows, Cols: req.PTY.Cols}); err != nil {
			fail(http.StatusInternalServerError, proto.CodeInternal, "set pty size: "+err.Error())
			return
		}
		if c := cmd.SysProcAttr.Credential; c != nil {
			_ = tty.Chown(int(c.Uid), int(c.Gid))
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
		outputs = []*os.File{ptmx}
	} else {
		inR, inW, err1 := os.Pipe()
		outR, outW, err2 := os.Pipe()
		errR, errW, err3 := os.Pipe()
		closeAfterStart = append(closeAfterStart, inR, outW, errW)
		stdinW = inW
		outputs = []*os.File{outR, errR}
		if err := errors.Join(err1, err2, err3); err != nil {
			fail(http.StatusInternalServerError, proto.CodeInternal, "pipes: "+err.Error())
			return
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
		cmd.SysProcAttr.Setpgid = true
	}
	waitCh, err := a.procs.start(cmd)
	if err != nil {
		fail(http.StatusBadRequest, proto.CodeBadRequest, "start: "+err.Error())
		return
	}
	for _, f := range closeAfterStart {
		f.Close()
	}
	defer cmd.Process.Release()
	proc := &execProc{pid: cmd.Process.Pid}
	a.log.Debug("exec started", "pid", proc.pid, "argv0", req.Argv[0], "pty", req.PTY != nil)

	conn, br, err := upgrade(w, proto.UpgradeExec)
	if err != nil {
		proc.signal(syscall.SIGKILL)
		<-waitCh
		for _, f := range append(outputs, stdinW, ptmx) {
			if f != nil {
				f.Close()
			}
		}
		return
	}
	defer conn.Close()

	var wmu sync.Mutex // serialises frame writes from the output copiers and the exit
	writeFrame := func(typ byte, p []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return proto.WriteFrame(conn, typ, p)
	}

	// Host → command: stdin, resize, signals. Stdin goes through a queue
	// to its own writer, so a command that does not read its stdin cannot
	// block the resize and signal frames behind it. The host going away
	// kills the command: nobody could read its output or stop it.
	stdinQ := make(chan []byte, 64) // nil element: close stdin
	go func() {
		stdin := io.Writer(stdinW)
		if ptmx != nil {
			stdin = ptmx
		}
		for p := range stdinQ {
			if p == nil {
				if stdinW != nil {
					stdinW.Close()
				} else {
					_, _ = ptmx.Write([]byte{4}) // ^D on a terminal
				}
				continue
			}
			_, _ = stdin.Write(p)
		}
	}()
	hostGone := make(chan struct{})
	go func() {
		defer close(hostGone)
		defer close(stdinQ)
		for {
			typ, payload, err := proto.ReadFrame(br)
			if err != nil {
				proc.signal(syscall.SIGKILL)
				return
			}
			switch typ {
			case proto.FrameStdin:
				stdinQ <- payload
			case proto.FrameStdinEOF:
				stdinQ <- nil
			case proto.FrameResize:
				if ptmx != nil && len(payload) == 4 {
					_ = pty.Setsize(ptmx, &pty.Winsize{Rows: binary.BigEndian.Uint16(payload), Cols: binary.BigEndian.Uint16(payload[2:])})
				}
			case proto.FrameSignal:
				if len(payload) == 1 {
					proc.signal(syscall.Signal(payload[0]))
				}
			}
		}
	}()

	var copiers sync.WaitGroup
	for i, f := range outputs {
		typ := proto.FrameStdout
		if i == 1 {
			typ = proto.FrameStderr
		}
		copiers.Add(1)
		go func() {
			defer copiers.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := f.Read(buf)
				if n > 0 {
					if werr := writeFrame(typ, buf[:n]); werr != nil {
						proc.signal(syscall.SIGKILL)
						return
					}
				}
				if err != nil {
					return // EOF, or EIO from a pty whose last holder closed it
				}
			}
		}()
	}

	var timeout <-chan time.Time
	if req.Timeout > 0 {
		t := time.NewTimer(time.Duration(req.Timeout))
		defer t.Stop()
		timeout = t.C
	}
	var ws unix.WaitStatus
	for waiting := true; waiting; {
		select {
		case ws = <-waitCh:
			waiting = false
		case <-timeout:
			proc.mu.Lock()
			proc.timedOut = true
			proc.mu.Unlock()
			proc.signal(syscall.SIGKILL)
			timeout = nil
		}
	}
	proc.mu.Lock()
	proc.exited = true
	timedOut := proc.timedOut
	proc.mu.Unlock()

	// Output still in the pipes is sent; a background child holding them
	// open does not delay the exit status for long.
	copied := make(chan struct{})
	go func() {
		copiers.Wait()
		close(copied)
	}()
	select {
	case <-copied:
	case <-time.After(2 * time.Second):
		for _, f := range outputs {
			f.Close()
		}
		<-copied
	}
	for _, f := range append(outputs, stdinW, ptmx) {
		if f != nil {
			f.Close()
		}
	}
	st := proto.ExitStatus{ExitCode: exitCode(ws), TimedOut: timedOut}
	if ws.Signaled() {
		st.Signal = ws.Signal().String()
	}
	payload, _ := json.Marshal(st)
	if err := writeFrame(proto.FrameExit, payload); err != nil {
		a.log.Debug("exec: host gone before the exit status", "pid", proc.pid)
		return
	}
	a.log.Debug("exec finished", "pid", proc.pid, "status", describeExit(ws))
	// Wait (bounded) for the host to close its side, so the exit frame is
	// read before the stream is torn down.
	select {
	case <-hostGone:
	case <-time.After(5 * time.Second):
	}
}

// handleForward connects the stream to 127.0.0.1:port inside the guest.
func (a *Agent) handleForward(w http.ResponseWriter, r *http.Request) {
	port, err := strconv.Atoi(r.URL.Query().Get(proto.QueryPort))
	if err != nil || port < 1 || port > 65535 {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "port must be 1-65535")
		return
	}
	if r.Header.Get("Upgrade") != proto.UpgradeForward {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "forward needs Upgrade: "+proto.UpgradeForward)
		return
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	target, err := d.DialContext(r.Context(), "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		writeError(w, http.StatusBadGateway, proto.CodeUnavailable, "connect to guest port: "+err.Error())
		return
	}
	conn, br, err := upgrade(w, proto.UpgradeForward)
	if err != nil {
		target.Close()
		return
	}
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(target, br)
		if tc, ok := target.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(conn, target)
		// Closing a yamux stream half-closes it: the host sees EOF and may
		// still send.
		_ = conn.Close()
		done <- struct{}{}
	}()
	<-done
	<-done
	target.Close()
	conn.Close()
}
