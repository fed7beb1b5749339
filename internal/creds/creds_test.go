package creds

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/login"
	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

const devFile = "/home/hangar/.hangar-dev/auth.json"

// fakeAgent is a guest filesystem behind the Agent interface: it keeps
// files with their mode and owner and runs the two commands the manager
// uses (install -d, rm -f).
type fakeAgent struct {
	mu    sync.Mutex
	files map[string]fakeFile
	dirs  map[string]string // path → "mode uid:gid"
}

type fakeFile struct {
	data     []byte
	mode     uint32
	uid, gid int
}

func newFakeAgent() *fakeAgent {
	return &fakeAgent{files: map[string]fakeFile{}, dirs: map[string]string{}}
}

func (a *fakeAgent) PutFile(_ context.Context, req agentlink.PutFileRequest, content io.Reader) (proto.FileStat, error) {
	b, err := io.ReadAll(content)
	if err != nil {
		return proto.FileStat{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.dirs[filepath.Dir(req.Path)]; !ok {
		return proto.FileStat{}, &proto.Error{Status: 404, Message: "no parent directory"}
	}
	a.files[req.Path] = fakeFile{data: b, mode: req.Mode, uid: *req.UID, gid: *req.GID}
	return proto.FileStat{Path: req.Path, Size: int64(len(b)), Mode: req.Mode}, nil
}

func (a *fakeAgent) GetFile(_ context.Context, path string, maxBytes int64, w io.Writer) (proto.FileStat, error) {
	a.mu.Lock()
	f, ok := a.files[path]
	a.mu.Unlock()
	if !ok {
		return proto.FileStat{}, &proto.Error{Status: http.StatusNotFound, Message: "no such file"}
	}
	if int64(len(f.data)) > maxBytes {
		return proto.FileStat{}, errors.New("too large")
	}
	_, err := w.Write(f.data)
	return proto.FileStat{Path: path, Size: int64(len(f.data))}, err
}

func (a *fakeAgent) Exec(_ context.Context, req proto.ExecRequest, _ io.Reader, _, _ io.Writer) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case len(req.Argv) == 9 && req.Argv[0] == "install" && req.Argv[1] == "-d":
		// install -d -m MODE -o UID -g GID DIR
		a.dirs[req.Argv[8]] = req.Argv[3] + " " + req.Argv[5] + ":" + req.Argv[7]
		return 0, nil
	case len(req.Argv) >= 3 && req.Argv[0] == "rm":
		for _, p := range req.Argv[3:] {
			delete(a.files, p)
		}
		return 0, nil
	}
	return 127, nil
}

func (a *fakeAgent) Reverse(context.Context, string, string, agentlink.ReverseHandler) error {
	return nil
}

func (a *fakeAgent) file(path string) (fakeFile, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f, ok := a.files[path]
	return f, ok
}

func (a *fakeAgent) write(path string, b []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.files[path]
	f.data = b
	a.files[path] = f
}

// fakeVMs are ready CLI workspace VMs, each with its fake agent.
type fakeVMs struct {
	mu     sync.Mutex
	vms    map[string]api.VM
	agents map[string]*fakeAgent
}

func (f *fakeVMs) VM(_ context.Context, id string) (api.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vms[id]
	if !ok {
		return v, errors.New("no such vm")
	}
	return v, nil
}

func (f *fakeVMs) Agent(_ context.Context, id string) (Agent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v := f.vms[id]; v.State != api.VMReady {
		return nil, fmt.Errorf("vm %s is %s", id, v.State)
	}
	return f.agents[id], nil
}

