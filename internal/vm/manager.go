// Package vm owns the lifecycle of VMs: it turns API requests into image
// lookups, disks, hypervisor processes and agent links, records every state
// change in the store, and never hides why a VM failed.
//
// States: creating → booting → ready → stopping → stopped, plus failed (with
// last_error) and destroyed. A VM's console log lives outside its runtime
// directory, so it stays readable after the VM failed or was destroyed.
package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/netslot"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/vmm"
	"github.com/hangar-vm/hangar/pkg/api"
)

// Images gives the manager the artifacts a VM boots from. The daemon adapts
// the image cache to it; a lookup may build (and so wait).
type Images interface {
	// Boot returns what a VM of kind boots from: its image and the kernel
	// that image was built for.
	Boot(ctx context.Context, kind string) (BootImage, error)
}

// BootImage is one VM kind's artifacts.
type BootImage struct {
	ID            string // image id
	Rootfs        string // read-only root filesystem
	Kernel        string // the kernel the driver boots (bzImage or vmlinux)
	KernelRelease string
}

// Config are the manager's limits and places.
type Config struct {
	// DataDir holds vms/<id> (runtime: disks, sockets) and logs/vms/<id>
	// (console logs, preserved).
	DataDir string
	// MaxVMsPerUser counts every VM not destroyed.
	MaxVMsPerUser int
	// MaxBrowserVMs counts browser VMs on this host not stopped or
	// destroyed; 0 allows none.
	MaxBrowserVMs int
	// MaxBrowserVMsPerUser is the same count for one user's browser VMs,
	// so one user cannot hold every slot; 0 means MaxBrowserVMs.
	MaxBrowserVMsPerUser int
	// MaxVCPUsPerUser, MaxMemoryMiBPerUser and MaxDiskMiBPerUser bound the
	// totals over one user's VMs not destroyed (quota.go); 0 is no limit.
	MaxVCPUsPerUser     int
	MaxMemoryMiBPerUser int
	MaxDiskMiBPerUser   int
	// LogRetention is how long the logs of a destroyed VM are kept.
	LogRetention time.Duration
	// BootTimeout bounds the time from spawn to ready.
	BootTimeout time.Duration
	// UpperDiskMiB is the size of a persistent VM's sparse upper disk.
	UpperDiskMiB int
	// StopTimeout bounds a graceful shutdown through the agent before the
	// hypervisor is stopped hard.
	StopTimeout time.Duration
	// MaxFileBytes caps a file read from a VM (0: agentlink's default).
	MaxFileBytes int64
	// ConsoleMaxBytes caps the console log file; it is rotated at this
	// size with one older file kept (0: DefaultConsoleMaxBytes).
	ConsoleMaxBytes int64
	// RecoverTimeout bounds re-attaching to one hypervisor at daemon start
	// (default 30 s); all are re-attached at once.
	RecoverTimeout time.Duration
	// StopOnClose is the shutdown policy "stop": Close stops every running
	// VM (recorded as stopped) instead of leaving it running for the next
	// daemon to re-attach.
	StopOnClose bool
}

// Manager runs VMs. It is safe for concurrent use.
type Manager struct {
	cfg     Config
	store   store.Store
	bus     *events.Bus
	images  Images
	driver  vmm.Driver
	accel   string
	log     *slog.Logger
	metrics *metrics

	mu  sync.Mutex // guards vms
	vms map[string]*instance

	// lifecycle, when set, is told about ready and stopping VMs. Set
	// once before Recover.
	lifecycle Lifecycle

	// slots gives VMs their network; nil runs VMs without a network
	// device.
	slots    *netslot.Manager
	policies Policies

	// reconcileMu serialises reconciliation passes.
	reconcileMu sync.Mutex

	// hib serialises hibernate and resume per VM (hibernate.go).
	hib hibernator
	// tmpl serialises template builds (template.go); pool keeps warm
	// browser clones (pool.go).
	tmpl templates
	pool warmPool

	wg sync.WaitGroup // boot and watch goroutines
	// closing ends the watchers when the daemon lets go of its VMs.
	closing chan struct{}
}

