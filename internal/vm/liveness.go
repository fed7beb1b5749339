package vm

import (
	"context"
	"time"

	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/vmm"
	"github.com/hangar-vm/hangar/pkg/api"
)

// A VM whose hypervisor is frozen (or whose agent hangs) keeps its process
// and its "ready" record, so nothing else would notice: once a VM is ready
// the manager asks its agent for health every livenessInterval, with a
// deadline, and after livenessFailures misses in a row reports the VM
// unresponsive (api.VM.Unresponsive, an event, calls refused fast) until it
// answers again. A link that ended (yamux keepalive gives up on a guest
// paused for ~25 s) is redialled on each probe, so a VM that thaws comes
// back by itself.
//
// The deadline and the count are generous on purpose: a TCG guest on a
// loaded host can be slow to answer, and a VM wrongly reported
// unresponsive has its calls refused; a hang is still noticed within
// about 40 s.
const (
	livenessInterval = 10 * time.Second
	livenessTimeout  = 10 * time.Second
	livenessFailures = 3
)

// prober is the liveness loop, apart from the manager so it can be tested
// against a real link.
type prober struct {
	interval, timeout time.Duration
	failures          int
	// probe asks the current link for health; errLinkDown when there is
	// no live link.
	probe func(ctx context.Context) error
	// redial replaces a link that ended.
	redial func(ctx context.Context) error
	// report is called when the VM turns unresponsive (since: the first
	// missed probe) and when it answers again.
	report func(unresponsive bool, since time.Time)
	// done ends the loop (hypervisor exit, manager closing).
	done <-chan struct{}
}

var errLinkDown = errs.E(errs.Unavailable, "agent link is down")

func (p *prober) run() {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	missed := 0
	var since time.Time
	unresponsive := false
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
		err := p.probe(ctx)
		if err == errLinkDown {
			err = p.redial(ctx)
			if err == nil {
				err = p.probe(ctx)
			}
		}
		cancel()
		if err == nil {
			missed = 0
			if unresponsive {
				unresponsive = false
				p.report(false, since)
			}
			continue
		}
		if missed == 0 {
			since = time.Now()
		}
		missed++
		if missed >= p.failures && !unresponsive {
			unresponsive = true
			p.report(true, since)
		}
	}
}

// watchLiveness runs the prober for a ready VM until its hypervisor exits.
func (m *Manager) watchLiveness(id string, h vmm.Handle, token string) {
	in := m.inst(id)
	done := make(chan struct{})
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		select {
		case <-h.Done():
		case <-m.closing:
		}
		close(done)
	}()
	p := &prober{
		interval: livenessInterval, timeout: livenessTimeout, failures: livenessFailures, done: done,
		probe: func(ctx context.Context) error {
			c := in.client()
			if c == nil || isClosed(c.Done()) {
				return errLinkDown
			}
			_, err := c.Health(ctx)
			return err
		},
		redial: func(ctx context.Context) error {
			c, err := m.dial(ctx, h, token)
			if err != nil {
				return err
			}
			in.mu.Lock()
			old := in.link
			if in.handle != h {
				in.mu.Unlock()
				c.Close() // the VM stopped meanwhile
				return errLinkDown
			}
			in.link = c
			in.mu.Unlock()
			if old != nil {
				old.Close()
			}
			m.log.Info("agent link redialled", "vm_id", id)
			return nil
		},
		report: func(unresponsive bool, since time.Time) {
			in.mu.Lock()
			if unresponsive {
				in.unresponsiveSince = since
			} else {
				in.unresponsiveSince = time.Time{}
			}
			in.mu.Unlock()
			v, err := m.store.GetVM(context.Background(), id, "")
			if err != nil {
				return
			}
			if unresponsive {
				m.log.Warn("vm unresponsive: its agent does not answer", "vm_id", id, "since", since)
				m.publish(v, "vm_unresponsive", map[string]any{"since": since})
			} else {
				m.log.Info("vm responsive again", "vm_id", id, "unresponsive_for", time.Since(since).Round(time.Second))
				m.publish(v, "vm_responsive", nil)
			}
		},
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		p.run()
	}()
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// unresponsive reports since when the VM has not answered (zero: it does).
func (in *instance) unresponsive() time.Time {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.unresponsiveSince
}

// markUnresponsive fills the API view's liveness fields.
func markUnresponsive(out *api.VM, since time.Time) {
	if since.IsZero() {
		return
	}
	out.Unresponsive = true
	s := since.UTC()
	out.UnresponsiveSince = &s
}
