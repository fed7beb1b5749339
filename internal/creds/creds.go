package creds

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/login"
	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// Agent is what the manager needs of a VM's agent link (agentlink.Client).
type Agent interface {
	PutFile(ctx context.Context, req agentlink.PutFileRequest, content io.Reader) (proto.FileStat, error)
	// GetFile copies at most maxBytes; the host enforces it (agentlink
	// stops at maxBytes+1 whatever the guest sends).
	GetFile(ctx context.Context, path string, maxBytes int64, w io.Writer) (proto.FileStat, error)
	Exec(ctx context.Context, req proto.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (int, error)
	Reverse(ctx context.Context, listen, name string, h agentlink.ReverseHandler) error
}

// VMs gives the manager VMs and their agents, for any owner.
type VMs interface {
	// VM returns a VM's record.
	VM(ctx context.Context, id string) (api.VM, error)
	// Agent returns the agent link of a ready VM.
	Agent(ctx context.Context, id string) (Agent, error)
}

// Config are the manager's timings.
type Config struct {
	// LeaseTTL is how long a lease lasts without renewal (default 2m); it
	// is renewed every third of it.
	LeaseTTL time.Duration
	// LeaseWait bounds how long a prompt for one VM waits while a prompt
	// of the same provider runs on the lease holder (default 10s).
	LeaseWait time.Duration
	// SyncInterval is how often held credentials are read back between
	// prompts (default 1m).
	SyncInterval time.Duration
	// GuestUID and GuestGID own delivered files (default 1000, the images'
	// "hangar" user).
	GuestUID, GuestGID int
	// DevOAuth is the dev provider's handler, reverse-forwarded into VMs
	// that hold dev credentials at GuestDevOAuth (default 127.0.0.1:4000).
	DevOAuth      http.Handler
	GuestDevOAuth string
}

// maxFileBytes bounds a credential file read back from a guest.
const maxFileBytes = 1 << 20

// Manager delivers, syncs back and leases credentials. Safe for concurrent
// use.
type Manager struct {
	cfg     Config
	store   store.Store
	keys    *seal.Keyring
	recipes login.Recipes
	vms     VMs
	bus     *events.Bus
	log     *slog.Logger
	// holder names this daemon in the leases it takes.
	holder string

	mu sync.Mutex // guards uses and held
	// uses serialise prompts per user and provider (see doc.go).
	uses map[string]*use
	// held is what this daemon delivered, by VM and provider.
	held map[string]map[string]*delivery

	stop chan struct{}
	wg   sync.WaitGroup
}

// use is the per user-and-provider prompt slot.
type use struct {
	slot chan struct{} // capacity 1: taken while a prompt runs
	vmID string        // the VM of the running prompt; guarded by Manager.mu
}

// delivery is what a VM was given.
type delivery struct {
	mu      sync.Mutex // serialises deliver, sync-back and removal for one VM and provider
	version int64      // record version delivered (0: unknown, after a restart)
	agent   Agent      // the link it went over (reverse forwards are per link)
	// fresh marks files this daemon has not delivered: what the VM's
	// disk holds may be stale (a crash lost the last sync-back), so it is
	// never synced back before it gets the stored version. Only a VM
	// re-attached after a daemon restart is adopted (VMReady), since it
	// ran on as the lease holder meanwhile.
	fresh bool
}

// New returns a manager; Start begins its background renewal.
func New(cfg Config, st store.Store, keys *seal.Keyring, recipes login.Recipes, vms VMs, bus *events.Bus, log *slog.Logger) *Manager {
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 2 * time.Minute
	}
	if cfg.LeaseWait <= 0 {
		cfg.LeaseWait = 10 * time.Second
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = time.Minute
	}
	if cfg.GuestUID == 0 {
		cfg.GuestUID, cfg.GuestGID = 1000, 1000
	}
	if cfg.GuestDevOAuth == "" {
		cfg.GuestDevOAuth = "127.0.0.1:4000"
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	return &Manager{cfg: cfg, store: st, keys: keys, recipes: recipes, vms: vms, bus: bus, log: log,
		holder: "hangar-" + hex.EncodeToString(b[:]), uses: map[string]*use{}, held: map[string]map[string]*delivery{}, stop: make(chan struct{})}
}

// LeaseHeldError says another VM holds a credential's lease and is busy
// with it.
type LeaseHeldError struct {
	Provider string
	VMID     string
}

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("%s credentials are in use by VM %s (a prompt runs there); retry when it finishes, or send the prompt to %s", e.Provider, e.VMID, e.VMID)
}

