package vm

// Templates and clones. A template is a snapshot of a VM of one kind and
// shape taken once it was ready (for browser VMs: Xvfb, x11vnc and
// Chromium up); a clone is a new VM whose hypervisor loads that snapshot
// instead of booting, so it is ready in the time a restore takes.
//
// A template is keyed by everything that shapes the snapshot: the image
// id (which covers the agent and the root filesystem), the kernel, vCPUs
// and memory, the hypervisor and its acceleration, the agent protocol
// version and whether the VM has a network device. Any change gives a
// new key, so a stale template is never restored; `hangar image gc`
// removes the templates of images it removed (templategc.go).
//
// What a clone must not share with its siblings, and how it gets its own
// (re-key, internal/agent/rekey.go), before anyone else talks to it:
//   - the agent token: the template's is on its kernel command line and in
//     the agent's memory. The host dials the clone with the template's
//     token once, sends a fresh one, and redials; the agent refuses the
//     template's token from then on.
//   - the kernel's random state: host randomness is mixed in and the CRNG
//     is forced to reseed, so /dev/urandom differs between clones.
//   - the clock (the template's past) and the hostname.
//   - the network slot: every slot gives the guest the same address and
//     MAC, so the device state in the snapshot fits any slot; the slot
//     (namespace, NAT, egress policy) is the clone's own.
//
// What a clone does inherit, and why that is acceptable: the processes the
// template had running (Xvfb, x11vnc, Chromium with an empty profile that
// never saw a user, a login page or a credential) and their in-process
// random state (Chromium's own generators were seeded before the snapshot;
// TLS keys are drawn fresh per connection from the reseeded kernel via
// getrandom). Browser VMs keep their writable layer on a tmpfs, so there is
// no disk to copy. Templates are only made of browser VMs that never ran a
// login.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/vmm"
	"github.com/hangar-vm/hangar/pkg/api"
)

// Purposes of VMs that belong to no user: a template being built, and a
// warm-pool clone nobody has taken yet. Neither is ever listed.
const (
	purposeTemplate = "template"
	purposePool     = "pool"
)

// hidden reports whether a record is the manager's own (template or pool).
func hidden(v store.VM) bool {
	var sp specDoc
	_ = json.Unmarshal(v.Spec, &sp)
	return sp.Purpose == purposeTemplate || sp.Purpose == purposePool
}

// templateDoc is dir/template.json (0600: it holds the template's token).
type templateDoc struct {
	Key     string `json:"key"`
	Kind    string `json:"kind"`
	ImageID string `json:"image_id"`
	Kernel  string `json:"kernel_release"`
	// Token and Cmdline are the template VM's: a clone is dialled with
	// the token once, to re-key it, and started with the same command
	// line (the restored memory ignores it, the machine's boot tables
	// are sized by it).
	Token   string `json:"token"`
	Cmdline string `json:"cmdline"`
	// Spec is the template VM's normalized spec without per-VM paths.
	Spec      vmm.Spec  `json:"spec"`
	SHA256    string    `json:"sha256"`
	SizeBytes int64     `json:"size_bytes"`
	BuildMS   int64     `json:"build_ms"`
	CreatedAt time.Time `json:"created_at"`
}

// templates serialises template builds.
type templates struct {
	mu sync.Mutex
}

func (m *Manager) templateRoot() string { return filepath.Join(m.cfg.DataDir, "templates") }

// templateKey names the template of kind built from bi with shape sp.
func (m *Manager) templateKey(kind string, bi BootImage, sp specDoc) string {
	h := sha256.New()
	fmt.Fprintf(h, "kind=%s\nimage=%s\nkernel=%s %s\nvcpus=%d\nmemory=%d\nhypervisor=%s\naccel=%s\nagent_protocol=%s\nnet=%v\n",
		kind, bi.ID, bi.KernelRelease, filepath.Base(filepath.Dir(bi.Kernel)), sp.VCPUs, sp.MemoryMiB, m.driver.Name(), m.accel, proto.Version, m.slots != nil)
	return kind + "-" + hex.EncodeToString(h.Sum(nil))[:16]
}

// loadTemplate returns the template in dir if it is complete and its
// snapshot matches its checksum.
func loadTemplate(dir string) (*templateDoc, error) {
	b, err := os.ReadFile(filepath.Join(dir, "template.json"))
	if err != nil {
		return nil, err
	}
	var td templateDoc
	if err := json.Unmarshal(b, &td); err != nil {
		return nil, fmt.Errorf("template.json: %w", err)
	}
	sum, err := hashDir(filepath.Join(dir, "snapshot"))
	if err != nil {
		return nil, err
	}
	if sum != td.SHA256 {
		return nil, errors.New("template snapshot is corrupt or truncated: its checksum does not match")
	}
	return &td, nil
}

