package vm

import (
	"encoding/json"

	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// Quotas are checked in Create inside the store's CreateVMChecked, over the
// VMs that transaction reads, so the check and the insert it allows are one
// step: parallel creates, in one daemon or several on one Postgres, cannot
// overshoot a limit.
//
// Every quota error names the setting, the limit, what the user (or the
// host) uses and what is left, so the user knows what to free.

// usage is what one user's VMs hold.
type usage struct {
	vms, browsers, hostBrowsers int
	vcpus, memoryMiB, diskMiB   int
}

// diskMiB is the disk a VM of kind holds: persistent VMs have an upper
// disk; a browser VM's upper layer is tmpfs.
func (m *Manager) diskMiB(kind string) int {
	if kind == api.KindBrowser {
		return 0
	}
	return m.cfg.UpperDiskMiB
}

// running says whether a VM holds a browser slot.
func running(state string) bool {
	return state != api.VMStopped && state != api.VMFailed && state != api.VMDestroyed
}

func (m *Manager) usageOf(all []store.VM, ownerID string) usage {
	var u usage
	for _, v := range all {
		if v.State == api.VMDestroyed {
			continue
		}
		if v.Kind == api.KindBrowser && running(v.State) {
			u.hostBrowsers++
		}
		// The warm pool and templates take host browser slots but belong
		// to nobody's share (they are only recorded under the first admin).
		if v.OwnerID != ownerID || hidden(v) {
			continue
		}
		var sp specDoc
		_ = json.Unmarshal(v.Spec, &sp)
		u.vms++
		u.vcpus += sp.VCPUs
		u.memoryMiB += sp.MemoryMiB
		u.diskMiB += m.diskMiB(v.Kind)
		if v.Kind == api.KindBrowser && running(v.State) {
			u.browsers++
		}
	}
	return u
}

// checkQuota refuses a new VM of kind and shape sp for ownerID when it
// would exceed a per-user total or a browser limit.
func (m *Manager) checkQuota(all []store.VM, ownerID, kind string, sp specDoc) error {
	u := m.usageOf(all, ownerID)
	if u.vms >= m.cfg.MaxVMsPerUser {
		return errs.E(errs.Quota, "max_vms_per_user is %d: you have %d VMs, 0 left; delete one first", m.cfg.MaxVMsPerUser, u.vms)
	}
	type total struct {
		setting         string
		limit, use, add int
		unit            string
	}
	for _, t := range []total{
		{"max_vcpus_per_user", m.cfg.MaxVCPUsPerUser, u.vcpus, sp.VCPUs, "vCPUs"},
		{"max_memory_mib_per_user", m.cfg.MaxMemoryMiBPerUser, u.memoryMiB, sp.MemoryMiB, "MiB of memory"},
		{"max_disk_mib_per_user", m.cfg.MaxDiskMiBPerUser, u.diskMiB, m.diskMiB(kind), "MiB of disk"},
	} {
		if t.limit > 0 && t.add > 0 && t.use+t.add > t.limit {
			return errs.E(errs.Quota, "%s is %d: your VMs use %d %s, %d left, and this VM needs %d; delete a VM or ask for a smaller one",
				t.setting, t.limit, t.use, t.unit, max(t.limit-t.use, 0), t.add)
		}
	}
	if kind != api.KindBrowser {
		return nil
	}
	perUser := m.cfg.MaxBrowserVMsPerUser
	if perUser <= 0 {
		perUser = m.cfg.MaxBrowserVMs
	}
	if u.browsers >= perUser {
		return errs.E(errs.Quota, "max_browser_vms_per_user is %d: you run %d browser VMs (logins), 0 left; finish or cancel one first", perUser, u.browsers)
	}
	if u.hostBrowsers >= m.cfg.MaxBrowserVMs {
		return errs.E(errs.Quota, "max_browser_vms is %d: this host runs %d browser VMs, 0 left; try again when one ends", m.cfg.MaxBrowserVMs, u.hostBrowsers)
	}
	return nil
}
