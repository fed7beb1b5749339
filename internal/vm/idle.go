package vm

// The idle lifecycle: a workspace VM nobody uses gives its memory back by
// hibernating, and a VM parked for long (hibernated or stopped) or a
// browser VM left outside a login is destroyed.
//
// "Used" is what the API sees: exec, files, prompts, port forwards and
// service logs. The manager remembers when each VM was last used (in
// memory: after a daemon restart every VM counts as used at start, which
// only delays hibernation) and how many calls are in flight (a long exec or
// a logs follow keeps the VM awake). A running prompt keeps it awake too,
// found in the store.
//
// The decisions are taken by a sweep and carried out through the durable
// task queue, so a daemon that dies between deciding and doing finishes the
// work after its restart; the task handlers check again that the VM is
// still idle, since the queue may run them late.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// HibernateTaskKind is the durable task that hibernates an idle VM; its
// payload is HibernateTask.
const HibernateTaskKind = "vm.hibernate"

// HibernateTask is the payload of a vm.hibernate task.
type HibernateTask struct {
	VMID string `json:"vm_id"`
}

// TaskQueue is where the idle sweep puts its work (the durable runner).
type TaskQueue interface {
	Enqueue(ctx context.Context, kind string, payload any, runAt time.Time) (store.Task, error)
}

// requeueAfter keeps the sweep from enqueueing the same VM every pass
// while its task waits or retries.
const requeueAfter = 10 * time.Minute

// activity is the idle bookkeeping; guarded by hibernator.actMu.
type activity struct {
	last     map[string]time.Time
	busy     map[string]int
	enqueued map[string]time.Time
}

// SetIdle sets the idle limits (0 turns each off); call it before serving.
func (m *Manager) SetIdle(hibernate, destroy time.Duration) {
	m.hib.actMu.Lock()
	defer m.hib.actMu.Unlock()
	m.hib.idleHibernate, m.hib.idleDestroy = hibernate, destroy
}

// IdleLimits returns what SetIdle set.
func (m *Manager) IdleLimits() (hibernate, destroy time.Duration) {
	m.hib.actMu.Lock()
	defer m.hib.actMu.Unlock()
	return m.hib.idleHibernate, m.hib.idleDestroy
}

func (hb *hibernator) act() *activity {
	if hb.acts.last == nil {
		hb.acts = activity{last: map[string]time.Time{}, busy: map[string]int{}, enqueued: map[string]time.Time{}}
	}
	return &hb.acts
}

// touch records that the VM was used now.
func (hb *hibernator) touch(id string) {
	hb.actMu.Lock()
	defer hb.actMu.Unlock()
	hb.act().last[id] = time.Now()
}

// begin marks a call in flight on the VM until the returned func runs.
func (hb *hibernator) begin(id string) func() {
	hb.actMu.Lock()
	a := hb.act()
	a.busy[id]++
	a.last[id] = time.Now()
	hb.actMu.Unlock()
	return func() {
		hb.actMu.Lock()
		defer hb.actMu.Unlock()
		a.busy[id]--
		if a.busy[id] <= 0 {
			delete(a.busy, id)
		}
		a.last[id] = time.Now()
	}
}

// idleFor is how long the VM has not been used; a VM never seen starts
// counting now. Busy VMs are never idle.
func (hb *hibernator) idleFor(id string, now time.Time) time.Duration {
	hb.actMu.Lock()
	defer hb.actMu.Unlock()
	a := hb.act()
	if a.busy[id] > 0 {
		return 0
	}
	t, ok := a.last[id]
	if !ok {
		a.last[id] = now
		return 0
	}
	return now.Sub(t)
}

// claim reports whether the sweep may enqueue work for the VM now.
func (hb *hibernator) claim(id string, now time.Time) bool {
	hb.actMu.Lock()
	defer hb.actMu.Unlock()
	a := hb.act()
	if t, ok := a.enqueued[id]; ok && now.Sub(t) < requeueAfter {
		return false
	}
	a.enqueued[id] = now
	return true
}

