package store

import (
	"errors"
	"sync"
	"testing"
	"time"
)

func TestPromptRecords(t *testing.T) {
	forEachBackend(t, []storeCase{
		{"prompts", testPrompts},
		{"prompt_events", testPromptEvents},
		{"leases", testLeases},
		{"lease_race", testLeaseRace},
	})
}

func testPrompts(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	alice := mkUser(t, s, "alice")
	bob := mkUser(t, s, "bob")
	var ids []string
	for i := range 3 {
		p := Prompt{ID: NewID("prm"), OwnerID: alice.ID, Provider: "dev", State: PromptQueued, Prompt: "hello", TimeoutS: 60,
			CreatedAt: time.Now().Add(time.Duration(i) * time.Second)}
		must(t, s.CreatePrompt(ctx, p), "create prompt")
		ids = append(ids, p.ID)
	}
	must(t, s.CreatePrompt(ctx, Prompt{ID: NewID("prm"), OwnerID: bob.ID, Provider: "dev", State: PromptQueued, TimeoutS: 1}), "bob's prompt")

	page, err := s.ListPrompts(ctx, PromptFilter{OwnerID: alice.ID, Limit: 2})
	must(t, err, "list")
	if len(page) != 2 || page[0].ID != ids[2] || page[1].ID != ids[1] {
		t.Fatalf("first page = %v, want newest first %v", promptIDs(page), []string{ids[2], ids[1]})
	}
	page, err = s.ListPrompts(ctx, PromptFilter{OwnerID: alice.ID, Before: page[1].ID, Limit: 2})
	must(t, err, "list page 2")
	if len(page) != 1 || page[0].ID != ids[0] {
		t.Fatalf("second page = %v, want [%s]", promptIDs(page), ids[0])
	}
	_, err = s.GetPrompt(ctx, ids[0], bob.ID)
	isNotFound(t, err, "bob reads alice's prompt")

	p, err := s.GetPrompt(ctx, ids[0], alice.ID)
	must(t, err, "get")
	if p.ExitCode != nil || !p.StartedAt.IsZero() {
		t.Fatalf("fresh prompt = %+v", p)
	}
	p.State, p.StartedAt = PromptRunning, time.Now()
	must(t, s.UpdatePrompt(ctx, p, PromptQueued), "queued → running")
	code := 3
	p.State, p.ExitCode, p.FinishedAt, p.Error = PromptFailed, &code, time.Now(), "boom"
	must(t, s.UpdatePrompt(ctx, p, PromptRunning), "running → failed")
	// A late writer that still believes the prompt runs must lose.
	late := p
	late.State = PromptCompleted
	err = s.UpdatePrompt(ctx, late, PromptRunning)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("late running → completed: %v, want ErrConflict", err)
	}
	got, err := s.GetPrompt(ctx, p.ID, "")
	must(t, err, "get again")
	if got.State != PromptFailed || got.ExitCode == nil || *got.ExitCode != 3 || got.Error != "boom" || got.StartedAt.IsZero() || got.FinishedAt.IsZero() {
		t.Fatalf("finished prompt = %+v", got)
	}
	running, err := s.ListPrompts(ctx, PromptFilter{State: PromptQueued})
	must(t, err, "list queued")
	if len(running) != 3 {
		t.Fatalf("queued prompts = %d, want 3", len(running))
	}
}

func promptIDs(ps []Prompt) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.ID)
	}
	return out
}