// Template returns the template of kind for the current image, building
// it when there is none (or the one on disk is corrupt: it is rebuilt).
func (m *Manager) Template(ctx context.Context, kind string) (*templateDoc, error) {
	bi, err := m.images.Boot(ctx, kind)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", kind, err)
	}
	sp, err := shape(kind, api.CreateVMRequest{})
	if err != nil {
		return nil, err
	}
	key := m.templateKey(kind, bi, sp)
	dir := filepath.Join(m.templateRoot(), key)
	m.tmpl.mu.Lock()
	defer m.tmpl.mu.Unlock()
	td, err := loadTemplate(dir)
	if err == nil {
		return td, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("template unusable; building it again", "template", key, "err", err)
	}
	return m.buildTemplate(ctx, kind, key, dir, bi, sp)
}

// buildTemplate boots a VM of kind, waits until it is ready, snapshots it
// into dir and destroys it.
func (m *Manager) buildTemplate(ctx context.Context, kind, key, dir string, bi BootImage, sp specDoc) (*templateDoc, error) {
	log := m.log.With("template", key)
	began := time.Now()
	owner, err := m.systemOwner(ctx)
	if err != nil {
		return nil, err
	}
	sp.Purpose = purposeTemplate
	spec, _ := json.Marshal(sp)
	now := time.Now().UTC()
	v := store.VM{ID: store.NewID("vm"), OwnerID: owner, Kind: kind, State: api.VMCreating, Spec: spec, Runtime: []byte("{}"), CreatedAt: now, UpdatedAt: now}
	if err := m.store.CreateVM(ctx, v); err != nil {
		return nil, err
	}
	log.Info("template build: booting", "vm_id", v.ID, "kind", kind, "image_id", bi.ID)
	in := m.inst(v.ID)
	in.mu.Lock()
	in.booting = true
	in.mu.Unlock()
	cleanup := func() {
		in.mu.Lock()
		in.booting = false
		h := in.handle
		in.expectExit = true
		in.mu.Unlock()
		if h != nil {
			_ = h.Kill()
			<-h.Done()
		}
		if cur, err := m.store.GetVM(context.WithoutCancel(ctx), v.ID, ""); err == nil {
			_ = m.destroy(context.WithoutCancel(ctx), cur)
		}
	}
	defer cleanup()
	if err := m.boot(ctx, v.ID); err != nil {
		return nil, fmt.Errorf("template build: boot: %w", err)
	}
	booted := time.Now()
	log.Info("template build: ready; snapshotting", "boot_ms", booted.Sub(began).Milliseconds())
	cur, err := m.store.GetVM(ctx, v.ID, "")
	if err != nil {
		return nil, err
	}
	var rt runtimeDoc
	_ = json.Unmarshal(cur.Runtime, &rt)
	in.mu.Lock()
	h := in.handle
	in.mu.Unlock()
	if h == nil {
		return nil, errors.New("template build: the vm has no hypervisor")
	}
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(filepath.Join(tmp, "snapshot"), 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(tmp, 0o700); err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	meta, err := h.Snapshot(ctx, filepath.Join(tmp, "snapshot"), vmm.SnapshotOptions{})
	if err != nil {
		return nil, fmt.Errorf("template build: %w", err)
	}
	sum, err := protectAndHash(filepath.Join(tmp, "snapshot"))
	if err != nil {
		return nil, err
	}
	st := h.State()
	td := &templateDoc{Key: key, Kind: kind, ImageID: bi.ID, Kernel: bi.KernelRelease, Token: rt.Token,
		Cmdline: proto.KernelArgs(bootParams(v.ID, kind, rt.Token, m.driver.Name())), Spec: st.Spec,
		SHA256: sum, SizeBytes: meta.SizeBytes, BuildMS: time.Since(began).Milliseconds(), CreatedAt: time.Now().UTC()}
	td.Spec.ID, td.Spec.RunDir, td.Spec.ConsoleLog, td.Spec.Net, td.Spec.KernelArgs, td.Spec.RestoreFrom = "", "", "", nil, "", ""
	b, _ := json.Marshal(td)
	if err := os.WriteFile(filepath.Join(tmp, "template.json"), b, 0o600); err != nil {
		return nil, err
	}
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(m.templateRoot(), 0o700); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	log.Info("template built", "kind", kind, "snapshot_bytes", meta.SizeBytes, "build_ms", td.BuildMS, "boot_ms", booted.Sub(began).Milliseconds())
	return td, nil
}

// systemOwner is the user that owns the manager's own VMs (templates
// being built, unclaimed pool clones): the first admin. The records need
// an owner row; they are never listed (hidden) and count against no one's
// quota that matters.
func (m *Manager) systemOwner(ctx context.Context) (string, error) {
	us, err := m.store.ListUsers(ctx)
	if err != nil {
		return "", err
	}
	var first *store.User
	for i := range us {
		if us[i].Role == store.RoleAdmin && (first == nil || us[i].CreatedAt.Before(first.CreatedAt)) {
			first = &us[i]
		}
	}
	if first == nil {
		return "", errors.New("no admin user to own pool vms")
	}
	return first.ID, nil
}

// clone starts VM id (its record exists, state creating) from template td
// and re-keys it: ready with its own token, random state, clock, hostname
// and slot.
func (m *Manager) clone(ctx context.Context, id string, td *templateDoc) error {
	v, err := m.store.GetVM(ctx, id, "")
	if err != nil {
		return err
	}
	log := m.log.With("vm_id", id, "template", td.Key)
	t0 := time.Now()
	runDir := m.runDir(id)
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(m.logDir(id), 0o700); err != nil {
		return err
	}
	token, err := proto.NewToken()
	if err != nil {
		return err
	}
	spec := td.Spec
	spec.ID, spec.RunDir, spec.ConsoleLog = strings.ReplaceAll(id, "_", "-"), runDir, m.ConsolePath(id)
	spec.KernelArgs = td.Cmdline
	spec.RestoreFrom = filepath.Join(m.templateRoot(), td.Key, "snapshot")
	slotID := ""
	if m.slots != nil {
		s, err := m.acquireSlot(ctx, v)
		if err != nil {
			return err
		}
		spec.Net, slotID = netSpec(s), s.ID()
	}
	// The clone's own token is recorded before its hypervisor exists: a
	// daemon that dies from here on re-attaches with it, or fails the VM.
	if _, err := m.update(ctx, id, func(v *store.VM, rt *runtimeDoc) {
		v.State, v.LastError = api.VMBooting, ""
		rt.ImageID, rt.KernelRelease, rt.Token, rt.Phases, rt.VMM, rt.SlotID = td.ImageID, td.Kernel, token, nil, nil, slotID
	}); err != nil {
		return err
	}
	h, err := m.driver.Start(ctx, spec)
	if err != nil {
		return fmt.Errorf("restore template %s: %w", td.Key, err)
	}
	restored := time.Now()
	in := m.inst(id)
	in.mu.Lock()
	in.handle, in.expectExit = h, false
	in.mu.Unlock()
	st := h.State()
	if _, err := m.update(ctx, id, func(_ *store.VM, rt *runtimeDoc) { rt.VMM = &st }); err != nil {
		return err
	}
	m.watch(id, h)

	// Re-key over a link opened with the template's token, then redial
	// with the clone's own.
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	old, err := m.dial(dctx, h, td.Token)
	if err != nil {
		cancel()
		return fmt.Errorf("clone: reach the agent with the template's token: %w", err)
	}
	err = old.Rekey(dctx, token, strings.ReplaceAll(id, "_", "-"))
	old.Close()
	cancel()
	if err != nil {
		return fmt.Errorf("clone: %w", err)
	}
	rekeyed := time.Now()
	if err := m.attach(ctx, id, h, token, restored, nil); err != nil {
		return err
	}
	phases := &api.BootPhases{SpawnMS: restored.Sub(t0).Milliseconds(), AgentUpMS: rekeyed.Sub(restored).Milliseconds(), TotalMS: time.Since(t0).Milliseconds()}
	phases.ServicesReadyMS = phases.TotalMS - phases.SpawnMS - phases.AgentUpMS
	if _, err := m.update(context.WithoutCancel(ctx), id, func(_ *store.VM, rt *runtimeDoc) { rt.Phases = phases }); err != nil {
		return err
	}
	log.Info("vm cloned from template", "restore_ms", phases.SpawnMS, "rekey_ms", phases.AgentUpMS, "total_ms", phases.TotalMS)
	return nil
}

// AgentToken returns a VM's agent token (tests prove that clones differ
// and that a template's token is refused). Never log or show it.
func (m *Manager) AgentToken(ctx context.Context, id string) (string, error) {
	v, err := m.store.GetVM(ctx, id, "")
	if err != nil {
		return "", err
	}
	var rt runtimeDoc
	_ = json.Unmarshal(v.Runtime, &rt)
	return rt.Token, nil
}