// unclaim lets the sweep consider the VM again (its task has run).
func (hb *hibernator) unclaim(id string) {
	hb.actMu.Lock()
	defer hb.actMu.Unlock()
	delete(hb.act().enqueued, id)
}

// IdleSweep finds idle VMs and enqueues their hibernation or destruction.
// It returns how many tasks it enqueued.
func (m *Manager) IdleSweep(ctx context.Context, q TaskQueue) (int, error) {
	hibAfter, destroyAfter := m.IdleLimits()
	if hibAfter == 0 && destroyAfter == 0 {
		return 0, nil
	}
	vs, err := m.store.ListVMs(ctx, "")
	if err != nil {
		return 0, err
	}
	prompting := map[string]bool{}
	if hibAfter > 0 {
		ps, err := m.store.ListPrompts(ctx, store.PromptFilter{State: api.PromptRunning, Limit: 1000})
		if err != nil {
			return 0, fmt.Errorf("list running prompts: %w", err)
		}
		for _, p := range ps {
			prompting[p.VMID] = true
		}
	}
	now := time.Now()
	n := 0
	var errList []error
	for _, v := range vs {
		var sp specDoc
		_ = json.Unmarshal(v.Spec, &sp)
		workspace := sp.Purpose == "" || sp.Purpose == api.PurposeWorkspace
		switch {
		case hibAfter > 0 && v.State == api.VMReady && v.Kind != api.KindBrowser && workspace:
			if prompting[v.ID] || m.hib.idleFor(v.ID, now) < hibAfter || !m.hib.claim(v.ID, now) {
				continue
			}
			if _, err := q.Enqueue(ctx, HibernateTaskKind, HibernateTask{VMID: v.ID}, time.Time{}); err != nil {
				errList = append(errList, err)
				continue
			}
			m.log.Info("vm idle; hibernating it", "vm_id", v.ID, "idle_hibernate", hibAfter)
			n++
		case destroyAfter > 0 && (v.State == api.VMHibernated || v.State == api.VMStopped) && now.Sub(v.UpdatedAt) >= destroyAfter,
			destroyAfter > 0 && v.Kind == api.KindBrowser && workspace && active(v.State) && m.hib.idleFor(v.ID, now) >= destroyAfter:
			if !m.hib.claim(v.ID, now) {
				continue
			}
			// The owner hears it first; the task does it, durably.
			m.publish(v, "vm_idle_destroy", map[string]any{"state": v.State, "idle_destroy": destroyAfter.String()})
			if _, err := q.Enqueue(ctx, DestroyTaskKind, DestroyTask{VMID: v.ID}, time.Time{}); err != nil {
				errList = append(errList, err)
				continue
			}
			m.log.Info("vm idle too long; destroying it", "vm_id", v.ID, "state", v.State, "idle_destroy", destroyAfter)
			n++
		}
	}
	return n, errors.Join(errList...)
}

// RunHibernateTask is the handler of vm.hibernate. It hibernates the VM
// only if it is still ready and idle: the task may run late, or after the
// owner came back.
func (m *Manager) RunHibernateTask(ctx context.Context, payload []byte) error {
	var p HibernateTask
	if err := json.Unmarshal(payload, &p); err != nil || p.VMID == "" {
		return fmt.Errorf("bad vm.hibernate payload: %v", err)
	}
	hibAfter, _ := m.IdleLimits()
	if hibAfter == 0 {
		return nil
	}
	unlock := m.hib.lock(p.VMID)
	defer unlock()
	v, err := m.store.GetVM(ctx, p.VMID, "")
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if v.State != api.VMReady || m.hib.idleFor(v.ID, time.Now()) < hibAfter {
		m.hib.unclaim(v.ID)
		return nil
	}
	if _, err := m.hibernate(ctx, v); err != nil {
		// A failed hibernation left the VM running and said why; the next
		// sweep tries again after requeueAfter (the claim stays) rather
		// than the queue retrying at once.
		m.log.Warn("idle hibernation failed", "vm_id", v.ID, "err", err)
		return nil
	}
	m.hib.unclaim(v.ID)
	return nil
}