func testPromptEvents(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	alice := mkUser(t, s, "alice")
	p := Prompt{ID: NewID("prm"), OwnerID: alice.ID, Provider: "dev", State: PromptRunning, TimeoutS: 60}
	must(t, s.CreatePrompt(ctx, p), "create prompt")
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.AppendPromptEvent(ctx, PromptEvent{PromptID: p.ID, Type: "output", Data: []byte(`{"text":"x"}`)}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	evs, err := s.ListPromptEvents(ctx, p.ID, 0, 0)
	must(t, err, "list events")
	if len(evs) != 10 {
		t.Fatalf("%d events, want 10", len(evs))
	}
	for i, e := range evs {
		if e.Seq != int64(i+1) || e.Type != "output" {
			t.Fatalf("event %d = %+v: want seq %d", i, e, i+1)
		}
	}
	after, err := s.ListPromptEvents(ctx, p.ID, 7, 2)
	must(t, err, "list after 7")
	if len(after) != 2 || after[0].Seq != 8 || after[1].Seq != 9 {
		t.Fatalf("after 7, limit 2: %+v", after)
	}
}

func testLeases(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	alice := mkUser(t, s, "alice")
	vm1 := VM{ID: NewID("vm"), OwnerID: alice.ID, Kind: "cli", State: "ready"}
	vm2 := VM{ID: NewID("vm"), OwnerID: alice.ID, Kind: "cli", State: "ready"}
	must(t, s.CreateVM(ctx, vm1), "vm1")
	must(t, s.CreateVM(ctx, vm2), "vm2")
	until := time.Now().Add(time.Minute)
	l, err := s.AcquireLease(ctx, Lease{OwnerID: alice.ID, Provider: "dev", VMID: vm1.ID, Holder: "d1", ExpiresAt: until})
	must(t, err, "vm1 acquires")
	if l.VMID != vm1.ID || l.AcquiredAt.IsZero() {
		t.Fatalf("lease = %+v", l)
	}
	cur, err := s.AcquireLease(ctx, Lease{OwnerID: alice.ID, Provider: "dev", VMID: vm2.ID, Holder: "d1", ExpiresAt: until})
	if !errors.Is(err, ErrConflict) || cur.VMID != vm1.ID {
		t.Fatalf("vm2 acquires a held lease: %+v, %v; want ErrConflict naming vm1", cur, err)
	}
	_, err = s.AcquireLease(ctx, Lease{OwnerID: alice.ID, Provider: "dev", VMID: vm1.ID, Holder: "d1", ExpiresAt: until.Add(time.Minute)})
	must(t, err, "the holder acquires again (idempotent)")
	isNotFound(t, s.RenewLease(ctx, alice.ID, "dev", vm2.ID, until), "vm2 renews a lease it does not hold")
	isNotFound(t, s.ReleaseLease(ctx, alice.ID, "dev", vm2.ID), "vm2 releases a lease it does not hold")
	// An expired lease can be taken over: the holder's daemon died.
	must(t, s.RenewLease(ctx, alice.ID, "dev", vm1.ID, time.Now().Add(-time.Second)), "expire vm1's lease")
	l, err = s.AcquireLease(ctx, Lease{OwnerID: alice.ID, Provider: "dev", VMID: vm2.ID, Holder: "d2", ExpiresAt: until})
	must(t, err, "vm2 takes over an expired lease")
	if l.VMID != vm2.ID || l.Holder != "d2" {
		t.Fatalf("lease after takeover = %+v", l)
	}
	ls, err := s.ListLeases(ctx, alice.ID)
	must(t, err, "list leases")
	if len(ls) != 1 || ls[0].VMID != vm2.ID {
		t.Fatalf("leases = %+v", ls)
	}
	must(t, s.ReleaseLease(ctx, alice.ID, "dev", vm2.ID), "release")
	_, err = s.GetLease(ctx, alice.ID, "dev")
	isNotFound(t, err, "released lease")
}

// testLeaseRace: of many VMs acquiring one free lease at once, exactly one
// wins.
func testLeaseRace(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	alice := mkUser(t, s, "alice")
	var vms []string
	for range 8 {
		v := VM{ID: NewID("vm"), OwnerID: alice.ID, Kind: "cli", State: "ready"}
		must(t, s.CreateVM(ctx, v), "vm")
		vms = append(vms, v.ID)
	}
	var mu sync.Mutex
	wins := 0
	var wg sync.WaitGroup
	for _, id := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.AcquireLease(ctx, Lease{OwnerID: alice.ID, Provider: "codex", VMID: id, Holder: "d", ExpiresAt: time.Now().Add(time.Minute)})
			switch {
			case err == nil:
				mu.Lock()
				wins++
				mu.Unlock()
			case !errors.Is(err, ErrConflict):
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d VMs acquired one lease at once, want exactly 1", wins)
	}
}
