package vm

// Hibernation parks an idle cli or base VM on disk: the hypervisor writes
// the guest's memory and device state to a snapshot, exits, and gives
// back its memory and network slot; resuming starts a hypervisor that loads
// that state, so the guest's processes, files and network configuration
// continue where they were, as if the VM had been frozen.
//
// Why it is shaped like this:
//
//   - The snapshot holds the guest's memory, and with it whatever secrets
//     the CLIs keep there. Its files are 0600 in a 0700 directory under the
//     VM's run directory, and removed as soon as a restore has loaded them.
//     Before hibernating, the credential lifecycle syncs rotated tokens back
//     and takes the credential files out of the VM (VMStopping), so the
//     store stays the only place with the newest refresh token while the VM
//     sleeps; resuming delivers them again (VMReady, re-attached).
//   - A snapshot is only trusted if it is exactly what was written: its
//     SHA-256 is kept in the VM's record (not beside the files), checked
//     before the hypervisor sees a byte, and a mismatch marks the VM failed
//     with the reason. The upper disk is never touched, so the user's files
//     survive; only the memory state (running processes) is lost.
//   - Any slot fits: every network slot gives the guest the same address
//     and MAC, so a resumed VM takes a fresh slot and keeps its guest-side
//     network configuration. Hibernated VMs hold no slot.
//   - The guest's clock stood still while it slept. The agent's clock-set
//     call corrects it right after the link is up again.
//   - The agent token is the VM's own (it lives in guest memory since boot
//     and the host kept it in the record); hibernation does not change who
//     the VM is, unlike a clone from a template, which must be re-keyed.
//   - The guest syncs its file systems before the snapshot: its dirty page
//     cache is guest memory, and a lost snapshot must not take files with
//     it.
//   - A failed snapshot (disk full, a hypervisor error) leaves the VM
//     running: the vCPUs are continued and the credentials delivered
//     again, and the caller learns why.
//
// Hibernate and resume of one VM are serialised by a per-VM lock, so a
// burst of exec calls on a hibernated VM resumes it once.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/vmm"
	"github.com/hangar-vm/hangar/pkg/api"
)

// hibernationDoc is what the record keeps about a hibernated VM.
type hibernationDoc struct {
	// Dir is the snapshot directory (under the VM's run directory).
	Dir string `json:"dir"`
	// SHA256 covers every file in Dir, names and contents, in name order.
	SHA256    string    `json:"sha256"`
	SizeBytes int64     `json:"size_bytes"`
	At        time.Time `json:"at"`
	// FrozenMS is how long the vCPUs stood while the state was written.
	FrozenMS int64 `json:"frozen_ms"`
	// Spec is the normalized spec the VM ran with: the restore needs the
	// same disks, kernel and sizes (the image cache may have a newer image
	// by now). Its network device is replaced by a fresh slot's.
	Spec vmm.Spec `json:"spec"`
}

// hibernator serialises hibernate and resume per VM and counts them. Its
// zero value is ready to use.
type hibernator struct {
	mu    sync.Mutex // guards locks
	locks map[string]*sync.Mutex

	once sync.Once
	mt   *hibernateMetrics

	actMu                      sync.Mutex // guards acts and the idle limits
	acts                       activity
	idleHibernate, idleDestroy time.Duration
}

type hibernateMetrics struct {
	hibernate     prometheus.Histogram
	resume        prometheus.Histogram
	snapshotBytes prometheus.Histogram
	failures      *prometheus.CounterVec
}