// instance is the live side of one VM.
type instance struct {
	id string

	mu sync.Mutex // guards the fields below
	// handle is the hypervisor process, nil when none runs.
	handle vmm.Handle
	// link is the agent session, nil until the agent answered.
	link *agentlink.Client
	// expectExit is set before the manager stops or kills the
	// hypervisor, so the watcher does not report the exit as a failure.
	expectExit bool
	// cancel ends a boot in progress.
	cancel context.CancelFunc
	// slot is the VM's network slot, nil without networking.
	slot *netslot.Slot
	// booting is set while a boot goroutine runs (reconciliation leaves
	// the VM's process and directories alone meanwhile).
	booting bool
	// unresponsiveSince is when the agent of a ready VM first missed a
	// liveness probe, zero while it answers (see liveness.go).
	unresponsiveSince time.Time
}

// runtimeDoc is what the store keeps to re-attach after a daemon restart.
type runtimeDoc struct {
	VMM           *vmm.State      `json:"vmm,omitempty"`
	Token         string          `json:"token,omitempty"` // per-VM agent token; host-side only
	ImageID       string          `json:"image_id,omitempty"`
	KernelRelease string          `json:"kernel_release,omitempty"`
	Phases        *api.BootPhases `json:"boot_phases,omitempty"`
	// SlotID is the network slot the hypervisor runs in, so a restarted
	// daemon can adopt it and reconciliation keeps it.
	SlotID string `json:"slot_id,omitempty"`
	// Hibernation is set while the VM is hibernated.
	Hibernation *hibernationDoc `json:"hibernation,omitempty"`
}

// specDoc is the VM's requested shape.
type specDoc struct {
	VCPUs     int `json:"vcpus"`
	MemoryMiB int `json:"memory_mib"`
	// Purpose is api.PurposeWorkspace (also when empty: records from
	// before purposes existed) or api.PurposeLogin.
	Purpose string `json:"purpose,omitempty"`
}

// Lifecycle is told about the transitions other subsystems act on: the
// credential manager delivers credential files when a VM becomes ready and
// syncs them back before it stops or goes. The consumer implements it.
type Lifecycle interface {
	// VMReady runs (in its own goroutine) after a VM became ready: on a
	// fresh boot (reattached false: nothing in the guest's memory or
	// files is from a session the daemon watched) and on re-attach after
	// a daemon restart (reattached true: the guest ran on meanwhile).
	VMReady(v api.VM, reattached bool)
	// VMStopping runs before a VM is stopped or destroyed while its agent
	// still answers; ctx bounds it.
	VMStopping(ctx context.Context, v api.VM)
}

// Accelerated is implemented by drivers that know their acceleration.
type Accelerated interface{ Accel() string }