// ErrNotConnected means the user has no stored credential for a provider.
var ErrNotConnected = errors.New("not connected")

func useKey(owner, provider string) string { return owner + "\x00" + provider }

// Use takes the prompt slot of owner's provider for vmID: at once when no
// prompt of that provider runs; after it ends when one runs on the same VM
// (queueing until ctx ends); within LeaseWait when one runs on another VM,
// else a *LeaseHeldError. The returned release frees the slot.
func (m *Manager) Use(ctx context.Context, owner, provider, vmID string) (release func(), err error) {
	m.mu.Lock()
	u := m.uses[useKey(owner, provider)]
	if u == nil {
		u = &use{slot: make(chan struct{}, 1)}
		m.uses[useKey(owner, provider)] = u
	}
	m.mu.Unlock()
	take := func() func() {
		m.mu.Lock()
		u.vmID = vmID
		m.mu.Unlock()
		var once sync.Once
		return func() {
			once.Do(func() {
				m.mu.Lock()
				u.vmID = ""
				m.mu.Unlock()
				<-u.slot
			})
		}
	}
	select {
	case u.slot <- struct{}{}:
		return take(), nil
	default:
	}
	m.mu.Lock()
	busyOn := u.vmID
	m.mu.Unlock()
	wait := ctx
	if busyOn != vmID {
		var cancel context.CancelFunc
		wait, cancel = context.WithTimeout(ctx, m.cfg.LeaseWait)
		defer cancel()
	}
	select {
	case u.slot <- struct{}{}:
		return take(), nil
	case <-wait.Done():
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		m.mu.Lock()
		busyOn = u.vmID
		m.mu.Unlock()
		return nil, &LeaseHeldError{Provider: provider, VMID: busyOn}
	}
}

// BusyOn is the VM where a prompt of owner's provider runs now, or "".
func (m *Manager) BusyOn(owner, provider string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if u := m.uses[useKey(owner, provider)]; u != nil {
		return u.vmID
	}
	return ""
}

func (m *Manager) delivery(vmID, provider string) *delivery {
	m.mu.Lock()
	defer m.mu.Unlock()
	byProv := m.held[vmID]
	if byProv == nil {
		byProv = map[string]*delivery{}
		m.held[vmID] = byProv
	}
	d := byProv[provider]
	if d == nil {
		d = &delivery{fresh: true}
		byProv[provider] = d
	}
	return d
}

func (m *Manager) forget(vmID, provider string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.held[vmID], provider)
	if len(m.held[vmID]) == 0 {
		delete(m.held, vmID)
	}
}

// Ensure makes vmID hold owner's provider credential: it takes the lease
// (over from another VM of the owner, syncing that VM back and clearing
// it first) and delivers the stored version unless the VM has it. The
// caller holds the prompt slot (Use). It returns the secrets delivered, so
// that output echoing them can be redacted.
func (m *Manager) Ensure(ctx context.Context, owner, provider, vmID string) ([]string, error) {
	r := m.recipes[provider]
	if r == nil {
		return nil, errs.E(errs.Invalid, "unknown provider %q", provider)
	}
	if _, err := m.store.GetCredential(ctx, owner, provider); errors.Is(err, store.ErrNotFound) {
		return nil, ErrNotConnected
	} else if err != nil {
		return nil, err
	}
	if err := m.acquire(ctx, owner, provider, vmID, true); err != nil {
		return nil, err
	}
	return m.deliver(ctx, owner, provider, vmID, false)
}