func (hb *hibernator) metrics() *hibernateMetrics {
	hb.once.Do(func() {
		secs := []float64{0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60}
		hb.mt = &hibernateMetrics{
			hibernate: prometheus.NewHistogram(prometheus.HistogramOpts{
				Name: "hangar_vm_hibernate_seconds", Help: "Time to hibernate a VM: credential sync-back, snapshot, hypervisor exit.", Buckets: secs,
			}),
			resume: prometheus.NewHistogram(prometheus.HistogramOpts{
				Name: "hangar_vm_resume_seconds", Help: "Time from a resume request until the VM's agent answers again.", Buckets: secs,
			}),
			snapshotBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
				Name: "hangar_vm_snapshot_bytes", Help: "Size of hibernation snapshots (memory and device state).",
				Buckets: prometheus.ExponentialBuckets(16<<20, 2, 10),
			}),
			failures: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "hangar_vm_hibernation_failures_total", Help: "Failed hibernations and resumes.",
			}, []string{"op"}),
		}
	})
	return hb.mt
}

func (hb *hibernator) register(reg prometheus.Registerer) {
	mt := hb.metrics()
	reg.MustRegister(mt.hibernate, mt.resume, mt.snapshotBytes, mt.failures)
}

// lock takes the VM's hibernation lock and returns its unlock.
func (hb *hibernator) lock(id string) func() {
	hb.mu.Lock()
	if hb.locks == nil {
		hb.locks = map[string]*sync.Mutex{}
	}
	l := hb.locks[id]
	if l == nil {
		l = &sync.Mutex{}
		hb.locks[id] = l
	}
	hb.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// hibernationDir is where a VM's snapshot is written.
func (m *Manager) hibernationDir(id string) string {
	return filepath.Join(m.runDir(id), "hibernation")
}

// Hibernate writes a ready cli or base VM's memory and device state to
// disk and ends its hypervisor. A hibernated VM is returned as it is.
func (m *Manager) Hibernate(ctx context.Context, caller store.User, id string) (api.VM, error) {
	v, err := m.get(ctx, caller, id)
	if err != nil {
		return api.VM{}, err
	}
	if v.Kind == api.KindBrowser {
		return api.VM{}, errs.E(errs.Invalid, "browser VMs are not hibernated: they live only as long as a login")
	}
	unlock := m.hib.lock(id)
	defer unlock()
	if v, err = m.get(ctx, caller, id); err != nil {
		return api.VM{}, err
	}
	switch v.State {
	case api.VMHibernated:
		return m.toAPI(v), nil
	case api.VMReady:
	default:
		return api.VM{}, errs.E(errs.Conflict, "vm %s is %s; only a ready vm can hibernate", id, v.State)
	}
	// The work must not stop halfway because the client went away.
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.BootTimeout)
	defer cancel()
	return m.hibernate(hctx, v)
}

