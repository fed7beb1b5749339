package vmm

import (
	"context"
	"fmt"
	"sync"
)

// ProcessHandle is the part of a Handle both drivers share: the hypervisor
// process, whether the handle was released, and whether a stop was asked
// for. Drivers embed it and add their control channel (QMP, Firecracker's
// API), so the rules below are written once:
//
//   - a released handle refuses everything with ErrReleased, and Release is
//     idempotent (the control channel is closed once);
//   - operations that need a live hypervisor fail with ErrNotRunning after
//     it exited, except Stop, for which an exited process is success;
//   - an exit after MarkStopping is an exit on purpose, not a failure.
type ProcessHandle struct {
	// VMID names the VM in errors.
	VMID string
	// Proc is the hypervisor process.
	Proc *Process

	mu sync.Mutex // guards stopping
	// stopping is set when Stop began ending the process on purpose.
	stopping bool
}

// ID is the VM's id.
func (h *ProcessHandle) ID() string { return h.VMID }

// Done is closed when the process has exited.
func (h *ProcessHandle) Done() <-chan struct{} { return h.Proc.Done() }

// ExitErr is nil while the process runs, then how it ended.
func (h *ProcessHandle) ExitErr() error {
	if !h.Proc.Exited() {
		return nil
	}
	return h.Proc.Err()
}

// Wait waits for the process to exit or ctx to end.
func (h *ProcessHandle) Wait(ctx context.Context) error { return h.Proc.Wait(ctx) }

// Live is nil while the handle is held and the process runs, else
// ErrReleased or ErrNotRunning.
func (h *ProcessHandle) Live() error {
	if h.Proc.Released() {
		return ErrReleased
	}
	if h.Proc.Exited() {
		return ErrNotRunning
	}
	return nil
}

// MarkStopping records that the process is being ended on purpose; it
// reports false when there is nothing to stop (exited: nil error) or the
// handle was released (ErrReleased).
func (h *ProcessHandle) MarkStopping() (bool, error) {
	if err := h.Live(); err != nil {
		if err == ErrNotRunning {
			return false, nil
		}
		return false, err
	}
	h.mu.Lock()
	h.stopping = true
	h.mu.Unlock()
	return true, nil
}

// Stopping reports whether MarkStopping was called.
func (h *ProcessHandle) Stopping() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopping
}

// Kill sends SIGKILL; ErrReleased after Release.
func (h *ProcessHandle) Kill() error {
	if err := h.Proc.Kill(); err != nil {
		return fmt.Errorf("kill vm %s: %w", h.VMID, err)
	}
	return nil
}

// ReleaseWith stops watching the process without touching it and, the
// first time only, runs closeControl (nil: nothing) to let go of the
// driver's control channel so a later Recover can take it.
func (h *ProcessHandle) ReleaseWith(closeControl func() error) error {
	if !h.Proc.Release() || closeControl == nil {
		return nil
	}
	return closeControl()
}
