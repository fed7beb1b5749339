package vm

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

func isQuota(t *testing.T, err error, want ...string) {
	t.Helper()
	e, ok := errs.As(err)
	if !ok || e.Kind != errs.Quota {
		t.Fatalf("err = %v, want a quota error", err)
	}
	for _, w := range want {
		if !strings.Contains(e.Msg, w) {
			t.Errorf("quota error %q does not say %q", e.Msg, w)
		}
	}
}

// TestPerUserTotals: vCPUs are counted over the user's VMs, the error names
// the limit, the use, what is left and what was asked.
func TestPerUserTotals(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			h := newHarness(t, b.dsn(t), &fakeDriver{noAgent: true}, Config{MaxVCPUsPerUser: 3, MaxBrowserVMs: 10, MaxBrowserVMsPerUser: 10})
			ctx := t.Context()
			if _, err := h.m.Create(ctx, h.alice, api.CreateVMRequest{Kind: api.KindBrowser, VCPUs: 2}); err != nil {
				t.Fatal(err)
			}
			_, err := h.m.Create(ctx, h.alice, api.CreateVMRequest{Kind: api.KindBrowser, VCPUs: 2})
			isQuota(t, err, "max_vcpus_per_user is 3", "use 2 vCPUs", "1 left", "needs 2")
			if _, err := h.m.Create(ctx, h.alice, api.CreateVMRequest{Kind: api.KindBrowser, VCPUs: 1}); err != nil {
				t.Fatalf("a VM that fits the rest: %v", err)
			}
		})
	}
}

// TestBrowserSlotsPerUser: with two browser slots on the host and one per
// user, a user holding one cannot take the other; another user can.
func TestBrowserSlotsPerUser(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			h := newHarness(t, b.dsn(t), &fakeDriver{noAgent: true}, Config{MaxBrowserVMs: 2, MaxBrowserVMsPerUser: 1})
			ctx := t.Context()
			bob := store.User{ID: store.NewID("usr"), Name: "bob", Role: store.RoleUser}
			if err := h.st.CreateUser(ctx, bob); err != nil {
				t.Fatal(err)
			}
			if _, err := h.m.Create(ctx, h.alice, api.CreateVMRequest{Kind: api.KindBrowser}); err != nil {
				t.Fatal(err)
			}
			_, err := h.m.Create(ctx, h.alice, api.CreateVMRequest{Kind: api.KindBrowser})
			isQuota(t, err, "max_browser_vms_per_user is 1", "you run 1", "0 left")
			if _, err := h.m.Create(ctx, bob, api.CreateVMRequest{Kind: api.KindBrowser}); err != nil {
				t.Fatalf("bob's login VM: %v", err)
			}
		})
	}
}

// TestQuotaHoldsUnderConcurrentCreates: parallel creates never overshoot a
// total (check and insert are one step).
func TestQuotaHoldsUnderConcurrentCreates(t *testing.T) {
	h := newHarness(t, backends[0].dsn(t), &fakeDriver{noAgent: true}, Config{MaxVCPUsPerUser: 4, MaxBrowserVMs: 20, MaxBrowserVMsPerUser: 20})
	var ok, refused atomic.Int32
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := h.m.Create(t.Context(), h.alice, api.CreateVMRequest{Kind: api.KindBrowser, VCPUs: 1})
			if err == nil {
				ok.Add(1)
			} else if e, isE := errs.As(err); isE && e.Kind == errs.Quota {
				refused.Add(1)
			} else {
				t.Errorf("create: %v", err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 4 || refused.Load() != 6 {
		t.Fatalf("%d created, %d refused; want 4 and 6", ok.Load(), refused.Load())
	}
}

// TestDiskAndMemoryTotals checks the arithmetic on a list of records:
// persistent VMs hold their upper disk, browser VMs none; destroyed VMs
// hold nothing.
func TestDiskAndMemoryTotals(t *testing.T) {
	m := &Manager{cfg: Config{MaxVMsPerUser: 10, UpperDiskMiB: 4096, MaxDiskMiBPerUser: 8192, MaxMemoryMiBPerUser: 3000, MaxBrowserVMs: 5}}
	vm := func(kind, state string, mem int) store.VM {
		return store.VM{OwnerID: "usr_a", Kind: kind, State: state, Spec: []byte(`{"vcpus":1,"memory_mib":` + strconv.Itoa(mem) + `}`)}
	}
	all := []store.VM{vm(api.KindCLI, api.VMReady, 512), vm(api.KindCLI, api.VMStopped, 512), vm(api.KindCLI, api.VMDestroyed, 512)}
	isQuota(t, m.checkQuota(all, "usr_a", api.KindCLI, specDoc{VCPUs: 1, MemoryMiB: 512}), "max_disk_mib_per_user is 8192", "use 8192 MiB of disk", "0 left", "needs 4096")
	if err := m.checkQuota(all, "usr_a", api.KindBrowser, specDoc{VCPUs: 1, MemoryMiB: 1976}); err != nil {
		t.Fatalf("a browser VM needs no disk and fits the memory left: %v", err)
	}
	isQuota(t, m.checkQuota(all, "usr_a", api.KindBrowser, specDoc{VCPUs: 1, MemoryMiB: 2048}), "max_memory_mib_per_user is 3000", "use 1024 MiB", "1976 left")
	if err := m.checkQuota(all, "usr_other", api.KindCLI, specDoc{VCPUs: 1, MemoryMiB: 512}); err != nil {
		t.Fatalf("another user's VMs count against alice: %v", err)
	}
}

// TestQuotaHoldsAcrossDaemons: two managers with their own store handles
// on one database (two daemons) create in parallel; together they never
// overshoot a user's total, because the check and the insert are one
// transaction in the store, not one mutex in a process.
func TestQuotaHoldsAcrossDaemons(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			dsn := b.dsn(t)
			cfg := Config{MaxVCPUsPerUser: 6, MaxBrowserVMs: 50, MaxBrowserVMsPerUser: 50}
			h1 := newHarness(t, dsn, &fakeDriver{noAgent: true}, cfg)
			h2 := newHarness(t, dsn, &fakeDriver{noAgent: true}, cfg, h1.alice)
			var ok, refused atomic.Int32
			var wg sync.WaitGroup
			for i := range 16 {
				m := h1.m
				if i%2 == 1 {
					m = h2.m
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := m.Create(t.Context(), h1.alice, api.CreateVMRequest{Kind: api.KindBrowser, VCPUs: 1})
					if err == nil {
						ok.Add(1)
					} else if e, isE := errs.As(err); isE && e.Kind == errs.Quota {
						refused.Add(1)
					} else {
						t.Errorf("create: %v", err)
					}
				}()
			}
			wg.Wait()
			if ok.Load() != 6 || refused.Load() != 10 {
				t.Fatalf("%d created, %d refused; want 6 and 10", ok.Load(), refused.Load())
			}
		})
	}
}