func (m *Manager) hibernate(ctx context.Context, v store.VM) (api.VM, error) {
	id := v.ID
	log := m.log.With("vm_id", id)
	mt := m.hib.metrics()
	in := m.inst(id)
	in.mu.Lock()
	h := in.handle
	in.mu.Unlock()
	if h == nil {
		return api.VM{}, errs.E(errs.Unavailable, "vm %s has no hypervisor right now; retry shortly", id)
	}
	spec := h.State().Spec
	began := time.Now()

	// Credentials out first, while the agent answers: the newest tokens go
	// back to the store and the lease is free while the VM sleeps.
	m.stopping(id)
	if _, err := m.setState(ctx, id, api.VMHibernating, ""); err != nil {
		return api.VM{}, err
	}
	// The guest's dirty page cache lives in its memory: flush it to the
	// upper disk first, so that a snapshot lost later (corrupt, deleted)
	// costs the running processes but never a file written before.
	if link := in.client(); link != nil {
		fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
		code, err := link.Exec(fctx, proto.ExecRequest{Argv: []string{"sync"}}, nil, io.Discard, io.Discard)
		fcancel()
		if err != nil || code != 0 {
			log.Warn("guest sync before hibernation failed; unsynced writes live only in the snapshot", "exit_code", code, "err", err)
		}
	}
	dir := m.hibernationDir(id)
	_ = os.RemoveAll(dir) // leftovers; a mount point (operators may give snapshots their own file system) stays
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return api.VM{}, m.hibernateFailed(ctx, id, h, fmt.Errorf("create snapshot dir: %w", err))
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return api.VM{}, m.hibernateFailed(ctx, id, h, fmt.Errorf("protect snapshot dir: %w", err))
	}
	meta, err := h.Snapshot(ctx, dir, vmm.SnapshotOptions{})
	if err != nil {
		// QEMU only sees its writer die ("broken pipe"); say the likely
		// cause when the file system is (nearly) full.
		_ = os.RemoveAll(dir)
		var fs syscall.Statfs_t
		if syscall.Statfs(dir, &fs) == nil {
			if free := int64(fs.Bavail) * int64(fs.Bsize); free < int64(spec.MemoryMiB)<<20 {
				err = fmt.Errorf("%w (the snapshot's file system at %s has %d MiB free, the guest has %d MiB of memory)", err, dir, free>>20, spec.MemoryMiB)
			}
		}
		return api.VM{}, m.hibernateFailed(ctx, id, h, err)
	}
	sum, err := protectAndHash(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return api.VM{}, m.hibernateFailed(ctx, id, h, err)
	}

	// The state is on disk: the hypervisor may go.
	in.mu.Lock()
	in.expectExit = true
	link := in.link
	in.link = nil
	in.mu.Unlock()
	if link != nil {
		link.Close()
	}
	sctx, scancel := context.WithTimeout(ctx, 15*time.Second)
	if err := h.Stop(sctx); err != nil {
		log.Warn("hypervisor did not quit after the snapshot; killing it", "err", err)
		_ = h.Kill()
	}
	scancel()
	<-h.Done()
	m.waitUnwatched(in, h)
	m.releaseSlot(ctx, id)

	doc := &hibernationDoc{Dir: dir, SHA256: sum, SizeBytes: meta.SizeBytes, At: time.Now().UTC(), FrozenMS: meta.Duration.Milliseconds(), Spec: spec}
	doc.Spec.KernelArgs, doc.Spec.RestoreFrom, doc.Spec.Net = "", "", nil
	v, err = m.update(context.WithoutCancel(ctx), id, func(v *store.VM, rt *runtimeDoc) {
		v.State, v.LastError = api.VMHibernated, ""
		rt.VMM, rt.Hibernation = nil, doc
	})
	if err != nil {
		return api.VM{}, err
	}
	took := time.Since(began)
	mt.hibernate.Observe(took.Seconds())
	mt.snapshotBytes.Observe(float64(meta.SizeBytes))
	log.Info("vm hibernated", "snapshot_bytes", meta.SizeBytes, "frozen_ms", meta.Duration.Milliseconds(), "took_ms", took.Milliseconds(), "memory_mib", spec.MemoryMiB)
	m.publish(v, "vm_hibernated", map[string]any{"snapshot_bytes": meta.SizeBytes, "took_ms": took.Milliseconds()})
	return m.toAPI(v), nil
}

// hibernateFailed continues a VM whose snapshot could not be written (disk
// full, a hypervisor error) and says why; if even that fails, the VM is
// failed.
func (m *Manager) hibernateFailed(ctx context.Context, id string, h vmm.Handle, cause error) error {
	m.hib.metrics().failures.WithLabelValues("hibernate").Inc()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	if err := h.Resume(rctx); err != nil {
		m.fail(id, fmt.Errorf("hibernation failed (%v) and the vm could not be continued: %w", cause, err))
		return errs.E(errs.Unavailable, "hibernate vm %s: %v; continuing it failed too: %v", id, cause, err)
	}
	v, err := m.setState(rctx, id, api.VMReady, "")
	if err == nil {
		m.publish(v, "vm_hibernate_failed", map[string]string{"reason": cause.Error()})
		if m.lifecycle != nil {
			av := m.toAPI(v)
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				m.lifecycle.VMReady(av, true)
			}()
		}
	}
	m.log.Warn("hibernation failed; the vm keeps running", "vm_id", id, "err", cause)
	return errs.E(errs.Unavailable, "hibernate vm %s: %v; the vm keeps running", id, cause)
}

