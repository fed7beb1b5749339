package vmm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/hostenv"
)

// Process is a hypervisor process, either started by this daemon or
// re-attached after a restart. Exit is observed through a pidfd registered
// with Go's poller, so no thread blocks per VM, it works for children and
// non-children alike, and signals can never hit a reused pid.
type Process struct {
	pid       int
	startTime uint64
	bootID    string
	// stderrPath is read for the tail that explains an unexpected exit.
	stderrPath string

	pidfd *os.File
	// cmd is set when the process is our child: it is reaped through
	// cmd.Wait, which also yields its exit status.
	cmd  *exec.Cmd
	done chan struct{}

	mu sync.Mutex // guards exitErr, released, exitHook
	// exitErr is how the process ended (nil: exit status 0).
	exitErr  error
	released bool
	// exitHook, when set, may replace the exit error (QEMU turns a clean
	// exit after a guest reset into an error).
	exitHook func(error) error
}

// ProcessOptions configure StartProcess.
type ProcessOptions struct {
	// Dir is the working directory.
	Dir string
	// OutputPath receives the process's stdout and stderr (appended).
	OutputPath string
	// StdoutPath, when set, receives stdout separately (Firecracker writes
	// the guest console there).
	StdoutPath string
	// NetnsPath, when set, starts the process inside that network
	// namespace (through nsenter, which execs in place: the pid stays).
	NetnsPath string
	// Env is the environment; nil is hostenv.Minimal(): a hypervisor
	// runs guest-controlled emulation and must not hold the daemon's
	// secrets (HANGAR_SEAL_KEY, the database URL).
	Env []string
}

// StartProcess spawns argv in its own session, detached from the daemon's
// lifetime (no parent-death signal, stdin /dev/null, output to a file), and
// starts watching it.
func StartProcess(argv []string, opts ProcessOptions) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("start process: empty argv")
	}
	if opts.NetnsPath != "" {
		argv = append([]string{"nsenter", "--net=" + opts.NetnsPath, "--"}, argv...)
	}
	out, err := os.OpenFile(opts.OutputPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open hypervisor output: %w", err)
	}
	defer out.Close()
	stdout := out
	if opts.StdoutPath != "" {
		f, err := os.OpenFile(opts.StdoutPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return nil, fmt.Errorf("open hypervisor stdout: %w", err)
		}
		defer f.Close()
		stdout = f
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = opts.Dir
	cmd.Env = opts.Env
	if cmd.Env == nil {
		cmd.Env = hostenv.Minimal()
	}
	cmd.Stdout = stdout
	cmd.Stderr = out
	// Setsid: its own session and process group, so the daemon's
	// terminal signals and process-group kills do not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	// An unreaped child cannot have its pid reused, so opening the pidfd
	// after Start is race-free.
	p, err := attach(cmd.Process.Pid, opts.OutputPath)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	p.cmd = cmd
	go p.watch()
	return p, nil
}

// AttachProcess re-attaches to a process started earlier (by this or a
// previous daemon) and verifies it is the same process: same boot, same
// start time. stderrPath is only used for exit diagnostics.
func AttachProcess(pid int, startTime uint64, bootID, stderrPath string) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("attach pid %d: %w", pid, ErrProcessGone)
	}
	if cur, err := BootID(); err == nil && bootID != "" && cur != bootID {
		return nil, fmt.Errorf("attach pid %d: host rebooted since it started: %w", pid, ErrProcessGone)
	}
	p, err := attach(pid, stderrPath)
	if err != nil {
		return nil, err
	}
	// The pidfd pins the process: if the start time read after opening it
	// matches, the pidfd refers to the process we persisted.
	if p.startTime != startTime {
		p.pidfd.Close()
		return nil, fmt.Errorf("attach pid %d: start time %d, expected %d: %w", pid, p.startTime, startTime, ErrPIDReused)
	}
	if zombie(pid) {
		p.pidfd.Close()
		return nil, fmt.Errorf("attach pid %d: %w", pid, ErrProcessGone)
	}
	go p.watch()
	return p, nil
}

func attach(pid int, stderrPath string) (*Process, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("open pidfd %d: %w", pid, ErrProcessGone)
		}
		return nil, fmt.Errorf("open pidfd %d: %w", pid, err)
	}
	// A non-blocking fd given to os.NewFile is registered with the
	// runtime poller; pidfds become readable when the process exits.
	f := os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid))
	st, err := ProcStartTime(pid)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read start time of pid %d: %w", pid, ErrProcessGone)
	}
	boot, _ := BootID()
	return &Process{
		pid:        pid,
		startTime:  st,
		bootID:     boot,
		stderrPath: stderrPath,
		pidfd:      f,
		done:       make(chan struct{}),
	}, nil
}