// New returns a manager. Call Recover once before serving.
func New(cfg Config, st store.Store, bus *events.Bus, images Images, driver vmm.Driver, log *slog.Logger) *Manager {
	if cfg.MaxVMsPerUser == 0 {
		cfg.MaxVMsPerUser = 180
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 3 * time.Minute
	}
	if cfg.UpperDiskMiB == 0 {
		cfg.UpperDiskMiB = 4096
	}
	if cfg.LogRetention == 0 {
		cfg.LogRetention = 7 * 24 * time.Hour
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	if cfg.RecoverTimeout == 0 {
		cfg.RecoverTimeout = 30 * time.Second
	}
	m := &Manager{cfg: cfg, store: st, bus: bus, images: images, driver: driver, log: log, vms: map[string]*instance{}, metrics: newMetrics(), closing: make(chan struct{})}
	if a, ok := driver.(Accelerated); ok {
		m.accel = a.Accel()
	}
	return m
}

func (m *Manager) runDir(id string) string { return filepath.Join(m.cfg.DataDir, "vms", id) }
func (m *Manager) logDir(id string) string { return filepath.Join(m.cfg.DataDir, "logs", "vms", id) }

// ConsolePath is where a VM's serial console is kept.
func (m *Manager) ConsolePath(id string) string { return filepath.Join(m.logDir(id), "console.log") }

func (m *Manager) inst(id string) *instance {
	m.mu.Lock()
	defer m.mu.Unlock()
	in := m.vms[id]
	if in == nil {
		in = &instance{id: id}
		m.vms[id] = in
	}
	return in
}

func (in *instance) client() *agentlink.Client {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.link
}

// defaults per kind: a browser needs memory for Chromium.
func shape(kind string, req api.CreateVMRequest) (specDoc, error) {
	s := specDoc{VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB}
	if s.VCPUs == 0 {
		s.VCPUs = 1
		if kind == api.KindBrowser {
			s.VCPUs = 2
		}
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = 512
		if kind == api.KindBrowser {
			s.MemoryMiB = 2048
		}
	}
	if s.VCPUs < 1 || s.VCPUs > 16 {
		return s, errs.E(errs.Invalid, "vcpus %d: want 1 to 16", s.VCPUs)
	}
	if s.MemoryMiB < 128 || s.MemoryMiB > 65536 {
		return s, errs.E(errs.Invalid, "memory_mib %d: want 128 to 65536", s.MemoryMiB)
	}
	return s, nil
}

// SetLifecycle sets who is told about ready and stopping VMs; call it
// before Recover.
func (m *Manager) SetLifecycle(l Lifecycle) { m.lifecycle = l }

// stopping tells the lifecycle a VM is about to stop, bounded by
// lifecycleTimeout.
func (m *Manager) stopping(id string) {
	if m.lifecycle == nil {
		return
	}
	v, err := m.store.GetVM(context.Background(), id, "")
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), lifecycleTimeout)
	defer cancel()
	m.lifecycle.VMStopping(ctx, m.toAPI(v))
}

// lifecycleTimeout bounds what runs before a VM stops (credential
// sync-back).
const lifecycleTimeout = 30 * time.Second

// Create records a new workspace VM and boots it in the background.
func (m *Manager) Create(ctx context.Context, caller store.User, req api.CreateVMRequest) (api.VM, error) {
	return m.CreateFor(ctx, caller, req, api.PurposeWorkspace)
}

// CreateFor records a new VM of purpose (api.PurposeWorkspace or
// api.PurposeLogin) and boots it in the background.
func (m *Manager) CreateFor(ctx context.Context, caller store.User, req api.CreateVMRequest, purpose string) (api.VM, error) {
	switch req.Kind {
	case api.KindBase, api.KindCLI, api.KindBrowser:
	case "":
		return api.VM{}, errs.E(errs.Invalid, "kind is required: base, cli or browser")
	default:
		return api.VM{}, errs.E(errs.Invalid, "kind %q: want base, cli or browser", req.Kind)
	}
	sp, err := shape(req.Kind, req)
	if err != nil {
		return api.VM{}, err
	}
	if err := m.checkHeadroom(req.Kind); err != nil {
		return api.VM{}, err
	}
	if purpose == api.PurposeLogin && req.Kind == api.KindBrowser {
		// A login takes a warm clone from the pool when there is one. The
		// user's shares are checked as for a new VM, less the host's
		// browser slot the clone already holds.
		all, err := m.store.ListVMs(ctx, "")
		if err != nil {
			return api.VM{}, err
		}
		if err := m.checkQuota(withoutOnePoolVM(all), caller.ID, req.Kind, sp); err != nil {
			return api.VM{}, err
		}
		if v, ok := m.takeWarm(ctx, caller); ok {
			return v, nil
		}
	}
	sp.Purpose = purpose
	spec, _ := json.Marshal(sp)
	now := time.Now().UTC()
	v := store.VM{ID: store.NewID("vm"), OwnerID: caller.ID, Kind: req.Kind, State: api.VMCreating, Spec: spec, Runtime: []byte("{}"), CreatedAt: now, UpdatedAt: now}
	// The quota check and the insert are one step in the store, so two
	// creates (in this daemon or another on the same database) cannot both
	// pass on the last share.
	if err := m.store.CreateVMChecked(ctx, v, func(all []store.VM) error {
		return m.checkQuota(all, caller.ID, req.Kind, sp)
	}); err != nil {
		return api.VM{}, err
	}
	m.log.Info("vm created", "vm_id", v.ID, "user_id", caller.ID, "kind", v.Kind, "vcpus", sp.VCPUs, "memory_mib", sp.MemoryMiB)
	m.startBoot(v.ID)
	return m.toAPI(v), nil
}

