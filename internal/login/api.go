package login

import (
	"context"

	"encoding/json"
	"errors"
	"github.com/hangar-vm/hangar/internal/agentlink"
	"net/url"
	"strings"
	"time"

	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// liveTTL bounds each live-view token; the session's end ends it sooner.
const liveTTL = 10 * time.Minute

func terminal(state string) bool {
	switch state {
	case api.AuthCompleted, api.AuthFailed, api.AuthTimeout, api.AuthCancelled:
		return true
	}
	return false
}

func (m *Manager) toAPI(s store.AuthSession) api.AuthSession {
	var d details
	_ = json.Unmarshal(s.Details, &d)
	out := api.AuthSession{
		ID: s.ID, OwnerID: s.OwnerID, Provider: s.Provider, Mode: s.Mode, State: s.State, Error: s.Error,
		OAuthURL: d.OAuthURL, DeviceCode: d.DeviceCode, VMID: s.VMID, TimingsMS: d.TimingsMS,
		CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt, ExpiresAt: s.ExpiresAt,
	}
	if !s.FinishedAt.IsZero() {
		f := s.FinishedAt
		out.FinishedAt = &f
	}
	if s.Mode == api.ModeBrowser && m.live != nil && s.VMID != "" && !terminal(s.State) &&
		(s.State == api.AuthVMReady || s.State == api.AuthAwaitingUser || s.State == api.AuthCapturing) {
		out.LiveViewURL = "/live/" + url.PathEscape(s.ID) + "?token=" + url.QueryEscape(m.live.Issue(s.ID, s.OwnerID, false, liveTTL))
	}
	return out
}

func (m *Manager) get(ctx context.Context, caller store.User, id string) (store.AuthSession, error) {
	s, err := m.store.GetAuthSession(ctx, id, caller.Scope())
	if errors.Is(err, store.ErrNotFound) {
		return s, errs.E(errs.NotFound, "login session %s not found", id)
	}
	return s, err
}

// Get returns one session.
func (m *Manager) Get(ctx context.Context, caller store.User, id string) (api.AuthSession, error) {
	s, err := m.get(ctx, caller, id)
	if err != nil {
		return api.AuthSession{}, err
	}
	return m.toAPIFor(caller, s), nil
}

// List returns the caller's sessions (admin: all).
func (m *Manager) List(ctx context.Context, caller store.User) ([]api.AuthSession, error) {
	ss, err := m.store.ListAuthSessions(ctx, caller.Scope())
	if err != nil {
		return nil, err
	}
	out := make([]api.AuthSession, 0, len(ss))
	for _, s := range ss {
		out = append(out, m.toAPIFor(caller, s))
	}
	return out, nil
}

func (m *Manager) liveRun(id string) *run {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.runs[id]
}

// Cancel ends a session; its VM is destroyed.
func (m *Manager) Cancel(ctx context.Context, caller store.User, id string) (api.AuthSession, error) {
	s, err := m.get(ctx, caller, id)
	if err != nil {
		return api.AuthSession{}, err
	}
	if terminal(s.State) {
		return m.toAPIFor(caller, s), nil
	}
	if rn := m.liveRun(id); rn != nil {
		rn.cancel(errCancelled)
	}
	// Wait briefly for the driver to record the end.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if s, err = m.get(ctx, caller, id); err == nil && terminal(s.State) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return m.toAPIFor(caller, s), nil
}

// Heartbeat keeps a watched session alive.
func (m *Manager) Heartbeat(ctx context.Context, caller store.User, id string) (api.AuthSession, error) {
	s, err := m.get(ctx, caller, id)
	if err != nil {
		return api.AuthSession{}, err
	}
	if terminal(s.State) {
		return api.AuthSession{}, errs.E(errs.Conflict, "login session %s has ended (%s)", id, s.State)
	}
	// Only the deadline changes, over the version read, so a login that
	// ends meanwhile stays ended.
	s, err = m.update(id, func(s *store.AuthSession, _ *details) {
		s.ExpiresAt = time.Now().UTC().Add(m.cfg.HeartbeatTimeout)
	})
	if err != nil {
		return api.AuthSession{}, err
	}
	return m.toAPIFor(caller, s), nil
}

// Input types text into the login CLI's prompt (a pasted code).
func (m *Manager) Input(ctx context.Context, caller store.User, id, text string) error {
	s, err := m.get(ctx, caller, id)
	if err != nil {
		return err
	}
	if text == "" || len(text) > 4096 {
		return errs.E(errs.Invalid, "text must be 1 to 4096 characters")
	}
	if terminal(s.State) {
		return errs.E(errs.Conflict, "login session %s has ended (%s)", id, s.State)
	}
	rn := m.liveRun(id)
	if rn == nil {
		return errs.E(errs.Conflict, "login session %s is not running here", id)
	}
	rn.mu.Lock()
	d := rn.driver
	rn.mu.Unlock()
	if d == nil {
		return errs.E(errs.Conflict, "the login command has not started yet; retry in a moment")
	}
	if err := d.Input(text); err != nil {
		return errs.Wrap(errs.Conflict, err, "could not type into the login command")
	}
	m.log.Info("login input delivered", "session_id", id, "bytes", len(text))
	return nil
}

// Alive says whether a session still runs (the live view ends with it).
func (m *Manager) Alive(id string) bool {
	s, err := m.store.GetAuthSession(context.Background(), id, "")
	return err == nil && !terminal(s.State)
}

// LiveVM returns the VM of a running browser session owned by ownerID, for
// the live view.
func (m *Manager) LiveVM(ctx context.Context, id, ownerID string) (string, error) {
	s, err := m.store.GetAuthSession(ctx, id, ownerID)
	if err != nil {
		return "", err
	}
	if terminal(s.State) || s.VMID == "" {
		return "", errs.E(errs.Conflict, "login session %s has no running VM", id)
	}
	return s.VMID, nil
}

// Credentials lists the caller's stored credentials, metadata only.
func (m *Manager) Credentials(ctx context.Context, caller store.User) ([]api.Credential, error) {
	cs, err := m.store.ListCredentials(ctx, caller.ID)
	if err != nil {
		return nil, err
	}
	out := make([]api.Credential, 0, len(cs))
	for _, c := range cs {
		if _, ok := m.recipes[c.Provider]; !ok {
			// Other sealed records (the user's upstream proxy) share the
			// table; only providers are credentials.
			continue
		}
		var meta credMeta
		_ = json.Unmarshal(c.Metadata, &meta)
		ac := api.Credential{Provider: c.Provider, Account: meta.Account, Plan: meta.Plan, Files: meta.Files, CapturedAt: c.CapturedAt}
		if !meta.ExpiresAt.IsZero() {
			e := meta.ExpiresAt
			ac.ExpiresAt = &e
		}
		if !c.ValidatedAt.IsZero() {
			v := c.ValidatedAt
			ac.ValidatedAt = &v
		}
		out = append(out, ac)
	}
	return out, nil
}

// DeleteCredential removes the caller's credentials for provider, and
// with them the files in any VM that holds them.
func (m *Manager) DeleteCredential(ctx context.Context, caller store.User, provider string) error {
	// Only providers' records are the user's to delete; any other name
	// (such as one an admin's record once lived under) is refused.
	if m.recipes[provider] == nil {
		return errs.E(errs.Invalid, "provider %q: want one of %s", provider, strings.Join(m.recipes.Names(), ", "))
	}
	err := m.store.DeleteCredential(ctx, caller.ID, provider)
	if errors.Is(err, store.ErrNotFound) {
		return errs.E(errs.NotFound, "no %s credentials stored", provider)
	}
	if err == nil {
		m.log.Info("credentials deleted", "user_id", caller.ID, "provider", provider)
		m.credentialsChanged(caller.ID, provider)
	}
	return err
}

// Recover marks sessions a previous daemon left running as failed (their
// CLI and browser died with it) and has their VMs destroyed.
func (m *Manager) Recover(ctx context.Context) error {
	ss, err := m.store.ListAuthSessions(ctx, "")
	if err != nil {
		return err
	}
	for _, s := range ss {
		if terminal(s.State) {
			continue
		}
		s, err = m.update(s.ID, func(s *store.AuthSession, _ *details) {
			s.State, s.Error, s.FinishedAt = api.AuthFailed, "the daemon restarted during this login; start a new one", time.Now().UTC()
		})
		if errors.Is(err, errEnded) {
			continue // it ended meanwhile (another daemon on the same store)
		}
		if err != nil {
			return err
		}
		m.publish(s, "auth_failed", map[string]string{"provider": s.Provider, "state": s.State, "error": s.Error})
		if s.VMID != "" {
			if _, err := m.tasks.Enqueue(ctx, m.cfg.DestroyTaskKind, map[string]string{"vm_id": s.VMID}, time.Now()); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close stops every running session's driver (the daemon is stopping).
func (m *Manager) Close() {
	m.mu.Lock()
	for _, rn := range m.runs {
		rn.cancel(errors.New("daemon shutting down"))
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// SetPublicDevOAuthURL sets the dev provider's URL as users see it, once
// the daemon knows its address.
func (m *Manager) SetPublicDevOAuthURL(u string) {
	m.mu.Lock()
	m.cfg.PublicDevOAuthURL = u
	m.mu.Unlock()
}

// SetPrepareVM sets a step that runs on every login VM once it is ready,
// before the provider's login command starts.
func (m *Manager) SetPrepareVM(fn func(ctx context.Context, link *agentlink.Client) error) {
	m.mu.Lock()
	m.prepareVM = fn
	m.mu.Unlock()
}

// SetOnCredentials sets what to tell when a stored credential was written
// or deleted.
func (m *Manager) SetOnCredentials(fn func(ownerID, provider string)) {
	m.mu.Lock()
	m.onCredentials = fn
	m.mu.Unlock()
}

// Recipes are the provider recipes the manager knows.
func (m *Manager) Recipes() Recipes { return m.recipes }

// SetOnEnd sets what to tell when a session ends.
func (m *Manager) SetOnEnd(fn func(sessionID string)) {
	m.mu.Lock()
	m.onEnd = fn
	m.mu.Unlock()
}