// acquire takes the lease for vmID. With takeOver, a lease held by another
// VM is taken over after that VM is synced back and cleared (the caller
// holds the prompt slot, so no prompt runs there).
func (m *Manager) acquire(ctx context.Context, owner, provider, vmID string, takeOver bool) error {
	for attempt := 0; attempt < 3; attempt++ {
		cur, err := m.store.AcquireLease(ctx, store.Lease{OwnerID: owner, Provider: provider, VMID: vmID, Holder: m.holder, ExpiresAt: time.Now().Add(m.cfg.LeaseTTL)})
		if err == nil {
			return nil
		}
		if !errors.Is(err, store.ErrConflict) || !takeOver {
			return err
		}
		m.log.Info("credential lease moves to another vm", "user_id", owner, "provider", provider, "from_vm", cur.VMID, "to_vm", vmID)
		if err := m.relinquish(ctx, owner, provider, cur.VMID); err != nil {
			return fmt.Errorf("take the %s credentials over from VM %s: %w", provider, cur.VMID, err)
		}
	}
	return fmt.Errorf("the %s credential lease kept moving", provider)
}

// relinquish syncs vmID's files back, removes them and releases its lease.
// A VM that is not ready cannot be synced: its lease is released anyway
// (a stopped VM's files were removed when it stopped; a failed VM's are
// stale and are overwritten when it boots again).
func (m *Manager) relinquish(ctx context.Context, owner, provider, vmID string) error {
	if v, err := m.vms.VM(ctx, vmID); err == nil && v.State == api.VMReady {
		if err := m.SyncBack(ctx, owner, provider, vmID); err != nil {
			return err
		}
		if err := m.remove(ctx, provider, vmID); err != nil {
			return err
		}
	} else {
		m.forget(vmID, provider)
	}
	err := m.store.ReleaseLease(ctx, owner, provider, vmID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

// open reads and unseals the stored credential.
func (m *Manager) open(ctx context.Context, owner, provider string) (store.Credential, map[string][]byte, error) {
	c, err := m.store.GetCredential(ctx, owner, provider)
	if err != nil {
		return c, nil, err
	}
	plain, err := m.keys.OpenRecord(c)
	if err != nil {
		return c, nil, fmt.Errorf("open the sealed %s credential: %w", provider, err)
	}
	files, err := login.OpenFiles(plain)
	clear(plain)
	return c, files, err
}

// deliver writes the stored version into vmID unless it is there already
// (force writes anyway).
func (m *Manager) deliver(ctx context.Context, owner, provider, vmID string, force bool) ([]string, error) {
	c, files, err := m.open(ctx, owner, provider)
	if err != nil {
		return nil, err
	}
	secrets := login.Secrets(files)
	ag, err := m.vms.Agent(ctx, vmID)
	if err != nil {
		return nil, err
	}
	d := m.delivery(vmID, provider)
	d.mu.Lock()
	defer d.mu.Unlock()
	if provider == "dev" && m.cfg.DevOAuth != nil && d.agent != ag {
		// The dev provider lives in the daemon; the CLI reaches it at
		// the address its credential names, carried by the agent.
		if err := ag.Reverse(ctx, m.cfg.GuestDevOAuth, "dev-oauth", agentlink.ServeHTTPReverse(m.cfg.DevOAuth)); err != nil {
			return nil, fmt.Errorf("connect the dev provider to VM %s: %w", vmID, err)
		}
	}
	if !force && d.version == c.Version && d.agent == ag {
		return secrets, nil
	}
	if d.version == 0 && d.agent == nil && !d.fresh && !force {
		// Nothing delivered by this daemon yet: a file left from before a
		// restart may hold a rotated token newer than the store's.
		if changed, err := m.syncBackLocked(ctx, owner, provider, vmID, ag, d, c, files); err != nil {
			m.log.Warn("credential sync-back before delivery failed", "user_id", owner, "provider", provider, "vm_id", vmID, "err", err)
		} else if changed {
			c, files, err = m.open(ctx, owner, provider)
			if err != nil {
				return nil, err
			}
			secrets = login.Secrets(files)
		}
	}
	if err := m.writeFiles(ctx, ag, files); err != nil {
		return nil, fmt.Errorf("deliver the %s credentials to VM %s: %w", provider, vmID, err)
	}
	d.version, d.agent, d.fresh = c.Version, ag, false
	m.log.Info("credentials delivered", "user_id", owner, "provider", provider, "vm_id", vmID, "version", c.Version, "files", len(files))
	m.publish(owner, "credential_delivered", vmID, map[string]any{"provider": provider, "version": c.Version, "vm_id": vmID})
	return secrets, nil
}

// writeFiles puts each file through the agent: parent directories 0700 and
// the file 0600, all owned by the CLI user.
func (m *Manager) writeFiles(ctx context.Context, ag Agent, files map[string][]byte) error {
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		if !path.IsAbs(p) || path.Clean(p) != p {
			return fmt.Errorf("credential path %s is not absolute and clean", p)
		}
		dir := path.Dir(p)
		owner := fmt.Sprintf("%d:%d", m.cfg.GuestUID, m.cfg.GuestGID)
		var out bytes.Buffer
		code, err := ag.Exec(ctx, proto.ExecRequest{Argv: []string{"install", "-d", "-m", "0700", "-o", fmt.Sprint(m.cfg.GuestUID), "-g", fmt.Sprint(m.cfg.GuestGID), dir}, Timeout: proto.Duration(30 * time.Second)}, nil, &out, &out)
		if err == nil && code != 0 {
			err = fmt.Errorf("install -d %s (owner %s) exited %d: %s", dir, owner, code, strings.TrimSpace(out.String()))
		}
		if err != nil {
			return err
		}
		uid, gid := m.cfg.GuestUID, m.cfg.GuestGID
		b := files[p]
		if _, err := ag.PutFile(ctx, agentlink.PutFileRequest{Path: p, Mode: 0o600, UID: &uid, GID: &gid, Size: int64(len(b))}, bytes.NewReader(b)); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	return nil
}

// remove deletes the provider's files from vmID.
func (m *Manager) remove(ctx context.Context, provider, vmID string) error {
	r := m.recipes[provider]
	d := m.delivery(vmID, provider)
	d.mu.Lock()
	defer d.mu.Unlock()
	defer m.forget(vmID, provider)
	ag, err := m.vms.Agent(ctx, vmID)
	if err != nil {
		return err
	}
	argv := []string{"rm", "-f", "--"}
	for _, f := range r.Credentials {
		argv = append(argv, f.Path)
	}
	var out bytes.Buffer
	code, err := ag.Exec(ctx, proto.ExecRequest{Argv: argv, Timeout: proto.Duration(30 * time.Second)}, nil, &out, &out)
	if err == nil && code != 0 {
		err = fmt.Errorf("rm exited %d: %s", code, strings.TrimSpace(out.String()))
	}
	if err != nil {
		return fmt.Errorf("remove the %s credentials from VM %s: %w", provider, vmID, err)
	}
	m.log.Info("credentials removed from vm", "provider", provider, "vm_id", vmID)
	return nil
}

// SyncBack reads vmID's files of provider and, when the CLI changed them
// (a refresh), seals them as the next record version.
func (m *Manager) SyncBack(ctx context.Context, owner, provider, vmID string) error {
	ag, err := m.vms.Agent(ctx, vmID)
	if err != nil {
		return err
	}
	d := m.delivery(vmID, provider)
	d.mu.Lock()
	defer d.mu.Unlock()
	c, files, err := m.open(ctx, owner, provider)
	if errors.Is(err, store.ErrNotFound) {
		return nil // logged out meanwhile
	}
	if err != nil {
		return err
	}
	_, err = m.syncBackLocked(ctx, owner, provider, vmID, ag, d, c, files)
	return err
}

// syncBackLocked is SyncBack with d.mu held and the stored record c (with
// its files) read. changed reports a new version written.
func (m *Manager) syncBackLocked(ctx context.Context, owner, provider, vmID string, ag Agent, d *delivery, c store.Credential, stored map[string][]byte) (changed bool, err error) {
	r := m.recipes[provider]
	if d.fresh {
		return false, nil // nothing delivered since a fresh boot
	}
	if d.version != 0 && d.version != c.Version {
		// The record moved on (a new login) since this VM got its copy:
		// the VM's copy is older than the store's; it gets the new one.
		return false, nil
	}
	got := map[string][]byte{}
	for _, f := range r.Credentials {
		var b bytes.Buffer
		if _, err := ag.GetFile(ctx, f.Path, maxFileBytes, &b); err != nil {
			var pe *proto.Error
			if errors.As(err, &pe) && pe.Status == http.StatusNotFound {
				if f.Required {
					// The CLI (or the user) removed it: nothing to keep.
					return false, nil
				}
				continue
			}
			return false, fmt.Errorf("read back %s from VM %s: %w", f.Path, vmID, err)
		}
		got[f.Path] = b.Bytes()
	}
	same := len(got) == len(stored)
	for p, b := range got {
		if !bytes.Equal(b, stored[p]) {
			same = false
		}
	}
	if same {
		if d.version == 0 {
			d.version, d.agent = c.Version, ag
		}
		return false, nil
	}
	if err := r.CheckFiles(got); err != nil {
		m.log.Warn("credential files in the vm changed but are not a valid credential; the stored version stays", "user_id", owner, "provider", provider, "vm_id", vmID, "reason", err.Error())
		return false, nil
	}
	plain, err := login.SealFiles(r, got)
	if err != nil {
		return false, err
	}
	next := c
	next.Version = c.Version + 1
	next.Metadata = login.MetadataJSON(r, got)
	next.ValidatedAt = time.Time{}
	next, err = m.keys.SealRecord(next, plain)
	clear(plain)
	if err != nil {
		return false, fmt.Errorf("seal the refreshed %s credentials: %w", provider, err)
	}
	stored2, err := m.store.PutCredential(ctx, next)
	if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
		m.log.Info("credential refreshed in the vm lost to a newer stored version", "user_id", owner, "provider", provider, "vm_id", vmID)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	d.version, d.agent = stored2.Version, ag
	m.log.Info("refreshed credentials synced back and re-sealed", "user_id", owner, "provider", provider, "vm_id", vmID, "version", stored2.Version)
	m.publish(owner, "credential_refreshed", provider, map[string]any{"provider": provider, "version": stored2.Version, "vm_id": vmID})
	return true, nil
}

func (m *Manager) publish(owner, typ, subject string, data any) {
	if m.bus == nil {
		return
	}
	if _, err := m.bus.Publish(context.Background(), owner, typ, subject, data); err != nil {
		m.log.Warn("publish", "type", typ, "err", err)
	}
}

// VMReady delivers the owner's credentials to a ready CLI workspace VM for
// every provider whose lease is free (or already its own); it takes no
// lease over.
func (m *Manager) VMReady(v api.VM, reattached bool) {
	if v.Kind != api.KindCLI || v.Purpose != api.PurposeWorkspace {
		return
	}
	// Forget what was delivered over an earlier link (before a reboot or a
	// daemon restart), but not what a prompt already delivered over this
	// one: this can run after a prompt that was waiting for the VM took
	// the credential, and resetting it then would make the prompt's
	// refreshed token look stale (not synced back) and be overwritten.
	cur, _ := m.vms.Agent(context.Background(), v.ID)
	for p := range m.recipes {
		d := m.delivery(v.ID, p)
		d.mu.Lock()
		if cur == nil || d.agent != cur {
			d.version, d.agent, d.fresh = 0, nil, !reattached
		}
		d.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs, err := m.store.ListCredentials(ctx, v.OwnerID)
	if err != nil {
		m.log.Warn("list credentials for a ready vm", "vm_id", v.ID, "err", err)
		return
	}
	for _, c := range cs {
		if m.recipes[c.Provider] == nil {
			continue
		}
		if err := m.acquire(ctx, v.OwnerID, c.Provider, v.ID, false); err != nil {
			if !errors.Is(err, store.ErrConflict) {
				m.log.Warn("credential lease for a ready vm", "vm_id", v.ID, "provider", c.Provider, "err", err)
			}
			continue
		}
		if _, err := m.deliver(ctx, v.OwnerID, c.Provider, v.ID, false); err != nil {
			m.log.Warn("deliver credentials to a ready vm", "vm_id", v.ID, "provider", c.Provider, "err", err)
		}
	}
}

// VMStopping syncs back and clears every credential the VM holds and
// releases its leases, before it stops or is destroyed.
func (m *Manager) VMStopping(ctx context.Context, v api.VM) {
	ls, err := m.store.ListLeases(ctx, v.OwnerID)
	if err != nil {
		m.log.Warn("list leases of a stopping vm", "vm_id", v.ID, "err", err)
		return
	}
	for _, l := range ls {
		if l.VMID != v.ID {
			continue
		}
		if err := m.relinquish(ctx, l.OwnerID, l.Provider, v.ID); err != nil {
			m.log.Warn("sync back credentials of a stopping vm", "vm_id", v.ID, "provider", l.Provider, "err", err)
			_ = m.store.ReleaseLease(ctx, l.OwnerID, l.Provider, v.ID)
			m.forget(v.ID, l.Provider)
		}
	}
}

// Changed reacts to a stored credential being written (a new login) or
// deleted (logout): the lease holder gets the new files or loses them;
// without a holder, the owner's first ready CLI workspace VM gets them.
func (m *Manager) Changed(owner, provider string, workspaces func(ctx context.Context, owner string) []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := m.store.GetCredential(ctx, owner, provider)
	deleted := errors.Is(err, store.ErrNotFound)
	l, lerr := m.store.GetLease(ctx, owner, provider)
	switch {
	case lerr == nil && deleted:
		if v, err := m.vms.VM(ctx, l.VMID); err == nil && v.State == api.VMReady {
			if err := m.remove(ctx, provider, l.VMID); err != nil {
				m.log.Warn("remove credentials after logout", "vm_id", l.VMID, "provider", provider, "err", err)
			}
		}
		m.forget(l.VMID, provider)
		_ = m.store.ReleaseLease(ctx, owner, provider, l.VMID)
	case lerr == nil:
		if v, err := m.vms.VM(ctx, l.VMID); err == nil && v.State == api.VMReady {
			if _, err := m.deliver(ctx, owner, provider, l.VMID, true); err != nil {
				m.log.Warn("deliver new credentials", "vm_id", l.VMID, "provider", provider, "err", err)
			}
		}
	case deleted:
	case workspaces != nil:
		for _, id := range workspaces(ctx, owner) {
			if err := m.acquire(ctx, owner, provider, id, false); err != nil {
				continue
			}
			if _, err := m.deliver(ctx, owner, provider, id, true); err != nil {
				m.log.Warn("deliver new credentials", "vm_id", id, "provider", provider, "err", err)
			}
			break
		}
	}
}

// Start renews this daemon's leases and syncs idle credentials back
// periodically, until Close.
func (m *Manager) Start() {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		renew := time.NewTicker(m.cfg.LeaseTTL / 3)
		defer renew.Stop()
		syncT := time.NewTicker(m.cfg.SyncInterval)
		defer syncT.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-renew.C:
				m.renewAll()
			case <-syncT.C:
				m.syncIdle()
			}
		}
	}()
}