func (m *Manager) startBoot(id string) {
	in := m.inst(id)
	ctx, cancel := context.WithCancel(context.Background())
	in.mu.Lock()
	in.cancel = cancel
	in.booting = true
	in.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer cancel()
		defer func() {
			in.mu.Lock()
			in.booting = false
			in.mu.Unlock()
		}()
		if err := m.boot(ctx, id); err != nil {
			if ctx.Err() != nil {
				m.log.Info("boot cancelled", "vm_id", id)
				return
			}
			if errors.Is(err, errHypervisorGone) {
				// The exit watcher records this failure, once, with the
				// hypervisor's exit status and stderr tail.
				return
			}
			m.fail(id, err)
		}
	}()
}

// update applies fn to the stored VM and writes it back over the version
// it read; when another write came first it reads again and re-applies fn
// (so fn must only set fields). A state change fn makes is checked against
// the state found (state.go), so no write brings a VM back from a state
// another writer moved it to.
func (m *Manager) update(ctx context.Context, id string, fn func(v *store.VM, rt *runtimeDoc)) (store.VM, error) {
	for attempt := 1; ; attempt++ {
		v, err := m.store.GetVM(ctx, id, "")
		if err != nil {
			return store.VM{}, err
		}
		cur := v.State
		var rt runtimeDoc
		_ = json.Unmarshal(v.Runtime, &rt)
		fn(&v, &rt)
		if err := transition(id, cur, v.State); err != nil {
			return store.VM{}, err
		}
		v.Runtime, _ = json.Marshal(rt)
		v.UpdatedAt = time.Now().UTC()
		err = m.store.UpdateVM(ctx, v)
		if err == nil {
			v.Version++
			return v, nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt >= updateAttempts {
			return store.VM{}, err
		}
	}
}

func (m *Manager) setState(ctx context.Context, id, state, lastError string) (store.VM, error) {
	v, err := m.update(ctx, id, func(v *store.VM, _ *runtimeDoc) {
		v.State = state
		v.LastError = lastError
	})
	if err == nil {
		m.log.Info("vm state", "vm_id", id, "state", state)
	}
	return v, err
}

// boot takes a VM from creating to ready.
func (m *Manager) boot(ctx context.Context, id string) error {
	v, err := m.store.GetVM(ctx, id, "")
	if err != nil {
		return err
	}
	var sp specDoc
	_ = json.Unmarshal(v.Spec, &sp)
	log := m.log.With("vm_id", id, "kind", v.Kind)

	bi, err := m.images.Boot(ctx, v.Kind)
	if err != nil {
		return fmt.Errorf("image %s: %w", v.Kind, err)
	}
	runDir := m.runDir(id)
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return fmt.Errorf("create runtime dir: %w", err)
	}
	if err := os.MkdirAll(m.logDir(id), 0o700); err != nil {
		return fmt.Errorf("create log dir: %w", err)
	}
	upperDisk := ""
	if v.Kind != api.KindBrowser {
		// Persistent VMs keep their changes on a sparse ext4 disk made
		// once (the agent mounts it as /dev/vdb); a restart reuses it.
		upperDisk = filepath.Join(runDir, "upper.ext4")
		if err := ensureUpperDisk(ctx, upperDisk, m.cfg.UpperDiskMiB); err != nil {
			return err
		}
	}
	token, err := proto.NewToken()
	if err != nil {
		return err
	}
	// One place decides the agent's parameters: a restore from a
	// hibernation or template must pass the same ones.
	params := bootParams(id, v.Kind, token, m.driver.Name())
	spec := vmm.Spec{
		ID: strings.ReplaceAll(id, "_", "-"), RunDir: runDir, KernelPath: bi.Kernel, Init: vmm.DefaultInit,
		KernelArgs: proto.KernelArgs(params), BaseDisk: bi.Rootfs, UpperDisk: upperDisk,
		VCPUs: sp.VCPUs, MemoryMiB: sp.MemoryMiB, ConsoleLog: m.ConsolePath(id),
	}
	slotID := ""
	if m.slots != nil {
		s, err := m.acquireSlot(ctx, v)
		if err != nil {
			return err
		}
		spec.Net, slotID = netSpec(s), s.ID()
	}
	if _, err := m.update(ctx, id, func(v *store.VM, rt *runtimeDoc) {
		v.State, v.LastError = api.VMBooting, ""
		rt.ImageID, rt.KernelRelease, rt.Token, rt.Phases, rt.VMM = bi.ID, bi.KernelRelease, token, nil, nil
		rt.SlotID = slotID
	}); err != nil {
		return err
	}
	log.Info("vm booting", "image_id", bi.ID, "kernel", bi.KernelRelease, "accel", m.accel)

	t0 := time.Now()
	h, err := m.driver.Start(ctx, spec)
	if err != nil {
		return fmt.Errorf("start %s: %w", m.driver.Name(), err)
	}
	spawned := time.Now()
	in := m.inst(id)
	in.mu.Lock()
	in.handle, in.expectExit = h, false
	in.mu.Unlock()
	st := h.State()
	if _, err := m.update(ctx, id, func(_ *store.VM, rt *runtimeDoc) { rt.VMM = &st }); err != nil {
		return err
	}
	m.watch(id, h)
	phases := &api.BootPhases{SpawnMS: spawned.Sub(t0).Milliseconds()}
	return m.attach(ctx, id, h, token, spawned, phases)
}

