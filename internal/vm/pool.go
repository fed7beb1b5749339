package vm

// The warm browser pool: up to browser_pool_size browser VMs cloned from
// the browser template and kept ready, so that a login gets a VM with
// Chromium already up in the time a database update takes, instead of a
// cold boot (about 16–26 s under emulation). A login takes one; the pool
// refills in the background. Pool VMs are records owned by the system
// owner with purpose "pool": reconciliation and re-attach after a restart
// treat them like any VM, List never shows them, and taking one moves it
// to the login's user by compare-and-swap, so two logins never share one.
// When the pool is empty (or no template exists yet) the login boots a
// VM cold, and its session's timings say which it was.

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

type warmPool struct {
	mu    sync.Mutex // guards ready and size
	size  int
	ready []string
	wake  chan struct{}

	once         sync.Once
	hits, misses prometheus.Counter
}

func (p *warmPool) init() {
	p.once.Do(func() {
		p.wake = make(chan struct{}, 1)
		p.hits = prometheus.NewCounter(prometheus.CounterOpts{Name: "hangar_browser_pool_hits_total", Help: "Logins that got a warm browser VM from the pool."})
		p.misses = prometheus.NewCounter(prometheus.CounterOpts{Name: "hangar_browser_pool_misses_total", Help: "Logins that found the pool empty and booted a browser VM cold."})
	})
}