type fixture struct {
	t     *testing.T
	st    store.Store
	keys  *seal.Keyring
	r     *login.Recipe
	m     *Manager
	vms   *fakeVMs
	owner store.User
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	st, err := store.Open(ctx, filepath.Join(dir, "hangar.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	keys, err := seal.Open(dir, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	recipes, err := login.LoadRecipes()
	if err != nil {
		t.Fatal(err)
	}
	owner := store.User{ID: store.NewID("usr"), Name: "ann", Role: store.RoleUser}
	if err := st.CreateUser(ctx, owner); err != nil {
		t.Fatal(err)
	}
	vms := &fakeVMs{vms: map[string]api.VM{}, agents: map[string]*fakeAgent{}}
	m := New(Config{LeaseWait: 300 * time.Millisecond}, st, keys, recipes, vms, events.NewBus(st, log), log)
	return &fixture{t: t, st: st, keys: keys, r: recipes["dev"], m: m, vms: vms, owner: owner}
}

func (f *fixture) addVM() (string, *fakeAgent) {
	f.t.Helper()
	id := store.NewID("vm")
	if err := f.st.CreateVM(context.Background(), store.VM{ID: id, OwnerID: f.owner.ID, Kind: api.KindCLI, State: api.VMReady}); err != nil {
		f.t.Fatal(err)
	}
	a := newFakeAgent()
	f.vms.mu.Lock()
	f.vms.vms[id] = api.VM{ID: id, OwnerID: f.owner.ID, Kind: api.KindCLI, Purpose: api.PurposeWorkspace, State: api.VMReady}
	f.vms.agents[id] = a
	f.vms.mu.Unlock()
	return id, a
}

func authJSON(refresh string) []byte {
	b, _ := json.Marshal(map[string]any{"access_token": "at-" + refresh, "refresh_token": refresh, "expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "account": map[string]string{"email": "ann@example.com"}})
	return b
}

// login stores a credential as a login does; it returns the new version.
func (f *fixture) login(refresh string) int64 {
	f.t.Helper()
	ctx := context.Background()
	plain, _ := login.SealFiles(f.r, map[string][]byte{devFile: authJSON(refresh)})
	rec := store.Credential{OwnerID: f.owner.ID, Provider: "dev", Version: 1}
	if old, err := f.st.GetCredential(ctx, f.owner.ID, "dev"); err == nil {
		rec = old
		rec.Version++
	}
	rec, err := f.keys.SealRecord(rec, plain)
	if err != nil {
		f.t.Fatal(err)
	}
	rec, err = f.st.PutCredential(ctx, rec)
	if err != nil {
		f.t.Fatal(err)
	}
	return rec.Version
}

// stored returns the stored version and refresh token.
func (f *fixture) stored() (int64, string) {
	f.t.Helper()
	c, files, err := f.m.open(context.Background(), f.owner.ID, "dev")
	if err != nil {
		f.t.Fatal(err)
	}
	var doc map[string]any
	_ = json.Unmarshal(files[devFile], &doc)
	return c.Version, doc["refresh_token"].(string)
}

func (f *fixture) use(vmID string) func() {
	f.t.Helper()
	release, err := f.m.Use(context.Background(), f.owner.ID, "dev", vmID)
	if err != nil {
		f.t.Fatal(err)
	}
	return release
}

func TestDeliverAndSyncBack(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.login("rt-1")
	vm, ag := f.addVM()
	release := f.use(vm)
	secrets, err := f.m.Ensure(ctx, f.owner.ID, "dev", vm)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(secrets, " "), "rt-1") && len(secrets) == 0 {
		t.Fatal("Ensure returned no secrets to redact")
	}
	file, ok := ag.file(devFile)
	if !ok || file.mode != 0o600 || file.uid != 1000 || file.gid != 1000 || !bytes.Contains(file.data, []byte(`"refresh_token":"rt-1"`)) {
		t.Fatalf("delivered file = %+v (present %v)", file, ok)
	}
	if got := ag.dirs[filepath.Dir(devFile)]; got != "0700 1000:1000" {
		t.Fatalf("parent directory created as %q, want 0700 owned by 1000", got)
	}
	// The CLI refreshes: the file changes; sync-back seals it as v2.
	ag.write(devFile, authJSON("rt-2"))
	if err := f.m.SyncBack(ctx, f.owner.ID, "dev", vm); err != nil {
		t.Fatal(err)
	}
	if v, rt := f.stored(); v != 2 || rt != "rt-2" {
		t.Fatalf("after sync-back: v%d %s, want v2 rt-2", v, rt)
	}
	// Unchanged files: no new version.
	if err := f.m.SyncBack(ctx, f.owner.ID, "dev", vm); err != nil {
		t.Fatal(err)
	}
	if v, _ := f.stored(); v != 2 {
		t.Fatalf("a sync-back of unchanged files wrote v%d", v)
	}
	// Invalid files (the CLI half-wrote, or the user broke them) are not
	// sealed.
	ag.write(devFile, []byte(`{"access_token": "x"}`))
	if err := f.m.SyncBack(ctx, f.owner.ID, "dev", vm); err != nil {
		t.Fatal(err)
	}
	if v, rt := f.stored(); v != 2 || rt != "rt-2" {
		t.Fatalf("invalid files were sealed: v%d %s", v, rt)
	}
	release()
}

// A new login while the VM holds an older copy: the VM's refresh loses the
// compare-and-swap, and the new login is delivered.
func TestSyncBackNeverOverwritesANewerLogin(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.login("rt-1")
	vm, ag := f.addVM()
	release := f.use(vm)
	defer release()
	if _, err := f.m.Ensure(ctx, f.owner.ID, "dev", vm); err != nil {
		t.Fatal(err)
	}
	f.login("rt-new") // v2, a fresh login elsewhere
	ag.write(devFile, authJSON("rt-1-refreshed"))
	if err := f.m.SyncBack(ctx, f.owner.ID, "dev", vm); err != nil {
		t.Fatal(err)
	}
	if v, rt := f.stored(); v != 2 || rt != "rt-new" {
		t.Fatalf("stored v%d %s: a stale VM copy overwrote a newer login", v, rt)
	}
	f.m.Changed(f.owner.ID, "dev", nil)
	if file, _ := ag.file(devFile); !bytes.Contains(file.data, []byte("rt-new")) {
		t.Fatal("the new login was not delivered to the lease holder")
	}
}

// The lease follows use: a prompt on another VM takes it over after the
// holder's refreshed files are synced back and removed.
func TestLeaseHandover(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.login("rt-1")
	a, agA := f.addVM()
	b, agB := f.addVM()
	release := f.use(a)
	if _, err := f.m.Ensure(ctx, f.owner.ID, "dev", a); err != nil {
		t.Fatal(err)
	}
	// While a prompt runs on A, B waits LeaseWait and is refused, naming A.
	_, err := f.m.Use(ctx, f.owner.ID, "dev", b)
	var held *LeaseHeldError
	if !errors.As(err, &held) || held.VMID != a {
		t.Fatalf("Use on B while A runs: %v, want LeaseHeldError naming %s", err, a)
	}
	agA.write(devFile, authJSON("rt-2")) // A's CLI refreshed
	release()

	release = f.use(b)
	defer release()
	if _, err := f.m.Ensure(ctx, f.owner.ID, "dev", b); err != nil {
		t.Fatal(err)
	}
	if _, ok := agA.file(devFile); ok {
		t.Fatal("A still has the credential after the handover")
	}
	file, ok := agB.file(devFile)
	if !ok || !bytes.Contains(file.data, []byte("rt-2")) {
		t.Fatal("B did not get A's refreshed credential")
	}
	l, err := f.st.GetLease(ctx, f.owner.ID, "dev")
	if err != nil || l.VMID != b {
		t.Fatalf("lease = %+v, %v; want held by B", l, err)
	}
	if v, _ := f.stored(); v != 2 {
		t.Fatalf("stored v%d, want A's refresh sealed as v2", v)
	}
}

// A freshly booted VM's leftover file (a crash lost its last sync-back) is
// never sealed; a VM re-attached after a daemon restart is adopted.
func TestFreshVersusReattached(t *testing.T) {
	f := newFixture(t)
	f.login("rt-1")
	vm, ag := f.addVM()
	ag.dirs[filepath.Dir(devFile)] = "0700"
	ag.files[devFile] = fakeFile{data: authJSON("rt-0-stale"), mode: 0o600, uid: 1000, gid: 1000}
	f.m.VMReady(api.VM{ID: vm, OwnerID: f.owner.ID, Kind: api.KindCLI, Purpose: api.PurposeWorkspace, State: api.VMReady}, false)
	if v, rt := f.stored(); v != 1 || rt != "rt-1" {
		t.Fatalf("a fresh VM's stale file was sealed: v%d %s", v, rt)
	}
	if file, _ := ag.file(devFile); !bytes.Contains(file.data, []byte("rt-1")) {
		t.Fatal("the fresh VM did not get the stored version")
	}

	// A daemon restart: a new manager, the VM ran on and its CLI
	// refreshed meanwhile.
	ag.write(devFile, authJSON("rt-2-while-down"))
	m2 := New(Config{}, f.st, f.keys, f.m.recipes, f.vms, nil, slog.New(slog.DiscardHandler))
	m2.VMReady(api.VM{ID: vm, OwnerID: f.owner.ID, Kind: api.KindCLI, Purpose: api.PurposeWorkspace, State: api.VMReady}, true)
	if v, rt := f.stored(); v != 2 || rt != "rt-2-while-down" {
		t.Fatalf("a re-attached VM's refresh was not adopted: v%d %s", v, rt)
	}
}

func TestLogoutRemovesFiles(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.login("rt-1")
	vm, ag := f.addVM()
	f.m.VMReady(api.VM{ID: vm, OwnerID: f.owner.ID, Kind: api.KindCLI, Purpose: api.PurposeWorkspace, State: api.VMReady}, false)
	if _, ok := ag.file(devFile); !ok {
		t.Fatal("not delivered on ready")
	}
	if err := f.st.DeleteCredential(ctx, f.owner.ID, "dev"); err != nil {
		t.Fatal(err)
	}
	f.m.Changed(f.owner.ID, "dev", nil)
	if _, ok := ag.file(devFile); ok {
		t.Fatal("the file is still in the VM after logout")
	}
	if _, err := f.st.GetLease(ctx, f.owner.ID, "dev"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("lease after logout: %v", err)
	}
	if _, err := f.m.Ensure(ctx, f.owner.ID, "dev", vm); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Ensure after logout: %v, want ErrNotConnected", err)
	}
}

// Prompts on one VM queue behind each other instead of being refused.
func TestUseQueuesOnTheSameVM(t *testing.T) {
	f := newFixture(t)
	vm, _ := f.addVM()
	release := f.use(vm)
	got := make(chan error, 1)
	go func() {
		r, err := f.m.Use(context.Background(), f.owner.ID, "dev", vm)
		if err == nil {
			r()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a second Use on the same VM returned at once: %v", err)
	case <-time.After(500 * time.Millisecond): // longer than LeaseWait
	}
	release()
	if err := <-got; err != nil {
		t.Fatalf("queued Use: %v", err)
	}
}

// TestReadyAfterAPromptKeepsItsDelivery: the ready hook can run after a
// prompt that waited for the VM already took the credential over the same
// link; it must not make the prompt's refreshed token look stale (which
// skipped its sync-back and re-delivered the spent token).
func TestReadyAfterAPromptKeepsItsDelivery(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.login("rt-1")
	vm, ag := f.addVM()
	release := f.use(vm)
	if _, err := f.m.Ensure(ctx, f.owner.ID, "dev", vm); err != nil {
		t.Fatal(err)
	}
	ag.write(devFile, authJSON("rt-2")) // the prompt's CLI refreshed
	f.m.VMReady(api.VM{ID: vm, OwnerID: f.owner.ID, Kind: api.KindCLI, Purpose: api.PurposeWorkspace, State: api.VMReady}, false)
	if file, _ := ag.file(devFile); !bytes.Contains(file.data, []byte("rt-2")) {
		t.Fatal("the ready hook overwrote the prompt's refreshed credential")
	}
	if err := f.m.SyncBack(ctx, f.owner.ID, "dev", vm); err != nil {
		t.Fatal(err)
	}
	release()
	if v, rt := f.stored(); v != 2 || rt != "rt-2" {
		t.Fatalf("stored v%d %s, want the refresh synced back as v2", v, rt)
	}
}
