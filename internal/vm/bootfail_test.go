package vm

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/vmm"
	"github.com/hangar-vm/hangar/pkg/api"
)

// exitingDriver starts a real process that fails the way a hypervisor
// does when it cannot boot: a message on stderr, exit status 1.
type exitingDriver struct{ t *testing.T }

func (d exitingDriver) Name() string { return "qemu" }

func (d exitingDriver) Start(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	stderr := filepath.Join(spec.RunDir, "stderr.log")
	p, err := vmm.StartProcess([]string{"sh", "-c", "sleep 0.3; echo 'qemu: could not load kernel' >&2; exit 1"},
		vmm.ProcessOptions{Dir: spec.RunDir, OutputPath: stderr})
	if err != nil {
		return nil, err
	}
	return &exitingHandle{ProcessHandle: vmm.ProcessHandle{VMID: spec.ID, Proc: p}, dir: spec.RunDir}, nil
}

func (d exitingDriver) Recover(context.Context, vmm.State) (vmm.Handle, error) {
	return nil, vmm.ErrNotRunning
}

type exitingHandle struct {
	vmm.ProcessHandle
	dir string
}

func (h *exitingHandle) State() vmm.State             { return vmm.State{ID: h.VMID, PID: h.Proc.PID()} }
func (h *exitingHandle) Stop(context.Context) error   { return h.Kill() }
func (h *exitingHandle) Pause(context.Context) error  { return vmm.ErrNotRunning }
func (h *exitingHandle) Resume(context.Context) error { return vmm.ErrNotRunning }
func (h *exitingHandle) ConsolePath() string          { return filepath.Join(h.dir, "console.log") }
func (h *exitingHandle) Release() error               { return h.ReleaseWith(nil) }
func (h *exitingHandle) Agent() vmm.AgentEndpoint {
	return vmm.AgentEndpoint{Kind: vmm.AgentVirtioSerial, Path: filepath.Join(h.dir, "no-agent.sock")}
}
func (h *exitingHandle) Snapshot(context.Context, string, vmm.SnapshotOptions) (vmm.SnapshotMeta, error) {
	return vmm.SnapshotMeta{}, vmm.ErrNotRunning
}

// TestBootFailureRecordedOnce: a hypervisor that exits during boot is
// recorded as failed once, with its exit status and stderr tail. The boot
// goroutine and the exit watcher used to both record it, racing over
// which reason won and counting two failures.
func TestBootFailureRecordedOnce(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	s, err := store.Open(ctx, filepath.Join(dir, "hangar.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := New(Config{DataDir: dir, MaxBrowserVMs: 1, BootTimeout: 20 * time.Second}, s, events.NewBus(s, log), fakeImages{}, exitingDriver{t}, log)
	defer m.Close()
	owner := store.User{ID: "u1", Role: "admin"}
	if err := s.CreateUser(ctx, store.User{ID: "u1", Name: "u1", Role: "admin"}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Create(ctx, owner, api.CreateVMRequest{Kind: api.KindBrowser})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	var got api.VM
	for {
		got, err = m.Get(ctx, owner, v.ID)
		if err == nil && got.State == api.VMFailed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm not failed: %+v %v", got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // let a second recorder, if any, run
	got, _ = m.Get(ctx, owner, v.ID)
	if !strings.Contains(got.LastError, "exit status 1") || !strings.Contains(got.LastError, "could not load kernel") {
		t.Fatalf("last_error %q lacks the hypervisor's exit status and stderr", got.LastError)
	}
	var mm dto.Metric
	if err := m.metrics.failures.Write(&mm); err != nil {
		t.Fatal(err)
	}
	if n := mm.GetCounter().GetValue(); n != 1 {
		t.Fatalf("the failure was recorded %v times, want once", n)
	}
}
