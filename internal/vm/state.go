package vm

import (
	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// Every write of a VM record is a compare-and-swap on its version (see
// Manager.update): the writer names the version it read, and a write that
// lost a race re-reads and tries again. Retrying alone would still let a
// late writer undo a decision made meanwhile (a stop finishing after a
// destroy writes "stopped" over "destroyed"), so each retry also checks the
// state change against the transitions below, taken from the state the
// writer finds, not the one it first read.

// updateAttempts bounds the retries of one write that keeps losing the
// compare-and-swap. Writers of one VM are few (API call, boot, watcher), so
// more than a couple of retries means something is wrong.
const updateAttempts = 8

// from lists, for each state, the states a VM may enter it from. A write
// that keeps the state is always allowed (it updates runtime data), except
// on a destroyed VM, which no write may touch.
var from = map[string][]string{
	// Start boots a stopped or failed VM again.
	api.VMCreating: {api.VMStopped, api.VMFailed},
	// Recovery after a daemon restart boots a VM recorded ready but
	// without a hypervisor again.
	api.VMBooting: {api.VMCreating, api.VMReady},
	// Recovery re-attaches to a VM recorded creating or booting; a resume
	// ends ready, and so does a hibernation that failed (the VM keeps
	// running) or was interrupted with its hypervisor still alive.
	api.VMReady:    {api.VMCreating, api.VMBooting, api.VMResuming, api.VMHibernating},
	api.VMStopping: {api.VMCreating, api.VMBooting, api.VMReady, api.VMFailed, api.VMHibernated},
	api.VMStopped:  {api.VMStopping, api.VMFailed},
	api.VMFailed:   {api.VMCreating, api.VMBooting, api.VMReady, api.VMStopping, api.VMHibernating, api.VMHibernated, api.VMResuming},
	// Hibernation: ready → hibernating → hibernated → resuming → ready; a
	// resume that fails, or is interrupted with its snapshot intact, leaves
	// the VM hibernated.
	api.VMHibernating: {api.VMReady},
	api.VMHibernated:  {api.VMHibernating, api.VMResuming},
	api.VMResuming:    {api.VMHibernated},
	// Destroy may end a VM in any state.
	api.VMDestroyed: {api.VMCreating, api.VMBooting, api.VMReady, api.VMStopping, api.VMStopped, api.VMFailed,
		api.VMHibernating, api.VMHibernated, api.VMResuming},
}

// transition says whether a VM in state cur may be written with state next,
// and why not.
func transition(id, cur, next string) error {
	if cur == api.VMDestroyed {
		// store.ErrNotFound underneath: to every caller a destroyed VM is
		// as gone as a deleted record.
		return errs.Wrap(errs.NotFound, store.ErrNotFound, "vm %s not found (destroyed)", id)
	}
	if cur == next {
		return nil
	}
	for _, s := range from[next] {
		if s == cur {
			return nil
		}
	}
	return errs.E(errs.Conflict, "vm %s is %s and cannot become %s", id, cur, next)
}