// attach dials the agent of a running hypervisor, waits until the agent
// reports ready, and marks the VM ready. phases is nil when re-attaching.
func (m *Manager) attach(ctx context.Context, id string, h vmm.Handle, token string, spawned time.Time, phases *api.BootPhases) error {
	bctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	// Stop waiting as soon as the hypervisor dies; the watcher reports why.
	go func() {
		select {
		case <-h.Done():
			cancel()
		case <-bctx.Done():
		}
	}()
	link, err := m.dial(bctx, h, token)
	if err != nil {
		if h.ExitErr() != nil || isDone(h) {
			return errHypervisorGone
		}
		m.metrics.linkErrors.Inc()
		return fmt.Errorf("agent did not answer within %s: %w", m.cfg.BootTimeout, err)
	}
	linked := time.Now()
	in := m.inst(id)
	in.mu.Lock()
	in.link = link
	in.mu.Unlock()

	evs, err := link.Events(bctx)
	if err != nil {
		m.metrics.linkErrors.Inc()
		return fmt.Errorf("agent events: %w", err)
	}
	var hello *proto.Health
	ready := false
	for !ready {
		select {
		case ev, ok := <-evs:
			if !ok {
				if isDone(h) {
					return errHypervisorGone
				}
				return fmt.Errorf("agent event stream ended before ready (boot timeout %s)", m.cfg.BootTimeout)
			}
			switch ev.Type {
			case proto.EventHello:
				hello = ev.Health
				ready = ev.Health != nil && ev.Health.Ready
			case proto.EventReady:
				ready = true
			case proto.EventService:
				if s := ev.Service; s != nil {
					m.log.Info("vm service", "vm_id", id, "service", s.Name, "state", s.State, "restarts", s.Restarts)
				}
			}
		case <-bctx.Done():
			if isDone(h) {
				return errHypervisorGone
			}
			return fmt.Errorf("required services not ready within %s; see hangar vm logs %s", m.cfg.BootTimeout, id)
		}
	}
	if phases != nil {
		// A fresh boot: the guest learns its network now, before anyone
		// sees it ready (a re-attached guest kept its configuration).
		in.mu.Lock()
		slot := in.slot
		in.mu.Unlock()
		if slot != nil {
			if err := link.ConfigureNetwork(bctx, guestNetwork(slot)); err != nil {
				return fmt.Errorf("configure guest network: %w", err)
			}
		}
	}
	readyAt := time.Now()
	if phases != nil {
		// The agent's hello says how long it has been running, which
		// splits the time from spawn to link-up into kernel (firmware and
		// kernel until PID 1 starts) and agent (mounts until it answers).
		upMS := linked.Sub(spawned).Milliseconds()
		if hello != nil {
			phases.AgentUpMS = min(time.Duration(hello.Uptime).Milliseconds(), upMS)
		}
		phases.KernelMS = upMS - phases.AgentUpMS
		phases.ServicesReadyMS = readyAt.Sub(linked).Milliseconds()
		phases.TotalMS = phases.SpawnMS + readyAt.Sub(spawned).Milliseconds()
		m.metrics.observe(phases)
	}
	v, err := m.update(context.Background(), id, func(v *store.VM, rt *runtimeDoc) {
		v.State, v.LastError = api.VMReady, ""
		if phases != nil {
			rt.Phases = phases
		}
	})
	if err != nil {
		return err
	}
	m.log.Info("vm ready", "vm_id", id, "boot_phases", phasesString(phases))
	m.watchLiveness(id, h, token)
	m.publish(v, "vm_ready", map[string]any{"boot_phases": phases})
	if m.lifecycle != nil {
		av, reattached := m.toAPI(v), phases == nil
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.lifecycle.VMReady(av, reattached)
		}()
	}
	// Keep draining the agent's events for the VM's life: service state
	// changes go to the daemon log.
	go func() {
		for ev := range evs {
			if ev.Type == proto.EventService && ev.Service != nil {
				m.log.Info("vm service", "vm_id", id, "service", ev.Service.Name, "state", ev.Service.State, "restarts", ev.Service.Restarts)
			}
		}
	}()
	return nil
}

