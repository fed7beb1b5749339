package login

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// VMs is what sessions need of the VM manager.
type VMs interface {
	// CreateFor creates a VM for a purpose (api.PurposeLogin here: a
	// throwaway VM that is never a user's workspace).
	CreateFor(ctx context.Context, caller store.User, req api.CreateVMRequest, purpose string) (api.VM, error)
	WaitReady(ctx context.Context, caller store.User, id string) (api.VM, error)
	Link(ctx context.Context, caller store.User, id string) (*agentlink.Client, error)
}

// Tasks enqueues durable work (the VM's destruction).
type Tasks interface {
	Enqueue(ctx context.Context, kind string, payload any, runAt time.Time) (store.Task, error)
}

// LiveTokens issues live-view tokens bound to a session and its owner.
type LiveTokens interface {
	Issue(sessionID, ownerID string, viewOnly bool, ttl time.Duration) string
}

// Config are the session manager's timings and places.
type Config struct {
	// HeartbeatTimeout ends a session nobody watches (default 5 min).
	HeartbeatTimeout time.Duration
	// MaxDuration bounds a whole login (default 20 min).
	MaxDuration time.Duration
	// DestroyAfterSuccess and DestroyAfterFailure delay the VM's
	// destruction (defaults 5 s and 10 s).
	DestroyAfterSuccess, DestroyAfterFailure time.Duration
	// GuestDevOAuth is where the dev provider is reachable inside a login
	// VM (reverse-forwarded; default 127.0.0.1:4000).
	GuestDevOAuth string
	// PublicDevOAuthURL is the dev provider's URL as users see it (the
	// daemon's /dev-oauth), for the URL shown in paste mode.
	PublicDevOAuthURL string
	// DestroyTaskKind is the VM destroy task's kind.
	DestroyTaskKind string
}

// Manager runs login sessions.
type Manager struct {
	cfg     Config
	store   store.Store
	bus     *events.Bus
	vms     VMs
	tasks   Tasks
	keys    *seal.Keyring
	live    LiveTokens
	recipes Recipes
	devAuth http.Handler
	log     *slog.Logger

	mu   sync.Mutex // guards runs, prepareVM, onEnd, onCredentials and cfg.PublicDevOAuthURL
	runs map[string]*run
	// prepareVM, when set, runs on each login VM before the login command
	// (operators install extra tools; tests install fake CLIs).
	prepareVM func(ctx context.Context, link *agentlink.Client) error
	// onEnd is told when a session ends (the live view closes its viewers).
	onEnd func(sessionID string)
	// onCredentials is told when a stored credential was written or
	// deleted (the credential manager delivers or removes the files).
	onCredentials func(ownerID, provider string)
	wg            sync.WaitGroup
}

// run is a live session's driver.
type run struct {
	cancel context.CancelCauseFunc
	mu     sync.Mutex // guards driver
	driver *Driver
}

// details is the JSON kept in the session's details column.
type details struct {
	OAuthURL   string           `json:"oauth_url,omitempty"`
	DeviceCode string           `json:"device_code,omitempty"`
	TimingsMS  map[string]int64 `json:"timings_ms,omitempty"`
}

// NewManager returns a session manager.
func NewManager(cfg Config, st store.Store, bus *events.Bus, vms VMs, tasks Tasks, keys *seal.Keyring, live LiveTokens, recipes Recipes, devAuth http.Handler, log *slog.Logger) *Manager {
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = 5 * time.Minute
	}
	if cfg.MaxDuration == 0 {
		cfg.MaxDuration = 20 * time.Minute
	}
	if cfg.DestroyAfterSuccess == 0 {
		cfg.DestroyAfterSuccess = 5 * time.Second
	}
	if cfg.DestroyAfterFailure == 0 {
		cfg.DestroyAfterFailure = 10 * time.Second
	}
	if cfg.GuestDevOAuth == "" {
		cfg.GuestDevOAuth = "127.0.0.1:4000"
	}
	if cfg.DestroyTaskKind == "" {
		cfg.DestroyTaskKind = "vm.destroy"
	}
	return &Manager{cfg: cfg, store: st, bus: bus, vms: vms, tasks: tasks, keys: keys, live: live, recipes: recipes, devAuth: devAuth, log: log, runs: map[string]*run{}}
}

