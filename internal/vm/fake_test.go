package vm

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/agent"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/internal/vmm"
)

// fakeDriver is a vmm.Driver without a hypervisor: Start runs a real guest
// agent (not as PID 1) on a Unix socket where QEMU's chardev would be, so
// the manager dials, waits for ready and stops it exactly as it would a
// VM. It is what the tests in this package replace; the agent is not.
type fakeDriver struct {
	// noAgent leaves the "guest" silent: the VM stays booting.
	noAgent bool
	// stopGate, when set, makes the first Handle.Stop wait for it to
	// close, so a test can hold a stop midway while other calls run.
	stopGate chan struct{}
	// stopping receives once the first Stop call waits on stopGate.
	stopping chan struct{}
	stops    atomic.Int32

	mu      sync.Mutex // guards handles
	handles []*fakeHandle
}

func (d *fakeDriver) Name() string { return "fake" }

func (d *fakeDriver) Start(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	h := &fakeHandle{d: d, spec: spec, done: make(chan struct{}), sock: filepath.Join(spec.RunDir, "agent.sock")}
	actx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	ln, err := net.Listen("unix", h.sock)
	if err != nil {
		cancel()
		return nil, err
	}
	h.ln = ln
	if !d.noAgent {
		p, err := proto.ParseKernelArgs(spec.KernelArgs)
		if err != nil {
			cancel()
			ln.Close()
			return nil, err
		}
		a, err := agent.New(agent.Config{Token: p.Token, PowerOff: func(bool) { h.exit() }})
		if err != nil {
			cancel()
			ln.Close()
			return nil, err
		}
		go func() { _ = a.Run(actx) }()
		go func() { _ = a.ServeListener(actx, ln) }()
	}
	d.mu.Lock()
	d.handles = append(d.handles, h)
	d.mu.Unlock()
	return h, nil
}

func (d *fakeDriver) Recover(context.Context, vmm.State) (vmm.Handle, error) {
	return nil, vmm.ErrProcessGone
}

type fakeHandle struct {
	d      *fakeDriver
	spec   vmm.Spec
	sock   string
	ln     net.Listener
	cancel context.CancelFunc

	once sync.Once
	done chan struct{}
}

// exit is the "process" ending: the agent stops, Done closes.
func (h *fakeHandle) exit() {
	h.once.Do(func() {
		h.cancel()
		h.ln.Close()
		close(h.done)
	})
}

func (h *fakeHandle) ID() string { return h.spec.ID }
func (h *fakeHandle) State() vmm.State {
	return vmm.State{Driver: "fake", PID: os.Getpid(), RunDir: h.spec.RunDir, Agent: h.Agent()}
}
func (h *fakeHandle) Done() <-chan struct{} { return h.done }
func (h *fakeHandle) ExitErr() error        { return nil }
func (h *fakeHandle) Wait(ctx context.Context) error {
	select {
	case <-h.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *fakeHandle) Stop(ctx context.Context) error {
	if h.d.stopGate != nil && h.d.stops.Add(1) == 1 {
		h.d.stopping <- struct{}{}
		select {
		case <-h.d.stopGate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	h.exit()
	return nil
}
func (h *fakeHandle) Kill() error                  { h.exit(); return nil }
func (h *fakeHandle) Pause(context.Context) error  { return errors.New("fake: no pause") }
func (h *fakeHandle) Resume(context.Context) error { return errors.New("fake: no resume") }
func (h *fakeHandle) Agent() vmm.AgentEndpoint {
	return vmm.AgentEndpoint{Kind: vmm.AgentVirtioSerial, Path: h.sock}
}
func (h *fakeHandle) ConsolePath() string { return h.spec.ConsoleLog }
func (h *fakeHandle) Release() error      { return nil }
func (h *fakeHandle) Snapshot(context.Context, string, vmm.SnapshotOptions) (vmm.SnapshotMeta, error) {
	return vmm.SnapshotMeta{}, errors.New("fake: no snapshots")
}

type fakeImages struct{}

func (fakeImages) Boot(context.Context, string) (BootImage, error) {
	return BootImage{ID: "img_fake", Rootfs: "/nonexistent/rootfs.ext4", Kernel: "/nonexistent/bzImage", KernelRelease: "fake"}, nil
}

// backends are the stores the manager's tests run on: SQLite always,
// Postgres when HANGAR_TEST_POSTGRES is set (required under CI).
var backends = []struct {
	name string
	dsn  func(t *testing.T) string
}{
	{"sqlite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "hangar.db") }},
	{"postgres", func(t *testing.T) string { return testutil.PostgresDSN(t) }},
}

type harness struct {
	st    store.Store
	m     *Manager
	d     *fakeDriver
	alice store.User
}

// newHarness opens a store on dsn and makes a manager over d, and a user
// alice unless one is given (a second harness on the same database).
func newHarness(t *testing.T, dsn string, d *fakeDriver, cfg Config, user ...store.User) *harness {
	t.Helper()
	ctx := t.Context()
	log := testutil.Logger(t)
	st, err := store.Open(ctx, dsn, log)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	alice := store.User{ID: store.NewID("usr"), Name: "alice", Role: store.RoleUser}
	if len(user) > 0 {
		alice = user[0]
	} else if err := st.CreateUser(ctx, alice); err != nil {
		t.Fatalf("create user: %v", err)
	}
	// Unix socket paths are short: keep the data dir out of t.TempDir's
	// long names.
	dir, err := os.MkdirTemp("", "hvm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg.DataDir = dir
	if cfg.MaxBrowserVMs == 0 {
		cfg.MaxBrowserVMs = 4
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 20 * time.Second
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 2 * time.Second
	}
	m := New(cfg, st, events.NewBus(st, log), fakeImages{}, d, log)
	t.Cleanup(func() {
		d.mu.Lock()
		hs := d.handles
		d.mu.Unlock()
		for _, h := range hs {
			h.exit()
		}
		m.Close()
	})
	return &harness{st: st, m: m, d: d, alice: alice}
}

// waitState polls the store until VM id is in state or fails the test.
func (h *harness) waitState(t *testing.T, id, state string) store.VM {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		v, err := h.st.GetVM(t.Context(), id, "")
		if err == nil && v.State == state {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm %s: state %q (err %v), want %q", id, v.State, err, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
