package vm

import (
	"context"
	"slices"
	"time"

	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// Wait waits until the VM is in one of states and returns it. A VM that
// fails or is destroyed meanwhile ends the wait with a conflict saying so
// (unless that state was asked for). When ctx ends first it returns the VM
// as it is with ctx's error.
func (m *Manager) Wait(ctx context.Context, caller store.User, id string, states []string) (api.VM, error) {
	for {
		v, err := m.get(ctx, caller, id)
		if err != nil && ctx.Err() != nil {
			// The deadline passed during the read: say what the VM is.
			if v, gerr := m.get(context.WithoutCancel(ctx), caller, id); gerr == nil {
				return m.toAPI(v), ctx.Err()
			}
		}
		if err != nil {
			return api.VM{}, err
		}
		if slices.Contains(states, v.State) && (v.State != api.VMReady || m.inst(id).client() != nil) {
			return m.toAPI(v), nil
		}
		if v.State == api.VMFailed || v.State == api.VMDestroyed {
			return m.toAPI(v), errs.E(errs.Conflict, "vm %s is %s: %s", id, v.State, v.LastError)
		}
		select {
		case <-ctx.Done():
			return m.toAPI(v), ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
