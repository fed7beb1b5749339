package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/vmm"
	"github.com/hangar-vm/hangar/pkg/api"
)

// hungDriver's hypervisors never answer a re-attach (a frozen QEMU whose
// QMP socket accepts but never greets).
type hungDriver struct{ exitingDriver }

func (hungDriver) Recover(ctx context.Context, st vmm.State) (vmm.Handle, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestRecoverDoesNotStallOnHungHypervisors: five VMs whose hypervisors hang
// at re-attach cost the daemon's start one re-attach deadline, not five,
// and each is reported with why.
func TestRecoverDoesNotStallOnHungHypervisors(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	s, err := store.Open(ctx, filepath.Join(dir, "hangar.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CreateUser(ctx, store.User{ID: "u1", Name: "u1", Role: "admin"}); err != nil {
		t.Fatal(err)
	}
	const n, deadline = 5, 400 * time.Millisecond
	for i := range n {
		rt, _ := json.Marshal(runtimeDoc{VMM: &vmm.State{Driver: "qemu", ID: fmt.Sprint("vm-", i), PID: 1 << 30}, Token: "t"})
		now := time.Now().UTC()
		v := store.VM{ID: fmt.Sprint("vm_", i), OwnerID: "u1", Kind: api.KindBase, State: api.VMReady, Spec: []byte("{}"), Runtime: rt, CreatedAt: now, UpdatedAt: now}
		if err := s.CreateVM(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	m := New(Config{DataDir: dir, RecoverTimeout: deadline}, s, events.NewBus(s, log), fakeImages{}, hungDriver{exitingDriver{t}}, log)
	defer m.Close()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	began := time.Now()
	if err := m.Recover(rctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	t.Logf("MEASURED recover with %d hung hypervisors and a %v deadline: %v", n, deadline, took.Round(time.Millisecond))
	if took > 3*deadline {
		t.Fatalf("recover took %v for %d hung hypervisors; want about one deadline (%v)", took, n, deadline)
	}
	for i := range n {
		v, err := s.GetVM(ctx, fmt.Sprint("vm_", i), "")
		if err != nil || v.State != api.VMFailed || !strings.Contains(v.LastError, "did not answer within") {
			t.Fatalf("vm_%d after recover: %s %q %v", i, v.State, v.LastError, err)
		}
	}
}