// Close stops the background work.
func (m *Manager) Close() {
	close(m.stop)
	m.wg.Wait()
}

// renewAll extends the lease of every ready VM holding one. A lease of a VM
// that is not ready any more is released (its daemon died before it could).
func (m *Manager) renewAll() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ls, err := m.store.ListLeases(ctx, "")
	if err != nil {
		m.log.Warn("renew credential leases", "err", err)
		return
	}
	for _, l := range ls {
		v, err := m.vms.VM(ctx, l.VMID)
		if err != nil || (v.State != api.VMReady && v.State != api.VMBooting && v.State != api.VMCreating) {
			_ = m.store.ReleaseLease(ctx, l.OwnerID, l.Provider, l.VMID)
			m.forget(l.VMID, l.Provider)
			continue
		}
		if err := m.store.RenewLease(ctx, l.OwnerID, l.Provider, l.VMID, time.Now().Add(m.cfg.LeaseTTL)); err != nil {
			m.log.Warn("renew credential lease", "vm_id", l.VMID, "provider", l.Provider, "err", err)
		}
	}
}

// syncIdle syncs back every held credential no prompt is using now.
func (m *Manager) syncIdle() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ls, err := m.store.ListLeases(ctx, "")
	if err != nil {
		return
	}
	for _, l := range ls {
		if m.BusyOn(l.OwnerID, l.Provider) != "" {
			continue
		}
		if v, err := m.vms.VM(ctx, l.VMID); err != nil || v.State != api.VMReady {
			continue
		}
		if err := m.SyncBack(ctx, l.OwnerID, l.Provider, l.VMID); err != nil {
			m.log.Warn("periodic credential sync-back", "vm_id", l.VMID, "provider", l.Provider, "err", err)
		}
	}
}
