package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// ReconcileReport says what one reconciliation pass found and changed.
type ReconcileReport struct {
	// Killed are hypervisor processes no VM record owns ("<vm>:<pid>").
	Killed []string `json:"killed,omitempty"`
	// RemovedDirs are run directories (disks, sockets) of VMs that are
	// gone or were never recorded.
	RemovedDirs []string `json:"removed_dirs,omitempty"`
	// RemovedSlots are network slot leftovers removed ("netns:<name>",
	// "link:<name>").
	RemovedSlots []string `json:"removed_slots,omitempty"`
	// Lost are VMs marked failed because their hypervisor was gone.
	Lost []string `json:"lost,omitempty"`
}

// Empty reports whether the pass changed nothing.
func (r ReconcileReport) Empty() bool {
	return len(r.Killed)+len(r.RemovedDirs)+len(r.RemovedSlots)+len(r.Lost) == 0
}

// active states have (or are about to have) a hypervisor process.
func active(state string) bool {
	switch state {
	case api.VMCreating, api.VMBooting, api.VMReady, api.VMStopping, api.VMHibernating, api.VMResuming:
		return true
	}
	return false
}

// Reconcile compares the store with what exists on the host and repairs
// the difference: hypervisor processes no record owns are killed, run
// directories no live record owns are removed, network slots no record
// holds are reclaimed, and VMs the store thinks are running but whose
// hypervisor this daemon does not hold (and is not booting) are marked
// failed with their console log kept. The daemon runs it at start (inside
// Recover, before anything is re-attached or booted) and every minute.
func (m *Manager) Reconcile(ctx context.Context) (ReconcileReport, error) {
	return m.reconcile(ctx, false)
}

// reconcile does the work; at start no instance is held yet, so the
// persisted hypervisor identity decides what a record owns.
func (m *Manager) reconcile(ctx context.Context, atStart bool) (ReconcileReport, error) {
	m.reconcileMu.Lock()
	defer m.reconcileMu.Unlock()
	var rep ReconcileReport
	var errList []error

	vs, err := m.store.ListVMs(ctx, "")
	if err != nil {
		return rep, fmt.Errorf("list vms: %w", err)
	}
	recs := make(map[string]store.VM, len(vs))
	for _, v := range vs {
		recs[v.ID] = v
	}

	// Processes first: a directory must not be removed under a process
	// still writing to it, and a VM booted again must not share its disk
	// with a leftover hypervisor.
	procs, err := ScanHypervisors(m.cfg.DataDir)
	if err != nil {
		errList = append(errList, err)
	}
	for _, p := range procs {
		if m.ownsProcess(recs, p, atStart) {
			continue
		}
		if err := KillProcess(p, 5*time.Second); err != nil {
			errList = append(errList, err)
			continue
		}
		rep.Killed = append(rep.Killed, fmt.Sprintf("%s:%d", p.VMID, p.PID))
		m.log.Warn("killed hypervisor process no vm record owns", "vm_id", p.VMID, "pid", p.PID, "exe", p.Exe)
	}

	// Run directories of VMs that are destroyed or unknown.
	root := filepath.Join(m.cfg.DataDir, "vms")
	ents, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errList = append(errList, err)
	}
	for _, e := range ents {
		v, ok := recs[e.Name()]
		if ok && v.State != api.VMDestroyed {
			continue
		}
		if !ok && m.booting(e.Name()) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(root, e.Name())); err != nil {
			errList = append(errList, err)
			continue
		}
		rep.RemovedDirs = append(rep.RemovedDirs, e.Name())
		m.log.Warn("removed run directory no live vm owns", "vm_id", e.Name())
	}

	// Network slots: keep the ones records still hold.
	if m.slots != nil {
		var known []string
		for _, v := range vs {
			if !active(v.State) {
				continue
			}
			var rt runtimeDoc
			_ = json.Unmarshal(v.Runtime, &rt)
			if rt.SlotID != "" {
				known = append(known, rt.SlotID)
			}
		}
		removed, err := m.slots.Reclaim(ctx, known)
		if err != nil {
			errList = append(errList, fmt.Errorf("reclaim network slots: %w", err))
		}
		rep.RemovedSlots = removed
	}

	// Records that claim a running VM this daemon does not hold.
	if !atStart {
		for _, v := range vs {
			if v.State != api.VMReady {
				continue
			}
			in := m.inst(v.ID)
			in.mu.Lock()
			held := in.handle != nil || in.booting
			in.mu.Unlock()
			if held {
				continue
			}
			// Re-read: a stop or destroy may have finished meanwhile.
			cur, err := m.store.GetVM(ctx, v.ID, "")
			if err != nil || cur.State != api.VMReady {
				continue
			}
			rep.Lost = append(rep.Lost, v.ID)
			m.fail(v.ID, errors.New("hypervisor process is gone (found by reconciliation)"))
		}
	}
	if !rep.Empty() {
		m.log.Info("reconciled", "killed", len(rep.Killed), "removed_dirs", len(rep.RemovedDirs), "removed_slots", len(rep.RemovedSlots), "lost", len(rep.Lost))
	}
	return rep, errors.Join(errList...)
}

// ownsProcess reports whether a live record accounts for p: this daemon
// holds it, is booting that VM right now, or (at start, before anything is
// re-attached) the record persisted exactly this process.
func (m *Manager) ownsProcess(recs map[string]store.VM, p HypervisorProcess, atStart bool) bool {
	v, ok := recs[p.VMID]
	if !ok {
		// A VM created this instant has its record before its process;
		// an unknown id is an orphan.
		return false
	}
	if !active(v.State) {
		return false
	}
	if !atStart {
		in := m.inst(p.VMID)
		in.mu.Lock()
		defer in.mu.Unlock()
		if in.booting {
			return true
		}
		if in.handle != nil {
			st := in.handle.State()
			return st.PID == p.PID
		}
	}
	return RecordOwnsProcess(v, p)
}

// booting reports whether a boot of id is in progress in this daemon.
func (m *Manager) booting(id string) bool {
	m.mu.Lock()
	in := m.vms[id]
	m.mu.Unlock()
	if in == nil {
		return false
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.booting
}

// RecordOwnsProcess reports whether the record v accounts for the
// hypervisor process p while no daemon holds it: v is in an active state
// and persisted exactly this process (pid and start time). `hangar
// doctor` and `hangar gc` use it with the daemon stopped.
func RecordOwnsProcess(v store.VM, p HypervisorProcess) bool {
	if v.ID != p.VMID || !active(v.State) {
		return false
	}
	var rt runtimeDoc
	_ = json.Unmarshal(v.Runtime, &rt)
	return rt.VMM != nil && rt.VMM.PID == p.PID && rt.VMM.StartTime == p.StartTime
}

// RecordSlot returns the network slot an active record holds, "" if none.
func RecordSlot(v store.VM) string {
	if !active(v.State) {
		return ""
	}
	var rt runtimeDoc
	_ = json.Unmarshal(v.Runtime, &rt)
	return rt.SlotID
}