var errHypervisorGone = errors.New("hypervisor exited during boot")

func isDone(h vmm.Handle) bool {
	select {
	case <-h.Done():
		return true
	default:
		return false
	}
}

func phasesString(p *api.BootPhases) string {
	if p == nil {
		return "re-attached"
	}
	return fmt.Sprintf("spawn=%dms kernel=%dms agent=%dms services=%dms total=%dms", p.SpawnMS, p.KernelMS, p.AgentUpMS, p.ServicesReadyMS, p.TotalMS)
}

func (m *Manager) dial(ctx context.Context, h vmm.Handle, token string) (*agentlink.Client, error) {
	ep := h.Agent()
	opts := agentlink.Options{Token: token, Logger: m.log}
	if ep.Kind == vmm.AgentVsockUDS {
		return agentlink.DialFirecracker(ctx, ep.Path, ep.Port, opts)
	}
	// QEMU's chardev socket exists once QEMU is up; retry until then.
	for {
		c, err := agentlink.DialQEMU(ctx, ep.Path, opts)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// watch reports an unexpected exit of the hypervisor as a failure, with the
// last console lines as the reason.
func (m *Manager) watch(id string, h vmm.Handle) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		// The hypervisor appends to the console file itself: bound it
		// while the VM runs.
		tick := time.NewTicker(consoleCheckInterval)
		defer tick.Stop()
		for running := true; running; {
			if _, err := rotateConsole(m.ConsolePath(id), m.consoleMax()); err != nil {
				m.log.Warn("console rotation failed", "vm_id", id, "err", err)
			}
			select {
			case <-h.Done():
				running = false
			case <-m.closing:
				return
			case <-tick.C:
			}
		}
		in := m.inst(id)
		in.mu.Lock()
		expected := in.expectExit
		if in.handle == h {
			in.handle = nil
			if in.link != nil {
				in.link.Close()
				in.link = nil
			}
		}
		in.mu.Unlock()
		_ = h.Release()
		if expected {
			return
		}
		reason := "hypervisor process exited unexpectedly"
		if err := h.ExitErr(); err != nil {
			reason += ": " + err.Error()
		}
		m.fail(id, errors.New(reason))
	}()
}

