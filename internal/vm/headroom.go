package vm

import (
	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/pkg/api"
)

// browserHeadroomMiB is the free space a browser VM needs on the data disk
// (its upper layer is tmpfs; console logs and sockets remain).
const browserHeadroomMiB = 256

// checkHeadroom refuses a new VM the data disk cannot hold. A base or cli
// VM's upper disk is sparse: created small, it grows with the guest's
// writes up to UpperDiskMiB, and a guest whose write fails for lack of
// host space is paused by QEMU. So a create needs that much free now,
// rather than reporting ready and failing later.
func (m *Manager) checkHeadroom(kind string) error {
	needMiB := uint64(m.cfg.UpperDiskMiB)
	if kind == api.KindBrowser {
		needMiB = browserHeadroomMiB
	}
	var st unix.Statfs_t
	if err := unix.Statfs(m.cfg.DataDir, &st); err != nil {
		// Unknown is not full: the boot itself reports a real failure.
		m.log.Warn("cannot read free space of the data directory", "dir", m.cfg.DataDir, "err", err)
		return nil
	}
	freeMiB := st.Bavail * uint64(st.Bsize) >> 20
	if freeMiB < needMiB {
		return errs.E(errs.NoSpace, "the host's data disk has %d MiB free; a %s VM needs %d MiB for its disk; free space or delete VMs first", freeMiB, kind, needMiB)
	}
	return nil
}
