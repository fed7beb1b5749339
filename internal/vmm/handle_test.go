package vmm

import (
	"context"
	"errors"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestProcessHandleRules: the bookkeeping both drivers share, on a real
// process: live while running; Stop's MarkStopping turns an exit into one
// on purpose; after the exit, operations see ErrNotRunning and a stop has
// nothing to do; after Release everything is ErrReleased, the control
// channel is closed exactly once, and the process is left alone.
func TestProcessHandleRules(t *testing.T) {
	dir := t.TempDir()
	start := func() *ProcessHandle {
		p, err := StartProcess([]string{"sleep", "60"}, ProcessOptions{Dir: dir, OutputPath: filepath.Join(dir, "out.log")})
		if err != nil {
			t.Fatal(err)
		}
		return &ProcessHandle{VMID: "vm-h", Proc: p}
	}

	h := start()
	if err := h.Live(); err != nil || h.ExitErr() != nil || h.ID() != "vm-h" {
		t.Fatalf("running: Live=%v ExitErr=%v ID=%q", h.Live(), h.ExitErr(), h.ID())
	}
	if running, err := h.MarkStopping(); !running || err != nil || !h.Stopping() {
		t.Fatalf("MarkStopping on a running process = %v, %v", running, err)
	}
	if err := h.Kill(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = h.Wait(ctx)
	if !errors.Is(h.Live(), ErrNotRunning) {
		t.Fatalf("exited: Live = %v, want ErrNotRunning", h.Live())
	}
	if running, err := h.MarkStopping(); running || err != nil {
		t.Fatalf("MarkStopping after exit = %v, %v; want nothing to do", running, err)
	}

	h = start()
	closed := 0
	closeControl := func() error { closed++; return nil }
	if err := h.ReleaseWith(closeControl); err != nil {
		t.Fatal(err)
	}
	if err := h.ReleaseWith(closeControl); err != nil || closed != 1 {
		t.Fatalf("second release: %v, control closed %d times; want once", err, closed)
	}
	if !errors.Is(h.Live(), ErrReleased) || !errors.Is(h.Kill(), ErrReleased) {
		t.Fatalf("released: Live=%v Kill=%v, want ErrReleased", h.Live(), h.Kill())
	}
	if _, err := h.MarkStopping(); !errors.Is(err, ErrReleased) {
		t.Fatalf("released: MarkStopping = %v, want ErrReleased", err)
	}
	if err := syscall.Kill(h.Proc.PID(), 0); err != nil {
		t.Fatalf("released process is gone: %v", err)
	}
	_ = syscall.Kill(h.Proc.PID(), syscall.SIGKILL)
}