// watch waits for the pidfd to become readable, records the exit, and
// closes done. Release closes the pidfd, which ends the wait early.
func (p *Process) watch() {
	rc, err := p.pidfd.SyscallConn()
	if err == nil {
		err = rc.Read(func(fd uintptr) bool {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, perr := unix.Poll(pfd, 0)
			return perr == nil && n > 0
		})
	}
	p.mu.Lock()
	released := p.released
	p.mu.Unlock()
	if released {
		if p.cmd != nil {
			// Still reap our child when it exits, so no zombie remains
			// while this daemon lives.
			go func() { _ = p.cmd.Wait() }()
		}
		return
	}
	var exitErr error
	switch {
	case err != nil:
		exitErr = fmt.Errorf("watch hypervisor pid %d: %w", p.pid, err)
	case p.cmd != nil:
		if werr := p.cmd.Wait(); werr != nil {
			exitErr = fmt.Errorf("hypervisor %w", werr)
			if tail := tailFile(p.stderrPath, 2048); tail != "" {
				exitErr = fmt.Errorf("%w: %s", exitErr, tail)
			}
		}
	default:
		exitErr = ErrExitUnknown
	}
	p.mu.Lock()
	hook := p.exitHook
	p.mu.Unlock()
	if hook != nil {
		exitErr = hook(exitErr)
	}
	p.mu.Lock()
	p.exitErr = exitErr
	p.mu.Unlock()
	close(p.done)
	p.pidfd.Close()
}

// SetExitHook lets a driver refine the exit error once (before Done).
func (p *Process) SetExitHook(h func(error) error) {
	p.mu.Lock()
	p.exitHook = h
	p.mu.Unlock()
}

// PID is the process id.
func (p *Process) PID() int { return p.pid }

// StartTime is the process's start time in clock ticks after boot.
func (p *Process) StartTime() uint64 { return p.startTime }

// BootID is the host boot id read when the process was attached.
func (p *Process) BootID() string { return p.bootID }

// Child reports whether this daemon started the process (and can therefore
// read its exit status).
func (p *Process) Child() bool { return p.cmd != nil }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is the exit error; meaningful after Done.
func (p *Process) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// Wait waits for exit or ctx.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Signal sends sig through the pidfd. Signalling an exited process is not
// an error.
func (p *Process) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	released := p.released
	p.mu.Unlock()
	if released {
		return ErrReleased
	}
	if p.Exited() {
		return nil
	}
	rc, err := p.pidfd.SyscallConn()
	var serr error
	if err == nil {
		err = rc.Control(func(fd uintptr) {
			serr = unix.PidfdSendSignal(int(fd), sig, nil, 0)
		})
	}
	if err == nil {
		err = serr
	}
	if err != nil && !errors.Is(err, unix.ESRCH) && !p.Exited() {
		return fmt.Errorf("signal pid %d: %w", p.pid, err)
	}
	return nil
}

// Kill sends SIGKILL.
func (p *Process) Kill() error { return p.Signal(syscall.SIGKILL) }

// Release stops watching without touching the process. It reports
// whether this call released it (false when it already was).
func (p *Process) Release() bool {
	p.mu.Lock()
	if p.released {
		p.mu.Unlock()
		return false
	}
	p.released = true
	p.mu.Unlock()
	// Closing the pidfd wakes watch, which then returns without closing
	// done.
	p.pidfd.Close()
	return true
}

// Released reports whether Release was called.
func (p *Process) Released() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.released
}

// ProcStartTime reads field 22 (starttime) of /proc/<pid>/stat.
func ProcStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStartTime(b)
}

func parseStartTime(stat []byte) (uint64, error) {
	// comm (field 2) may contain spaces and parentheses: fields after it
	// are counted from the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	fields := strings.Fields(string(stat[i+1:]))
	// fields[0] is field 3 (state); starttime is field 22.
	if len(fields) < 20 {
		return 0, errors.New("short /proc stat")
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// zombie reports whether pid has exited but not been reaped.
func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] == 'Z' || b[i+2] == 'X'
}

// BootID is the host's current boot id.
func BootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// tailFile returns up to max trailing bytes of path, trimmed, as one line
// per original line joined by " | " so it reads well inside an error.
func tailFile(path string, max int64) string {
	if path == "" {
		return ""
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := fi.Size() - max
	if off < 0 {
		off = 0
	}
	buf := make([]byte, fi.Size()-off)
	n, _ := f.ReadAt(buf, off)
	s := strings.TrimSpace(string(buf[:n]))
	if off > 0 {
		if j := strings.IndexByte(s, '\n'); j >= 0 {
			s = s[j+1:]
		}
	}
	lines := strings.Split(s, "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return strings.Join(lines, " | ")
}

// TailFile is tailFile for drivers.
func TailFile(path string, max int64) string { return tailFile(path, max) }

// Stop ends the hypervisor process the way both drivers do: ask it to shut
// down (ask gets 2 s: a QMP quit, a Firecracker SendCtrlAltDel), give it
// grace to exit, then SIGKILL and wait for the exit. what names the
// process in messages ("qemu", "firecracker").
func (p *Process) Stop(ctx context.Context, what string, grace time.Duration, ask func(context.Context) error, log *slog.Logger) error {
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := ask(actx)
	cancel()
	if err != nil {
		log.Warn(what+": shutdown request failed, killing it", "pid", p.pid, "error", err)
	} else {
		gctx, cancel := context.WithTimeout(ctx, grace)
		_ = p.Wait(gctx)
		cancel()
		if p.Exited() {
			return nil
		}
		log.Warn(what+" did not exit after the shutdown request, killing it", "pid", p.pid, "grace", grace)
	}
	if err := p.Kill(); err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s pid %d survived SIGKILL", what, p.pid)
	}
}