// fail marks a VM failed with a reason the user can act on, stops what is
// left of it, and keeps its console log.
func (m *Manager) fail(id string, cause error) {
	in := m.inst(id)
	in.mu.Lock()
	h := in.handle
	in.expectExit = true
	if in.link != nil {
		in.link.Close()
		in.link = nil
	}
	in.mu.Unlock()
	if h != nil {
		_ = h.Kill()
		select { // the slot must outlive the process using its TAP
		case <-h.Done():
		case <-time.After(10 * time.Second):
		}
	}
	m.releaseSlot(context.Background(), id)
	reason := cause.Error()
	if tail := lastLines(m.ConsolePath(id), 5); tail != "" {
		reason += "; last console lines:\n" + tail
	}
	ctx := context.Background()
	v, err := m.store.GetVM(ctx, id, "")
	if err != nil || v.State == api.VMDestroyed {
		return
	}
	v, err = m.setState(ctx, id, api.VMFailed, reason)
	if err != nil {
		m.log.Error("record vm failure", "vm_id", id, "err", err)
		return
	}
	m.metrics.failures.Inc()
	m.log.Error("vm failed", "vm_id", id, "reason", cause.Error(), "console", m.ConsolePath(id))
	m.publish(v, "vm_failed", map[string]string{"reason": cause.Error()})
}

func (m *Manager) publish(v store.VM, typ string, data any) {
	if _, err := m.bus.Publish(context.Background(), v.OwnerID, typ, v.ID, data); err != nil {
		m.log.Warn("publish", "type", typ, "vm_id", v.ID, "err", err)
	}
}

// ensureUpperDisk makes a sparse ext4 file of sizeMiB unless it exists.
func ensureUpperDisk(ctx context.Context, path string, sizeMiB int) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("create upper disk: %w", err)
	}
	if err := f.Truncate(int64(sizeMiB) << 20); err != nil {
		f.Close()
		return fmt.Errorf("size upper disk: %w", err)
	}
	f.Close()
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "hangar-upper", "-E", "lazy_itable_init=1,lazy_journal_init=1", tmp).CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("mkfs.ext4 upper disk: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return os.Rename(tmp, path)
}

// Recover re-attaches to what survived a daemon restart: VMs whose
// hypervisor still runs are re-attached (no reboot); VMs whose process is
// gone are marked failed with their console log kept; VMs that never got a
// process boot again.
func (m *Manager) Recover(ctx context.Context) error {
	// Before anything is re-attached or booted again: kill hypervisors no
	// record persisted (a crash between spawn and record leaves one, and
	// booting that VM again next to it would share its disk), remove run
	// directories of gone VMs, reclaim unknown network slots.
	if _, err := m.reconcile(ctx, true); err != nil {
		m.log.Warn("reconciliation at start was incomplete", "err", err)
	}
	vs, err := m.store.ListVMs(ctx, "")
	if err != nil {
		return err
	}
	recovered := m.recoverHandles(ctx, vs)
	for _, v := range vs {
		if v.State == api.VMHibernating || v.State == api.VMResuming {
			v = m.settleSnapshotState(ctx, v)
		}
		switch v.State {
		case api.VMCreating, api.VMBooting, api.VMReady, api.VMStopping:
		default:
			continue
		}
		var rt runtimeDoc
		_ = json.Unmarshal(v.Runtime, &rt)
		log := m.log.With("vm_id", v.ID, "state", v.State)
		if rt.VMM == nil {
			if v.State == api.VMStopping {
				_, _ = m.setState(ctx, v.ID, api.VMStopped, "")
				continue
			}
			log.Info("vm had no hypervisor process yet; booting it again")
			m.startBoot(v.ID)
			continue
		}
		h, err := recovered[v.ID].h, recovered[v.ID].err
		if err != nil {
			if v.State == api.VMStopping {
				_, _ = m.setState(ctx, v.ID, api.VMStopped, "")
				continue
			}
			log.Warn("vm lost while the daemon was down", "err", err)
			m.fail(v.ID, fmt.Errorf("lost while the daemon was down: %w", err))
			continue
		}
		in := m.inst(v.ID)
		bctx, cancel := context.WithCancel(context.Background())
		in.mu.Lock()
		in.handle, in.cancel, in.expectExit = h, cancel, false
		in.mu.Unlock()
		m.watch(v.ID, h)
		if v.State == api.VMStopping {
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				defer cancel()
				m.stopInstance(bctx, v.ID)
				m.releaseSlot(context.Background(), v.ID)
				_, _ = m.setState(context.Background(), v.ID, api.VMStopped, "")
			}()
			continue
		}
		m.adoptSlot(ctx, v, rt.SlotID)
		log.Info("re-attaching to running vm", "pid", rt.VMM.PID)
		id, token := v.ID, rt.Token
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer cancel()
			if err := m.attach(bctx, id, h, token, time.Now(), nil); err != nil && bctx.Err() == nil {
				m.fail(id, fmt.Errorf("re-attach after daemon restart: %w", err))
			}
		}()
	}
	return nil
}