// waitUnwatched waits (briefly) until the exit watcher of h has let go of
// it, so that a resume right after cannot be mistaken by that watcher for
// an unexpected exit.
func (m *Manager) waitUnwatched(in *instance, h vmm.Handle) {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		in.mu.Lock()
		held := in.handle == h
		in.mu.Unlock()
		if !held {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	in.mu.Lock()
	if in.handle == h {
		in.handle = nil
	}
	in.mu.Unlock()
}

// Resume brings a hibernated VM back; a ready VM is returned as it is.
func (m *Manager) Resume(ctx context.Context, caller store.User, id string) (api.VM, error) {
	if _, err := m.get(ctx, caller, id); err != nil {
		return api.VM{}, err
	}
	unlock := m.hib.lock(id)
	defer unlock()
	v, err := m.get(ctx, caller, id)
	if err != nil {
		return api.VM{}, err
	}
	switch v.State {
	case api.VMReady:
		return m.toAPI(v), nil
	case api.VMHibernated:
	default:
		return api.VM{}, errs.E(errs.Conflict, "vm %s is %s, not hibernated", id, v.State)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.BootTimeout)
	defer cancel()
	return m.resume(rctx, v)
}

// resumeIfHibernated resumes the VM first when a call that needs it
// (exec, files, prompt, port forward) finds it hibernated, or waits for a
// hibernation or resume in progress to end. Every such call counts as use
// for the idle lifecycle.
func (m *Manager) resumeIfHibernated(ctx context.Context, caller store.User, id string) error {
	m.hib.touch(id)
	v, err := m.get(ctx, caller, id)
	if err != nil {
		return nil // the caller reports it
	}
	switch v.State {
	case api.VMHibernated, api.VMHibernating, api.VMResuming:
	default:
		return nil
	}
	if _, err := m.Resume(ctx, caller, id); err != nil {
		var e *errs.Error
		if errors.As(err, &e) && e.Kind == errs.Conflict {
			return nil // it changed meanwhile (ready, stopped); the caller says what it is now
		}
		return err
	}
	return nil
}

func (m *Manager) resume(ctx context.Context, v store.VM) (api.VM, error) {
	id := v.ID
	log := m.log.With("vm_id", id)
	mt := m.hib.metrics()
	began := time.Now()
	var rt runtimeDoc
	_ = json.Unmarshal(v.Runtime, &rt)
	hd := rt.Hibernation
	if hd == nil {
		return api.VM{}, m.resumeFailed(id, "", errors.New("the record holds no snapshot"))
	}
	sum, err := hashDir(hd.Dir)
	switch {
	case err != nil:
		return api.VM{}, m.resumeFailed(id, hd.Dir, fmt.Errorf("snapshot unreadable: %w", err))
	case sum != hd.SHA256:
		return api.VM{}, m.resumeFailed(id, hd.Dir, errors.New("snapshot is corrupt or truncated: its checksum does not match the one taken at hibernation"))
	}
	if _, err := os.Stat(hd.Spec.BaseDisk); err != nil {
		return api.VM{}, m.resumeFailed(id, hd.Dir, fmt.Errorf("the image the vm hibernated with is gone: %w", err))
	}

	in := m.inst(id)
	in.mu.Lock()
	in.booting = true // reconciliation leaves the new process alone
	in.mu.Unlock()
	defer func() {
		in.mu.Lock()
		in.booting = false
		in.mu.Unlock()
	}()
	if _, err := m.setState(ctx, id, api.VMResuming, ""); err != nil {
		return api.VM{}, err
	}
	spec := hd.Spec
	spec.RestoreFrom = hd.Dir
	// The same command line the VM booted with: the restored memory
	// ignores it, but the hypervisor's boot ROMs and tables are sized by
	// it and must match the snapshot's.
	spec.KernelArgs = proto.KernelArgs(bootParams(id, v.Kind, rt.Token, m.driver.Name()))
	slotID := ""
	if m.slots != nil {
		s, err := m.acquireSlot(ctx, v)
		if err != nil {
			return api.VM{}, m.resumeFailed(id, "", err)
		}
		spec.Net, slotID = netSpec(s), s.ID()
	}
	if _, err := m.update(ctx, id, func(_ *store.VM, rt *runtimeDoc) { rt.SlotID = slotID }); err != nil {
		return api.VM{}, err
	}
	h, err := m.driver.Start(ctx, spec)
	if err != nil {
		// The checksum held, so the snapshot is what was written: keep
		// it and the VM hibernated, a later resume may succeed.
		m.hib.metrics().failures.WithLabelValues("resume").Inc()
		m.releaseSlot(ctx, id)
		if _, uerr := m.setState(context.WithoutCancel(ctx), id, api.VMHibernated, "resume failed: "+err.Error()); uerr != nil {
			log.Warn("record failed resume", "err", uerr)
		}
		return api.VM{}, errs.E(errs.Unavailable, "resume vm %s: restore from snapshot: %v; it stays hibernated", id, err)
	}
	restored := time.Now()
	in.mu.Lock()
	in.handle, in.expectExit = h, false
	in.mu.Unlock()
	st := h.State()
	// The state is loaded into the new hypervisor: the snapshot (guest
	// memory, secrets included) goes now.
	if err := os.RemoveAll(hd.Dir); err != nil {
		log.Warn("remove loaded snapshot", "dir", hd.Dir, "err", err)
	}
	if _, err := m.update(ctx, id, func(_ *store.VM, rt *runtimeDoc) { rt.VMM, rt.Hibernation = &st, nil }); err != nil {
		return api.VM{}, err
	}
	m.watch(id, h)
	if err := m.attach(ctx, id, h, rt.Token, restored, nil); err != nil {
		m.hib.metrics().failures.WithLabelValues("resume").Inc()
		m.fail(id, fmt.Errorf("resumed vm did not answer: %w", err))
		return api.VM{}, errs.E(errs.Unavailable, "resume vm %s: the agent did not answer after the restore: %v", id, err)
	}
	if c := in.client(); c != nil {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := c.SetClock(cctx, time.Now()); err != nil {
			log.Warn("could not set the clock of a resumed vm; it runs behind by the time it slept", "err", err)
		}
		cancel()
	}
	took := time.Since(began)
	mt.resume.Observe(took.Seconds())
	cur, err := m.store.GetVM(context.WithoutCancel(ctx), id, "")
	if err != nil {
		return api.VM{}, err
	}
	log.Info("vm resumed", "took_ms", took.Milliseconds(), "restore_ms", restored.Sub(began).Milliseconds(), "slept", time.Since(hd.At).Round(time.Second))
	m.publish(cur, "vm_resumed", map[string]any{"took_ms": took.Milliseconds()})
	return m.toAPI(cur), nil
}

// resumeFailed marks the VM failed with why its snapshot could not be
// used, removes that snapshot (it cannot be resumed and holds guest
// memory) and keeps the disk: starting the VM again boots it from there.
func (m *Manager) resumeFailed(id, dir string, cause error) error {
	m.hib.metrics().failures.WithLabelValues("resume").Inc()
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
	ctx := context.Background()
	if _, err := m.update(ctx, id, func(_ *store.VM, rt *runtimeDoc) { rt.Hibernation = nil }); err != nil {
		m.log.Warn("forget snapshot", "vm_id", id, "err", err)
	}
	m.fail(id, fmt.Errorf("resume failed: %w; the vm's disk is kept, start it to boot from it", cause))
	return errs.E(errs.Unavailable, "resume vm %s: %v; the vm is failed, its disk kept", id, cause)
}

// discardHibernation drops the snapshot of a hibernated VM that is stopped
// instead of resumed: its processes are given up, its disk stays.
func (m *Manager) discardHibernation(ctx context.Context, id string) {
	_ = os.RemoveAll(m.hibernationDir(id))
	if _, err := m.update(context.WithoutCancel(ctx), id, func(_ *store.VM, rt *runtimeDoc) { rt.Hibernation = nil }); err != nil {
		m.log.Warn("forget snapshot", "vm_id", id, "err", err)
	}
}

// settleSnapshotState decides, at daemon start, what a VM left hibernating
// or resuming by a dead daemon is now, and returns the record as Recover
// should treat it: a hypervisor that still runs is continued and the VM
// is ready again (Recover re-attaches it); a complete snapshot without a
// process is hibernated; anything else is failed with the disk kept.
func (m *Manager) settleSnapshotState(ctx context.Context, v store.VM) store.VM {
	var rt runtimeDoc
	_ = json.Unmarshal(v.Runtime, &rt)
	log := m.log.With("vm_id", v.ID, "state", v.State)
	if rt.VMM != nil {
		if h, err := m.driver.Recover(ctx, *rt.VMM); err == nil {
			// Paused by an unfinished snapshot, or restored and running:
			// either way it continues, and Recover re-attaches it.
			if err := h.Resume(ctx); err != nil {
				log.Warn("continue a vm interrupted while hibernating or resuming", "err", err)
			}
			_ = h.Release()
			_ = os.RemoveAll(m.hibernationDir(v.ID))
			nv, err := m.update(ctx, v.ID, func(v *store.VM, rt *runtimeDoc) {
				v.State, v.LastError = api.VMReady, ""
				rt.Hibernation = nil
			})
			if err != nil {
				return v
			}
			log.Info("vm was interrupted while hibernating or resuming; its hypervisor still runs, continuing it")
			return nv
		}
	}
	if rt.Hibernation != nil {
		if sum, err := hashDir(rt.Hibernation.Dir); err == nil && sum == rt.Hibernation.SHA256 {
			nv, err := m.update(ctx, v.ID, func(v *store.VM, rt *runtimeDoc) {
				v.State, v.LastError = api.VMHibernated, ""
				rt.VMM = nil
			})
			if err == nil {
				log.Info("vm was interrupted while resuming; its snapshot is intact, it stays hibernated")
				return nv
			}
		}
	}
	_ = os.RemoveAll(m.hibernationDir(v.ID))
	was := v.State
	nv, err := m.update(ctx, v.ID, func(v *store.VM, rt *runtimeDoc) {
		v.State = api.VMFailed
		v.LastError = "the daemon stopped while the vm was " + was + "; its memory state is lost, its disk is kept: start it to boot from it"
		rt.VMM, rt.Hibernation = nil, nil
	})
	if err != nil {
		return v
	}
	log.Warn("vm interrupted while hibernating or resuming is lost; disk kept")
	return nv
}

// bootParams are the agent's kernel parameters of a VM (boot and restore
// must agree on them).
func bootParams(id, kind, token, driver string) proto.Params {
	upper := proto.UpperTmpfs
	if kind != api.KindBrowser {
		upper = "/dev/vdb"
	}
	p := proto.Params{Token: token, Upper: upper, Hostname: strings.ReplaceAll(id, "_", "-"), Link: proto.LinkVirtioSerial}
	if driver == "firecracker" {
		p.Link = proto.LinkVsock
	}
	return p
}

// protectAndHash makes every file of a fresh snapshot owner-only (the
// hypervisor created them with its umask) and returns the directory's
// checksum.
func protectAndHash(dir string) (string, error) {
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		if err := os.Chmod(filepath.Join(dir, e.Name()), 0o600); err != nil {
			return "", err
		}
	}
	return hashDir(dir)
}

// hashDir is the SHA-256 over the names, sizes and contents of the regular
// files in dir, in name order.
func hashDir(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "", errors.New("no snapshot files")
	}
	sort.Strings(names)
	hs := sha256.New()
	for _, n := range names {
		f, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			return "", err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return "", err
		}
		fmt.Fprintf(hs, "%s\x00%d\x00", n, fi.Size())
		_, err = io.Copy(hs, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(hs.Sum(nil)), nil
}