func (p *warmPool) poke() {
	p.init()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// SetPool sets how many warm browser VMs to keep; call before RunPool.
func (m *Manager) SetPool(size int) {
	m.pool.init()
	m.pool.mu.Lock()
	m.pool.size = size
	m.pool.mu.Unlock()
}

// PoolReady is how many warm VMs wait now (tests, metrics).
func (m *Manager) PoolReady() int {
	m.pool.mu.Lock()
	defer m.pool.mu.Unlock()
	return len(m.pool.ready)
}

// RunPool adopts the pool VMs a previous daemon left (re-attached by
// Recover), then keeps the pool full until ctx ends. Call after Recover.
func (m *Manager) RunPool(ctx context.Context) {
	m.pool.init()
	m.pool.mu.Lock()
	size := m.pool.size
	m.pool.mu.Unlock()
	m.adoptPool(ctx)
	if size <= 0 {
		return
	}
	for {
		m.fillPool(ctx)
		select {
		case <-ctx.Done():
			return
		case <-m.pool.wake:
		case <-time.After(30 * time.Second):
		}
	}
}

// adoptPool takes over the ready pool VMs of the records and destroys
// pool VMs that were half-made when the last daemon stopped.
func (m *Manager) adoptPool(ctx context.Context) {
	vs, err := m.store.ListVMs(ctx, "")
	if err != nil {
		m.log.Warn("adopt warm pool", "err", err)
		return
	}
	for _, v := range vs {
		var sp specDoc
		_ = json.Unmarshal(v.Spec, &sp)
		if sp.Purpose != purposePool && sp.Purpose != purposeTemplate || v.State == api.VMDestroyed {
			continue
		}
		if sp.Purpose == purposePool && (v.State == api.VMReady || v.State == api.VMBooting && m.booting(v.ID)) {
			m.pool.mu.Lock()
			m.pool.ready = append(m.pool.ready, v.ID)
			m.pool.mu.Unlock()
			m.log.Info("warm pool vm adopted", "vm_id", v.ID, "state", v.State)
			continue
		}
		m.log.Info("removing a pool or template vm left unfinished", "vm_id", v.ID, "state", v.State)
		if err := m.destroy(ctx, v); err != nil {
			m.log.Warn("remove unfinished pool vm", "vm_id", v.ID, "err", err)
		}
	}
}

// fillPool clones browser VMs until the pool is full or the host's
// browser limit is reached.
func (m *Manager) fillPool(ctx context.Context) {
	for ctx.Err() == nil {
		m.pool.mu.Lock()
		need := m.pool.size - len(m.pool.ready)
		m.pool.mu.Unlock()
		if need <= 0 || m.browsersRunning(ctx) >= m.cfg.MaxBrowserVMs {
			return
		}
		id, err := m.newPoolVM(ctx)
		if err != nil {
			if ctx.Err() == nil {
				m.log.Warn("warm pool: could not make a browser vm; retrying later", "err", err)
			}
			return
		}
		m.pool.mu.Lock()
		m.pool.ready = append(m.pool.ready, id)
		m.pool.mu.Unlock()
	}
}

func (m *Manager) browsersRunning(ctx context.Context) int {
	vs, err := m.store.ListVMs(ctx, "")
	if err != nil {
		return 1 << 30
	}
	n := 0
	for _, v := range vs {
		if v.Kind == api.KindBrowser && v.State != api.VMStopped && v.State != api.VMFailed && v.State != api.VMDestroyed {
			n++
		}
	}
	return n
}

// newPoolVM clones one browser VM from the template (building it first
// if needed) and returns its id once it is ready.
func (m *Manager) newPoolVM(ctx context.Context) (string, error) {
	td, err := m.Template(ctx, api.KindBrowser)
	if err != nil {
		return "", err
	}
	owner, err := m.systemOwner(ctx)
	if err != nil {
		return "", err
	}
	sp, _ := shape(api.KindBrowser, api.CreateVMRequest{})
	sp.Purpose = purposePool
	spec, _ := json.Marshal(sp)
	now := time.Now().UTC()
	v := store.VM{ID: store.NewID("vm"), OwnerID: owner, Kind: api.KindBrowser, State: api.VMCreating, Spec: spec, Runtime: []byte("{}"), CreatedAt: now, UpdatedAt: now}
	if err := m.store.CreateVM(ctx, v); err != nil {
		return "", err
	}
	in := m.inst(v.ID)
	in.mu.Lock()
	in.booting = true
	in.mu.Unlock()
	err = m.clone(ctx, v.ID, td)
	in.mu.Lock()
	in.booting = false
	in.mu.Unlock()
	if err != nil {
		m.fail(v.ID, err)
		if cur, gerr := m.store.GetVM(context.WithoutCancel(ctx), v.ID, ""); gerr == nil {
			_ = m.destroy(context.WithoutCancel(ctx), cur)
		}
		return "", err
	}
	return v.ID, nil
}

// takeWarm hands a ready pool VM to caller as a login VM; false when the
// pool has none (the caller boots one cold).
func (m *Manager) takeWarm(ctx context.Context, caller store.User) (api.VM, bool) {
	m.pool.init()
	for {
		m.pool.mu.Lock()
		if len(m.pool.ready) == 0 {
			m.pool.mu.Unlock()
			m.pool.misses.Inc()
			m.pool.poke()
			return api.VM{}, false
		}
		id := m.pool.ready[0]
		m.pool.ready = m.pool.ready[1:]
		m.pool.mu.Unlock()
		m.pool.poke()

		v, err := m.store.GetVM(ctx, id, "")
		if err != nil {
			continue
		}
		if v.State != api.VMReady || m.inst(id).client() == nil {
			m.log.Warn("warm pool vm not usable; dropping it", "vm_id", id, "state", v.State)
			_ = m.destroy(context.WithoutCancel(ctx), v)
			continue
		}
		var sp specDoc
		_ = json.Unmarshal(v.Spec, &sp)
		sp.Purpose = api.PurposeLogin
		spec, _ := json.Marshal(sp)
		if err := m.store.TransferVM(ctx, id, v.OwnerID, caller.ID, spec); err != nil {
			m.log.Warn("take warm pool vm", "vm_id", id, "err", err)
			continue
		}
		if v, err = m.store.GetVM(ctx, id, ""); err != nil {
			continue
		}
		m.pool.hits.Inc()
		m.log.Info("login vm taken from the warm pool", "vm_id", id, "user_id", caller.ID)
		m.publish(v, "vm_ready", map[string]any{"warm_pool": true})
		return m.toAPI(v), true
	}
}

// registerPool adds the pool's metrics to reg.
func (m *Manager) registerPool(reg prometheus.Registerer) {
	m.pool.init()
	reg.MustRegister(m.pool.hits, m.pool.misses, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hangar_browser_pool_ready", Help: "Warm browser VMs waiting for a login.",
	}, func() float64 { return float64(m.PoolReady()) }))
}

// withoutOnePoolVM is all less one ready pool VM: the one a login is about
// to take, whose host browser slot it keeps.
func withoutOnePoolVM(all []store.VM) []store.VM {
	for i, v := range all {
		var sp specDoc
		_ = json.Unmarshal(v.Spec, &sp)
		if sp.Purpose == purposePool && v.State == api.VMReady {
			return append(append([]store.VM(nil), all[:i]...), all[i+1:]...)
		}
	}
	return all
}