// Close lets go of every VM without stopping it (the default shutdown
// policy: VMs keep running and the next daemon re-attaches), or, with
// Config.StopOnClose, stops them first.
func (m *Manager) Close() {
	if m.cfg.StopOnClose {
		m.stopAll()
	}
	close(m.closing)
	m.mu.Lock()
	ins := make([]*instance, 0, len(m.vms))
	for _, in := range m.vms {
		ins = append(ins, in)
	}
	m.mu.Unlock()
	for _, in := range ins {
		in.mu.Lock()
		in.expectExit = true
		if in.cancel != nil {
			in.cancel()
		}
		if in.link != nil {
			in.link.Close()
			in.link = nil
		}
		h := in.handle
		in.mu.Unlock()
		if h != nil {
			_ = h.Release()
		}
	}
	m.wg.Wait()
}

// stopAll stops every VM this daemon runs, in parallel, and records them
// stopped (shutdown policy "stop").
func (m *Manager) stopAll() {
	m.mu.Lock()
	var ids []string
	for id, in := range m.vms {
		in.mu.Lock()
		if in.handle != nil || in.booting {
			ids = append(ids, id)
		}
		in.mu.Unlock()
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), m.cfg.StopTimeout+15*time.Second)
			defer cancel()
			m.stopping(id)
			if _, err := m.setState(ctx, id, api.VMStopping, ""); err != nil {
				m.log.Warn("stop at shutdown", "vm_id", id, "err", err)
				return
			}
			m.stopInstance(ctx, id)
			m.releaseSlot(ctx, id)
			if _, err := m.setState(ctx, id, api.VMStopped, ""); err != nil {
				m.log.Warn("stop at shutdown", "vm_id", id, "err", err)
			}
		}()
	}
	wg.Wait()
	if len(ids) > 0 {
		m.log.Info("stopped vms at shutdown (vm_shutdown_policy=stop)", "count", len(ids))
	}
}

// PruneLogs removes the preserved logs of VMs destroyed more than the
// retention ago, and logs no VM record owns. It returns the VM ids whose
// logs it removed.
func (m *Manager) PruneLogs(ctx context.Context) ([]string, error) {
	root := filepath.Join(m.cfg.DataDir, "logs", "vms")
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range ents {
		id := e.Name()
		v, err := m.store.GetVM(ctx, id, "")
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return removed, err
		case v.State != api.VMDestroyed || time.Since(v.UpdatedAt) < m.cfg.LogRetention:
			continue
		}
		if err := os.RemoveAll(filepath.Join(root, id)); err != nil {
			return removed, err
		}
		removed = append(removed, id)
	}
	if len(removed) > 0 {
		m.log.Info("pruned logs of destroyed vms", "count", len(removed), "retention", m.cfg.LogRetention)
	}
	return removed, nil
}
