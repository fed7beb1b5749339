package daemon

import (
	"context"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/vm"
)

// setupIdle hands the VM manager its idle limits and registers the task
// that hibernates an idle VM (vm.destroy is registered with the logins).
func (d *Daemon) setupIdle() {
	d.vms.SetIdle(time.Duration(d.cfg.IdleHibernate), time.Duration(d.cfg.IdleDestroy))
	d.vms.SetPool(d.cfg.BrowserPoolSize)
	d.runner.Register(vm.HibernateTaskKind, func(ctx context.Context, t store.Task) error {
		return d.vms.RunHibernateTask(ctx, t.Payload)
	})
}

// idleLoop sweeps for idle VMs: a sixth of the shorter idle limit, between
// one second (tests with limits of seconds) and one minute.
func (d *Daemon) idleLoop(ctx context.Context) {
	hib, destroy := d.vms.IdleLimits()
	if hib == 0 && destroy == 0 {
		return
	}
	every := time.Minute
	for _, l := range []time.Duration{hib, destroy} {
		if l > 0 && l/6 < every {
			every = l / 6
		}
	}
	every = max(every, time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := d.vms.IdleSweep(ctx, d.runner); err != nil && ctx.Err() == nil {
			d.log.Warn("idle sweep", "err", err)
		}
	}
}