var (
	errCancelled = errors.New("cancelled by the user")
	errTimeout   = errors.New("nobody watched the session (no heartbeat)")
	errTooLong   = errors.New("the login took too long")
)

// Create starts a login session.
func (m *Manager) Create(ctx context.Context, caller store.User, req api.CreateAuthSessionRequest) (api.AuthSession, error) {
	r := m.recipes[req.Provider]
	if r == nil {
		return api.AuthSession{}, errs.E(errs.Invalid, "provider %q: want one of %s", req.Provider, strings.Join(m.recipes.Names(), ", "))
	}
	if req.Mode == "" {
		req.Mode = api.ModeBrowser
	}
	if !r.Supports(req.Mode) {
		return api.AuthSession{}, errs.E(errs.Invalid, "provider %s has no %s mode; it supports %s", r.Name, req.Mode, strings.Join(r.Modes, ", "))
	}
	now := time.Now().UTC()
	s := store.AuthSession{
		ID: store.NewID("auth"), OwnerID: caller.ID, Provider: r.Name, Mode: req.Mode, State: api.AuthStarting,
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(m.cfg.HeartbeatTimeout), Details: []byte("{}"),
	}
	if err := m.store.CreateAuthSession(ctx, s); err != nil {
		return api.AuthSession{}, err
	}
	m.log.Info("login session started", "session_id", s.ID, "user_id", caller.ID, "provider", r.Name, "mode", req.Mode)
	rctx, cancel := context.WithCancelCause(context.Background())
	rn := &run{cancel: cancel}
	m.mu.Lock()
	m.runs[s.ID] = rn
	m.mu.Unlock()
	m.wg.Add(2)
	go func() {
		defer m.wg.Done()
		m.drive(rctx, caller, s, r, rn)
	}()
	go func() {
		defer m.wg.Done()
		m.watchExpiry(rctx, s.ID, rn)
	}()
	return m.toAPI(s), nil
}

// watchExpiry ends a session whose heartbeat lapsed or that ran too long.
func (m *Manager) watchExpiry(ctx context.Context, id string, rn *run) {
	deadline := time.Now().Add(m.cfg.MaxDuration)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Now().After(deadline) {
			rn.cancel(errTooLong)
			return
		}
		s, err := m.store.GetAuthSession(ctx, id, "")
		if err == nil && !s.ExpiresAt.IsZero() && time.Now().After(s.ExpiresAt) {
			rn.cancel(errTimeout)
			return
		}
	}
}

// updateAttempts bounds the retries of one session write that keeps losing
// the compare-and-swap to other writers (driver, heartbeat, cancel).
const updateAttempts = 8

// errEnded is returned by update for a session that already ended.
var errEnded = errors.New("the login session has ended")

