package login

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/liveview"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/pkg/api"
)

// hookStore runs afterGet once, right after the first GetAuthSession
// returns: the moment between a writer's read and its write, where another
// writer can slip in.
type hookStore struct {
	store.Store
	fired    atomic.Bool // afterGet ran (it reads sessions itself)
	afterGet func()
}

func (s *hookStore) GetAuthSession(ctx context.Context, id, owner string) (store.AuthSession, error) {
	a, err := s.Store.GetAuthSession(ctx, id, owner)
	if s.afterGet != nil && s.fired.CompareAndSwap(false, true) {
		s.afterGet()
	}
	return a, err
}

type noVMs struct{}

func (noVMs) Create(context.Context, store.User, api.CreateVMRequest) (api.VM, error) {
	return api.VM{}, errors.New("no vms in this test")
}

// CreateFor is the VM manager's create-with-purpose (issue 9's VMs
// interface has it); present here so the fake fits either.
func (noVMs) CreateFor(context.Context, store.User, api.CreateVMRequest, string) (api.VM, error) {
	return api.VM{}, errors.New("no vms in this test")
}
func (noVMs) WaitReady(context.Context, store.User, string) (api.VM, error) {
	return api.VM{}, errors.New("no vms in this test")
}
func (noVMs) Link(context.Context, store.User, string) (*agentlink.Client, error) {
	return nil, errors.New("no vms in this test")
}

// fakeTasks records what would be enqueued.
type fakeTasks struct {
	mu    sync.Mutex // guards kinds
	kinds []string
}

func (f *fakeTasks) Enqueue(_ context.Context, kind string, _ any, _ time.Time) (store.Task, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kinds = append(f.kinds, kind)
	return store.Task{}, nil
}

type fakeLive struct{}

func (fakeLive) Issue(sessionID, _ string, _ bool, _ time.Duration) string { return "tok-" + sessionID }

var backends = []struct {
	name string
	dsn  func(t *testing.T) string
}{
	{"sqlite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "hangar.db") }},
	{"postgres", func(t *testing.T) string { return testutil.PostgresDSN(t) }},
}

type harness struct {
	st    *hookStore
	m     *Manager
	tasks *fakeTasks
	alice store.User
}

func newHarness(t *testing.T, dsn string) *harness {
	t.Helper()
	ctx := t.Context()
	log := testutil.Logger(t)
	inner, err := store.Open(ctx, dsn, log)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { inner.Close() })
	st := &hookStore{Store: inner}
	alice := store.User{ID: store.NewID("usr"), Name: "alice", Role: store.RoleUser}
	if err := st.CreateUser(ctx, alice); err != nil {
		t.Fatal(err)
	}
	tasks := &fakeTasks{}
	m := NewManager(Config{}, st, events.NewBus(st, log), noVMs{}, tasks, nil, fakeLive{}, nil, nil, log)
	t.Cleanup(m.Close)
	return &harness{st: st, m: m, tasks: tasks, alice: alice}
}

// session stores a browser session of alice's in state, with a VM id so a
// live view would be offered while it runs.
func (h *harness) session(t *testing.T, state string) store.AuthSession {
	t.Helper()
	ctx := t.Context()
	v := store.VM{ID: store.NewID("vm"), OwnerID: h.alice.ID, Kind: api.KindBrowser, State: api.VMReady}
	if err := h.st.CreateVM(ctx, v); err != nil {
		t.Fatal(err)
	}
	a := store.AuthSession{ID: store.NewID("auth"), OwnerID: h.alice.ID, Provider: "dev", Mode: api.ModeBrowser, State: state, VMID: v.ID}
	if err := h.st.CreateAuthSession(ctx, a); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestHeartbeatRacingTheEndOfALogin: a heartbeat reads the session, the
// login completes, the heartbeat writes. The session must stay completed
// and stop offering live-view tokens.
func TestHeartbeatRacingTheEndOfALogin(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			h := newHarness(t, b.dsn(t))
			s := h.session(t, api.AuthAwaitingUser)
			h.st.afterGet = func() {
				if _, err := h.m.update(s.ID, func(s *store.AuthSession, _ *details) {
					s.State, s.FinishedAt = api.AuthCompleted, time.Now()
				}); err != nil {
					t.Errorf("complete the login: %v", err)
				}
			}
			_, err := h.m.Heartbeat(t.Context(), h.alice, s.ID)
			if e, ok := errs.As(err); !ok || e.Kind != errs.Conflict {
				t.Errorf("heartbeat on a login that ended meanwhile = %v, want a conflict", err)
			}
			got, err := h.m.Get(t.Context(), h.alice, s.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.State != api.AuthCompleted || got.LiveViewURL != "" {
				t.Fatalf("session after the race: state %s, live view %q; want completed and none", got.State, got.LiveViewURL)
			}
		})
	}
}

