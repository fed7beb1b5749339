package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// procTable is the agent's single reaper. As PID 1 the agent inherits every
// orphan, so something must call wait on any pid; but a blind wait(-1) loop
// would steal the exit status of commands the agent itself runs. Design:
// the agent never calls exec.Cmd.Wait. Every child is started through
// procTable.start, which registers the pid while holding mu; the reaper
// takes the same mu around each wait4(-1, WNOHANG), so it cannot reap a
// child before its waiter is registered. Statuses of registered pids are
// dispatched to their waiter; those of orphans are dropped.
//
// Children get stdio as *os.File only (pipes or a pty), so exec.Cmd starts
// no copying goroutines that Wait would have to collect.
type procTable struct {
	log *slog.Logger

	mu sync.Mutex // guards waiters; held across fork and across each wait4
	// waiters maps a pid to the channel that receives its exit status.
	waiters map[int]chan unix.WaitStatus
}

func newProcTable(log *slog.Logger) *procTable {
	return &procTable{log: log, waiters: map[int]chan unix.WaitStatus{}}
}

// start starts cmd and returns a channel that receives its exit status
// exactly once.
func (p *procTable) start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	p.waiters[cmd.Process.Pid] = ch
	return ch, nil
}

// run reaps children until ctx ends.
func (p *procTable) run(ctx context.Context) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGCHLD)
	defer signal.Stop(sig)
	p.reapAll()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
			p.reapAll()
		}
	}
}

func (p *procTable) reapAll() {
	for {
		var ws unix.WaitStatus
		p.mu.Lock()
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			p.mu.Unlock()
			continue
		}
		if err != nil || pid <= 0 {
			p.mu.Unlock()
			return
		}
		ch := p.waiters[pid]
		delete(p.waiters, pid)
		p.mu.Unlock()
		if ch != nil {
			ch <- ws
		} else {
			p.log.Debug("reaped orphan", "pid", pid, "status", describeExit(ws))
		}
	}
}

// describeExit renders a wait status like os.ProcessState.String.
func describeExit(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exit status %d", ws.ExitStatus())
	case ws.Signaled():
		return "signal: " + ws.Signal().String()
	default:
		return fmt.Sprintf("wait status %#x", uint32(ws))
	}
}

// exitCode maps a wait status to a shell-style exit code.
func exitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
