package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/vmm"
	"github.com/hangar-vm/hangar/pkg/api"
)

// recovered is the outcome of re-attaching one hypervisor.
type recovered struct {
	h   vmm.Handle
	err error
}

// recoverHandles re-attaches the hypervisors of every VM that had one, all
// at once, each within Config.RecoverTimeout. A hung hypervisor (its
// control socket accepts but never answers) would otherwise hold the
// daemon's start for its whole deadline, and every VM after it too.
func (m *Manager) recoverHandles(ctx context.Context, vs []store.VM) map[string]recovered {
	out := map[string]recovered{}
	var mu sync.Mutex // guards out
	var wg sync.WaitGroup
	for _, v := range vs {
		switch v.State {
		case api.VMCreating, api.VMBooting, api.VMReady, api.VMStopping:
		default:
			continue
		}
		var rt runtimeDoc
		_ = json.Unmarshal(v.Runtime, &rt)
		if rt.VMM == nil {
			continue
		}
		wg.Add(1)
		go func(id string, st vmm.State) {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, m.cfg.RecoverTimeout)
			defer cancel()
			h, err := m.driver.Recover(rctx, st)
			if err != nil && rctx.Err() != nil {
				err = fmt.Errorf("hypervisor did not answer within %s: %w", m.cfg.RecoverTimeout, err)
			}
			mu.Lock()
			out[id] = recovered{h: h, err: err}
			mu.Unlock()
		}(v.ID, *rt.VMM)
	}
	wg.Wait()
	return out
}