// TestConcurrentHeartbeatsAndEnd runs heartbeats in parallel with the end
// of the login (under -race in make test): whatever the interleaving, the
// end is never lost, and every heartbeat either extends or is refused.
func TestConcurrentHeartbeatsAndEnd(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			h := newHarness(t, b.dsn(t))
			s := h.session(t, api.AuthAwaitingUser)
			var wg sync.WaitGroup
			for range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 5 {
						if _, err := h.m.Heartbeat(t.Context(), h.alice, s.ID); err != nil {
							if e, ok := errs.As(err); !ok || e.Kind != errs.Conflict {
								t.Errorf("heartbeat: %v", err)
							}
						}
					}
				}()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := h.m.setState(s.ID, api.AuthCompleted, time.Now()); err != nil {
					t.Errorf("complete: %v", err)
				}
			}()
			wg.Wait()
			got, err := h.st.GetAuthSession(t.Context(), s.ID, "")
			if err != nil || got.State != api.AuthCompleted {
				t.Fatalf("after the race: %s (%v), want completed", got.State, err)
			}
		})
	}
}

// TestRecoverEndsLeftoverSessions: sessions a dead daemon left running are
// failed with a reason and their VMs are queued for destruction; ended
// ones are left alone.
func TestRecoverEndsLeftoverSessions(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			h := newHarness(t, b.dsn(t))
			live := h.session(t, api.AuthAwaitingUser)
			done := h.session(t, api.AuthCompleted)
			if err := h.m.Recover(t.Context()); err != nil {
				t.Fatalf("recover: %v", err)
			}
			got, _ := h.st.GetAuthSession(t.Context(), live.ID, "")
			if got.State != api.AuthFailed || got.Error == "" || got.FinishedAt.IsZero() {
				t.Fatalf("leftover session after recover = %+v", got)
			}
			if got, _ := h.st.GetAuthSession(t.Context(), done.ID, ""); got.State != api.AuthCompleted || got.Version != 1 {
				t.Fatalf("ended session was rewritten: %+v", got)
			}
			h.tasks.mu.Lock()
			defer h.tasks.mu.Unlock()
			if len(h.tasks.kinds) != 1 || h.tasks.kinds[0] != "vm.destroy" {
				t.Fatalf("enqueued %v, want one vm.destroy", h.tasks.kinds)
			}
		})
	}
}

// TestLiveViewIsTheOwners: an admin who can read every session gets no
// live-view link from it; the owner does, with full control, and can share
// a view-only link whose restriction is signed into the token.
func TestLiveViewIsTheOwners(t *testing.T) {
	h := newHarness(t, backends[0].dsn(t))
	signer := liveview.NewSigner()
	h.m.live = signer
	root := store.User{ID: store.NewID("usr"), Name: "root", Role: store.RoleAdmin}
	if err := h.st.CreateUser(t.Context(), root); err != nil {
		t.Fatal(err)
	}
	s := h.session(t, api.AuthAwaitingUser)
	claims := func(link string) liveview.Claims {
		t.Helper()
		u, err := url.Parse(link)
		if err != nil {
			t.Fatal(err)
		}
		c, err := signer.Verify(u.Query().Get("token"), s.ID)
		if err != nil {
			t.Fatalf("token of %q: %v", link, err)
		}
		return c
	}
	got, err := h.m.Get(t.Context(), root, s.ID)
	if err != nil || got.LiveViewURL != "" {
		t.Fatalf("admin reads alice's session: live view %q, %v; want none", got.LiveViewURL, err)
	}
	if all, _ := h.m.List(t.Context(), root); len(all) != 1 || all[0].LiveViewURL != "" {
		t.Fatalf("admin lists sessions with live views: %+v", all)
	}
	mine, err := h.m.Get(t.Context(), h.alice, s.ID)
	if err != nil || mine.LiveViewURL == "" || claims(mine.LiveViewURL).ViewOnly {
		t.Fatalf("alice's own live view = %q, %v; want a full-control link", mine.LiveViewURL, err)
	}
	if _, err := h.m.Share(t.Context(), root, s.ID); err == nil {
		t.Fatal("an admin shared alice's live view")
	}
	sh, err := h.m.Share(t.Context(), h.alice, s.ID)
	if err != nil || !sh.ViewOnly {
		t.Fatalf("share = %+v, %v", sh, err)
	}
	if c := claims(sh.LiveViewURL); !c.ViewOnly || c.OwnerID != h.alice.ID {
		t.Fatalf("shared token claims %+v, want view-only for alice", c)
	}
	if _, err := h.m.setState(s.ID, api.AuthCompleted, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.Share(t.Context(), h.alice, s.ID); err == nil {
		t.Fatal("shared the live view of an ended login")
	}
}