// update applies fn to the stored session and writes it back over the
// version it read, publishing nothing. When another write came first it
// reads again and re-applies fn (so fn must only set fields). A session
// that has ended is never written again: a late heartbeat or driver event
// must not bring it back (it would keep issuing live-view tokens).
func (m *Manager) update(id string, fn func(s *store.AuthSession, d *details)) (store.AuthSession, error) {
	ctx := context.Background()
	for attempt := 1; ; attempt++ {
		s, err := m.store.GetAuthSession(ctx, id, "")
		if err != nil {
			return s, err
		}
		if terminal(s.State) {
			return s, errs.Wrap(errs.Conflict, errEnded, "login session %s has ended (%s)", id, s.State)
		}
		var d details
		_ = json.Unmarshal(s.Details, &d)
		fn(&s, &d)
		s.Details, _ = json.Marshal(d)
		err = m.store.UpdateAuthSession(ctx, s)
		if err == nil {
			s.Version++
			return s, nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt >= updateAttempts {
			return s, err
		}
	}
}

func (m *Manager) setState(id, state string, started time.Time) (store.AuthSession, error) {
	s, err := m.update(id, func(s *store.AuthSession, d *details) {
		s.State = state
		if d.TimingsMS == nil {
			d.TimingsMS = map[string]int64{}
		}
		d.TimingsMS[state] = time.Since(started).Milliseconds()
	})
	if err == nil {
		m.log.Info("login session state", "session_id", id, "state", state)
	}
	return s, err
}

// drive runs one session to its end.
func (m *Manager) drive(ctx context.Context, caller store.User, s store.AuthSession, r *Recipe, rn *run) {
	started := s.CreatedAt
	log := m.log.With("session_id", s.ID, "provider", r.Name)
	kind := api.KindBrowser
	if s.Mode != api.ModeBrowser {
		kind = api.KindCLI // paste and device modes need the CLI, not a browser
	}
	var vmID string
	finish := func(state string, cause error) {
		msg := ""
		if cause != nil {
			msg = userMessage(r, cause)
		}
		fs, err := m.update(s.ID, func(s *store.AuthSession, d *details) {
			s.State, s.Error = state, msg
			s.FinishedAt = time.Now().UTC()
			if d.TimingsMS == nil {
				d.TimingsMS = map[string]int64{}
			}
			d.TimingsMS[state] = time.Since(started).Milliseconds()
		})
		if err != nil {
			log.Error("record the end of a login session", "err", err)
		}
		if state == api.AuthCompleted {
			m.publish(fs, "auth_completed", map[string]string{"provider": r.Name})
			log.Info("login completed", "duration_ms", time.Since(started).Milliseconds())
		} else {
			m.publish(fs, "auth_failed", map[string]string{"provider": r.Name, "state": state, "error": msg})
			log.Warn("login ended without credentials", "state", state, "reason", msg)
		}
		if vmID != "" {
			delay := m.cfg.DestroyAfterFailure
			if state == api.AuthCompleted {
				delay = m.cfg.DestroyAfterSuccess
			}
			if _, err := m.tasks.Enqueue(context.Background(), m.cfg.DestroyTaskKind, map[string]string{"vm_id": vmID}, time.Now().Add(delay)); err != nil {
				log.Error("enqueue the login VM's destruction", "vm_id", vmID, "err", err)
			}
		}
		m.mu.Lock()
		delete(m.runs, s.ID)
		onEnd := m.onEnd
		m.mu.Unlock()
		rn.cancel(nil)
		if onEnd != nil {
			onEnd(s.ID)
		}
	}
	fail := func(err error) {
		switch cause := context.Cause(ctx); {
		case errors.Is(cause, errCancelled):
			finish(api.AuthCancelled, errCancelled)
		case errors.Is(cause, errTimeout), errors.Is(cause, errTooLong):
			finish(api.AuthTimeout, cause)
		case cause != nil:
			// Ended from outside (the daemon stopping): say that, not
			// how the killed CLI exited.
			finish(api.AuthFailed, cause)
		default:
			finish(api.AuthFailed, err)
		}
	}

	vm, err := m.createLoginVM(ctx, caller, kind, log)
	if err != nil {
		fail(fmt.Errorf("create the login VM: %w", err))
		return
	}
	vmID = vm.ID
	// A VM that is ready at once came from the warm pool; say which it
	// was in the timings (the key holds the time to get the VM).
	source := "vm_cold_boot"
	if vm.State == api.VMReady {
		source = "vm_warm_pool"
	}
	if _, err := m.update(s.ID, func(s *store.AuthSession, d *details) {
		s.VMID = vm.ID
		if d.TimingsMS == nil {
			d.TimingsMS = map[string]int64{}
		}
		d.TimingsMS[source] = time.Since(started).Milliseconds()
	}); err != nil {
		log.Warn("record login vm", "err", err)
	}
	if _, err := m.vms.WaitReady(ctx, caller, vm.ID); err != nil {
		fail(fmt.Errorf("the login VM did not start: %w", err))
		return
	}
	if _, err := m.setState(s.ID, api.AuthVMReady, started); err != nil {
		fail(err)
		return
	}
	link, err := m.vms.Link(ctx, caller, vm.ID)
	if err != nil {
		fail(err)
		return
	}
	if r.Name == "dev" && m.devAuth != nil {
		// The dev provider lives in the daemon; the VM has no network,
		// so the agent carries the CLI's and the browser's requests to
		// it. Only that handler is reachable this way.
		if err := link.Reverse(ctx, m.cfg.GuestDevOAuth, "dev-oauth", agentlink.ServeHTTPReverse(m.devAuth)); err != nil {
			fail(fmt.Errorf("connect the dev provider to the VM: %w", err))
			return
		}
	}
	m.mu.Lock()
	prepare := m.prepareVM
	m.mu.Unlock()
	if prepare != nil {
		if err := prepare(ctx, link); err != nil {
			fail(fmt.Errorf("prepare the login VM: %w", err))
			return
		}
	}
	d := NewDriver(link, r, s.Mode, log)
	rn.mu.Lock()
	rn.driver = d
	rn.mu.Unlock()
	awaiting := func() {
		if fs, err := m.setState(s.ID, api.AuthAwaitingUser, started); err == nil {
			m.publish(fs, "auth_awaiting_user", map[string]string{"provider": r.Name, "mode": s.Mode})
		}
	}
	capture, err := d.Run(ctx, Events{
		URL: func(u string) {
			_, _ = m.update(s.ID, func(_ *store.AuthSession, dd *details) { dd.OAuthURL = m.publicURL(u) })
			if s.Mode == api.ModeBrowser {
				awaiting()
			}
		},
		DeviceCode: func(code string) {
			_, _ = m.update(s.ID, func(_ *store.AuthSession, dd *details) { dd.DeviceCode = code })
			awaiting()
		},
		WaitingForCode: func() {
			if s.Mode == api.ModePaste {
				awaiting()
			}
		},
		Capturing: func() { _, _ = m.setState(s.ID, api.AuthCapturing, started) },
	})
	if err != nil {
		fail(err)
		return
	}
	if err := m.storeCapture(ctx, s, r, capture); err != nil {
		fail(err)
		return
	}
	finish(api.AuthCompleted, nil)
}

// quotaWait is how long a login waits for a browser-VM share that is
// about to be freed: the VM of the user's previous login (cancelled,
// failed or done) is destroyed seconds after it ended, and a user who
// cancels and connects again at once must not get a quota error for it.
const quotaWait = 45 * time.Second

// createLoginVM creates the session's VM, waiting up to quotaWait while a
// quota refuses it; a quota still refusing then is the user's error.
func (m *Manager) createLoginVM(ctx context.Context, caller store.User, kind string, log *slog.Logger) (api.VM, error) {
	deadline := time.Now().Add(quotaWait)
	logged := false
	for {
		vm, err := m.vms.CreateFor(ctx, caller, api.CreateVMRequest{Kind: kind}, api.PurposeLogin)
		e, ok := errs.As(err)
		if err == nil || !ok || e.Kind != errs.Quota || time.Now().After(deadline) {
			return vm, err
		}
		if !logged {
			log.Info("login waits for a browser VM share to be freed", "reason", e.Msg)
			logged = true
		}
		select {
		case <-ctx.Done():
			return vm, err
		case <-time.After(time.Second):
		}
	}
}

// publicURL rewrites the dev provider's guest-side URL to the one users
// reach (paste mode shows it to them).
func (m *Manager) publicURL(u string) string {
	m.mu.Lock()
	public := m.cfg.PublicDevOAuthURL
	m.mu.Unlock()
	if public != "" {
		return strings.Replace(u, "http://"+m.cfg.GuestDevOAuth+"/dev-oauth/authorize", public+"/authorize", 1)
	}
	return u
}

// userMessage turns a failure into a sentence a user can act on. It never
// includes credential contents: driver errors name files and fields only.
func userMessage(r *Recipe, err error) string {
	switch {
	case errors.Is(err, errCancelled):
		return "the login was cancelled"
	case errors.Is(err, errTimeout):
		return "the login session expired because nobody was watching it (no heartbeat); start a new one"
	case errors.Is(err, errTooLong):
		return "the login took too long; start a new one"
	}
	return fmt.Sprintf("%s login failed: %v", r.DisplayName, err)
}

func (m *Manager) publish(s store.AuthSession, typ string, data any) {
	if _, err := m.bus.Publish(context.Background(), s.OwnerID, typ, s.ID, data); err != nil {
		m.log.Warn("publish", "type", typ, "err", err)
	}
}

// sealedFiles is the plaintext that gets sealed: every credential file.
type sealedFiles struct {
	RecipeVersion int               `json:"recipe_version"`
	Files         map[string]string `json:"files"` // path → base64
}

// storeCapture seals the captured files and writes the credential record.
func (m *Manager) storeCapture(ctx context.Context, s store.AuthSession, r *Recipe, c Capture) error {
	pb, err := SealFiles(r, c.Files)
	if err != nil {
		return err
	}
	mb := MetadataJSON(r, c.Files)
	for attempt := 0; attempt < 5; attempt++ {
		rec := store.Credential{ID: store.NewID("cred"), OwnerID: s.OwnerID, Provider: r.Name, Version: 1, Metadata: mb, CapturedAt: time.Now().UTC()}
		if old, err := m.store.GetCredential(ctx, s.OwnerID, r.Name); err == nil {
			rec.ID, rec.Version = old.ID, old.Version+1
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		rec, err = m.keys.SealRecord(rec, pb)
		if err != nil {
			return fmt.Errorf("seal the credentials: %w", err)
		}
		if _, err = m.store.PutCredential(ctx, rec); err == nil {
			m.credentialsChanged(s.OwnerID, r.Name)
			return nil
		}
		if !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	return errors.New("the credential record kept changing while it was written")
}

// credentialsChanged tells the credential manager that a user's stored
// credential for provider was written or deleted, so VMs holding it get
// the new files (or lose them).
func (m *Manager) credentialsChanged(ownerID, provider string) {
	m.mu.Lock()
	fn := m.onCredentials
	m.mu.Unlock()
	if fn != nil {
		fn(ownerID, provider)
	}
}

// credMeta is the non-secret metadata kept beside a credential.
type credMeta struct {
	Account       string    `json:"account,omitempty"`
	Plan          string    `json:"plan,omitempty"`
	ExpiresAt     time.Time `json:"expires_at,omitempty"`
	Files         []string  `json:"files"`
	RecipeVersion int       `json:"recipe_version"`
}

func credentialMetadata(r *Recipe, c Capture) credMeta {
	meta := credMeta{RecipeVersion: r.Version}
	for _, f := range r.Credentials {
		if _, ok := c.Files[f.Path]; ok {
			meta.Files = append(meta.Files, f.Path)
		}
	}
	if len(r.Credentials) == 0 {
		return meta
	}
	var doc any
	if json.Unmarshal(c.Files[r.Credentials[0].Path], &doc) != nil {
		return meta
	}
	if v, ok := lookup(doc, r.Metadata.Account); ok {
		meta.Account = fmt.Sprint(v)
	}
	if v, ok := lookup(doc, r.Metadata.Plan); ok {
		meta.Plan = fmt.Sprint(v)
	}
	if v, ok := lookup(doc, r.Metadata.Expiry); ok {
		meta.ExpiresAt = parseExpiry(v, r.Metadata.ExpiryUnit)
	}
	return meta
}

func parseExpiry(v any, unit string) time.Time {
	switch unit {
	case "rfc3339":
		if s, ok := v.(string); ok {
			t, _ := time.Parse(time.RFC3339, s)
			return t.UTC()
		}
	case "unix_ms", "unix_s":
		var n float64
		switch x := v.(type) {
		case float64:
			n = x
		case string:
			n, _ = strconv.ParseFloat(x, 64)
		}
		if n <= 0 {
			return time.Time{}
		}
		if unit == "unix_ms" {
			return time.UnixMilli(int64(n)).UTC()
		}
		return time.Unix(int64(n), 0).UTC()
	}
	return time.Time{}
}
