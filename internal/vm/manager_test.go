package vm

import (
	"context"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// TestLifecycle boots a VM through a real agent, stops, starts and
// destroys it, and checks each state lands in the store with its version
// moving on.
func TestLifecycle(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			h := newHarness(t, b.dsn(t), &fakeDriver{}, Config{})
			ctx := t.Context()
			v, err := h.m.Create(ctx, h.alice, api.CreateVMRequest{Kind: api.KindBrowser})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			rec := h.waitState(t, v.ID, api.VMReady)
			if rec.Version < 3 { // created, booting, process recorded, ready
				t.Fatalf("ready vm version %d, want at least 3", rec.Version)
			}
			if _, err := h.m.WaitReady(ctx, h.alice, v.ID); err != nil {
				t.Fatalf("wait ready: %v", err)
			}
			st, err := h.m.Stop(ctx, h.alice, v.ID)
			if err != nil || st.State != api.VMStopped {
				t.Fatalf("stop = %+v, %v", st, err)
			}
			if _, err := h.m.Start(ctx, h.alice, v.ID); err != nil {
				t.Fatalf("start: %v", err)
			}
			h.waitState(t, v.ID, api.VMReady)
			if err := h.m.Destroy(ctx, h.alice, v.ID); err != nil {
				t.Fatalf("destroy: %v", err)
			}
			h.waitState(t, v.ID, api.VMDestroyed)
			if _, err := h.m.Start(ctx, h.alice, v.ID); err == nil {
				t.Fatal("a destroyed vm started again")
			}
		})
	}
}

// TestStopRacingDestroyStaysDestroyed holds a stop between "stopping" and
// "stopped", destroys the VM meanwhile, then lets the stop finish: its
// write of "stopped" must not bring the destroyed VM back.
func TestStopRacingDestroyStaysDestroyed(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			d := &fakeDriver{noAgent: true, stopGate: make(chan struct{}), stopping: make(chan struct{}, 1)}
			h := newHarness(t, b.dsn(t), d, Config{})
			ctx := t.Context()
			v, err := h.m.Create(ctx, h.alice, api.CreateVMRequest{Kind: api.KindBrowser})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for h.m.HypervisorPID(v.ID) == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the fake hypervisor never started")
				}
				time.Sleep(10 * time.Millisecond)
			}
			stopErr := make(chan error, 1)
			go func() {
				_, err := h.m.Stop(ctx, h.alice, v.ID)
				stopErr <- err
			}()
			<-d.stopping // the stop has recorded "stopping" and waits on the hypervisor
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := h.m.Destroy(dctx, h.alice, v.ID); err != nil {
				t.Fatalf("destroy: %v", err)
			}
			close(d.stopGate)
			err = <-stopErr
			if e, ok := errs.As(err); !ok || e.Kind != errs.NotFound {
				t.Errorf("stop of a vm destroyed meanwhile = %v, want a not-found error", err)
			}
			rec, err := h.st.GetVM(ctx, v.ID, "")
			if err != nil || rec.State != api.VMDestroyed {
				t.Fatalf("vm after stop raced destroy: %s (%v), want destroyed", rec.State, err)
			}
		})
	}
}

// TestTransitions pins the guard every write passes: nothing leaves
// destroyed, boot progress cannot overwrite a stop.
func TestTransitions(t *testing.T) {
	cases := []struct {
		cur, next string
		ok        bool
	}{
		{api.VMCreating, api.VMBooting, true},
		{api.VMBooting, api.VMReady, true},
		{api.VMReady, api.VMStopping, true},
		{api.VMStopping, api.VMStopped, true},
		{api.VMStopped, api.VMCreating, true},
		{api.VMFailed, api.VMCreating, true},
		{api.VMReady, api.VMDestroyed, true},
		{api.VMReady, api.VMReady, true},
		{api.VMStopping, api.VMReady, false},
		{api.VMStopping, api.VMBooting, false},
		{api.VMStopped, api.VMReady, false},
		{api.VMDestroyed, api.VMStopped, false},
		{api.VMDestroyed, api.VMDestroyed, false},
		{api.VMDestroyed, api.VMFailed, false},
		{api.VMReady, api.VMHibernating, true},
		{api.VMHibernating, api.VMHibernated, true},
		{api.VMHibernating, api.VMReady, true}, // a failed hibernation keeps the VM running
		{api.VMHibernated, api.VMResuming, true},
		{api.VMResuming, api.VMReady, true},
		{api.VMResuming, api.VMHibernated, true}, // resume failed, snapshot intact
		{api.VMHibernated, api.VMDestroyed, true},
		{api.VMStopped, api.VMHibernating, false},
		{api.VMHibernated, api.VMReady, false}, // only through a resume
		{api.VMStopping, api.VMHibernated, false},
	}
	for _, c := range cases {
		err := transition("vm_x", c.cur, c.next)
		if (err == nil) != c.ok {
			t.Errorf("%s -> %s: err %v, want ok=%v", c.cur, c.next, err, c.ok)
		}
	}
}

// TestConcurrentDestroys: a user's destroy racing the login's destroy task
// both succeed, the VM ends destroyed once (one vm_destroyed event).
func TestConcurrentDestroys(t *testing.T) {
	h := newHarness(t, backends[0].dsn(t), &fakeDriver{}, Config{})
	ctx := t.Context()
	v, err := h.m.Create(ctx, h.alice, api.CreateVMRequest{Kind: api.KindBrowser})
	if err != nil {
		t.Fatal(err)
	}
	h.waitState(t, v.ID, api.VMReady)
	errc := make(chan error, 2)
	go func() { errc <- h.m.Destroy(ctx, h.alice, v.ID) }()
	go func() { errc <- h.m.RunDestroyTask(ctx, []byte(`{"vm_id":"`+v.ID+`"}`)) }()
	for range 2 {
		if err := <-errc; err != nil {
			if e, ok := errs.As(err); !ok || e.Kind != errs.NotFound {
				t.Errorf("destroy: %v", err)
			}
		}
	}
	h.waitState(t, v.ID, api.VMDestroyed)
	evs, err := h.st.ListEvents(ctx, store.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range evs {
		if e.Type == "vm_destroyed" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d vm_destroyed events, want 1", n)
	}
}
