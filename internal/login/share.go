package login

import (
	"context"
	"net/url"
	"time"

	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// A login's live view shows the user's own OAuth pages (account names,
// one-time codes) and takes their input, so it is the owner's alone: an
// admin who can list every session gets no live-view link from it, and
// others see the screen only when the owner shares it, with a view-only
// link. View-only is a claim inside the signed token (liveview.Claims),
// not a URL flag a viewer could remove.

// toAPIFor is toAPI as caller may see it: the live-view link only for the
// session's owner.
func (m *Manager) toAPIFor(caller store.User, s store.AuthSession) api.AuthSession {
	out := m.toAPI(s)
	if caller.ID != s.OwnerID {
		out.LiveViewURL = ""
	}
	return out
}

// Share issues a view-only live-view link of the caller's own session, to
// hand to someone helping (an admin). It expires like any live-view token
// and with the session.
func (m *Manager) Share(ctx context.Context, caller store.User, id string) (api.LiveViewShare, error) {
	s, err := m.get(ctx, caller, id)
	if err != nil {
		return api.LiveViewShare{}, err
	}
	if caller.ID != s.OwnerID {
		return api.LiveViewShare{}, errs.E(errs.Conflict, "only the owner of login session %s can share its live view", id)
	}
	if s.Mode != api.ModeBrowser || s.VMID == "" || terminal(s.State) ||
		(s.State != api.AuthVMReady && s.State != api.AuthAwaitingUser && s.State != api.AuthCapturing) {
		return api.LiveViewShare{}, errs.E(errs.Conflict, "login session %s has no live view to share now (%s)", id, s.State)
	}
	exp := time.Now().Add(liveTTL).UTC()
	tok := m.live.Issue(s.ID, s.OwnerID, true, liveTTL)
	m.log.Info("live view shared (view only)", "session_id", s.ID, "user_id", caller.ID)
	return api.LiveViewShare{LiveViewURL: "/live/" + url.PathEscape(s.ID) + "?token=" + url.QueryEscape(tok), ViewOnly: true, ExpiresAt: exp}, nil
}
