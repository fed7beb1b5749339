package httpapi

import (
	"context"
	"net/http"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// AuthService is what the API needs of the login session manager; every
// method is scoped to the caller like VMService.
type AuthService interface {
	Create(ctx context.Context, caller store.User, req api.CreateAuthSessionRequest) (api.AuthSession, error)
	Get(ctx context.Context, caller store.User, id string) (api.AuthSession, error)
	List(ctx context.Context, caller store.User) ([]api.AuthSession, error)
	Cancel(ctx context.Context, caller store.User, id string) (api.AuthSession, error)
	Heartbeat(ctx context.Context, caller store.User, id string) (api.AuthSession, error)
	Input(ctx context.Context, caller store.User, id, text string) error
	Credentials(ctx context.Context, caller store.User) ([]api.Credential, error)
	DeleteCredential(ctx context.Context, caller store.User, provider string) error
	// Share issues a view-only live-view link of the caller's own session.
	Share(ctx context.Context, caller store.User, id string) (api.LiveViewShare, error)
}

// MountAuth adds the login session and credential routes.
func (s *Server) MountAuth(a AuthService) {
	one := func(fn func(ctx context.Context, caller store.User, id string) (api.AuthSession, error), status int) handlerFunc {
		return func(w http.ResponseWriter, r *http.Request) error {
			out, err := fn(r.Context(), userFrom(r.Context()), r.PathValue("id"))
			if err != nil {
				return err
			}
			writeJSON(w, status, out)
			return nil
		}
	}
	for _, rt := range []route{
		{"POST /api/v1/auth/sessions", authed, func(w http.ResponseWriter, r *http.Request) error {
			var req api.CreateAuthSessionRequest
			if err := decodeJSON(r, &req); err != nil {
				return err
			}
			out, err := a.Create(r.Context(), userFrom(r.Context()), req)
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusCreated, out)
			return nil
		}},
		{"GET /api/v1/auth/sessions", authed, func(w http.ResponseWriter, r *http.Request) error {
			out, err := a.List(r.Context(), userFrom(r.Context()))
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, out)
			return nil
		}},
		{"GET /api/v1/auth/sessions/{id}", authed, one(a.Get, http.StatusOK)},
		{"POST /api/v1/auth/sessions/{id}/cancel", authed, one(a.Cancel, http.StatusOK)},
		{"POST /api/v1/auth/sessions/{id}/heartbeat", authed, one(a.Heartbeat, http.StatusOK)},
		{"POST /api/v1/auth/sessions/{id}/share", authed, func(w http.ResponseWriter, r *http.Request) error {
			out, err := a.Share(r.Context(), userFrom(r.Context()), r.PathValue("id"))
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, out)
			return nil
		}},
		{"POST /api/v1/auth/sessions/{id}/input", authed, func(w http.ResponseWriter, r *http.Request) error {
			var req api.AuthInputRequest
			if err := decodeJSON(r, &req); err != nil {
				return err
			}
			if err := a.Input(r.Context(), userFrom(r.Context()), r.PathValue("id"), req.Text); err != nil {
				return err
			}
			w.WriteHeader(http.StatusNoContent)
			return nil
		}},
		{"GET /api/v1/credentials", authed, func(w http.ResponseWriter, r *http.Request) error {
			out, err := a.Credentials(r.Context(), userFrom(r.Context()))
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, out)
			return nil
		}},
		{"DELETE /api/v1/credentials/{provider}", authed, func(w http.ResponseWriter, r *http.Request) error {
			if err := a.DeleteCredential(r.Context(), userFrom(r.Context()), r.PathValue("provider")); err != nil {
				return err
			}
			w.WriteHeader(http.StatusNoContent)
			return nil
		}},
	} {
		s.handle(rt)
	}
}

// MountAdmin serves h at pattern (a net/http pattern, method included)
// for admin keys only, behind the same middleware as the built-in admin
// routes, so a subsystem's admin route needs no authorization code of its
// own.
func (s *Server) MountAdmin(pattern string, h http.HandlerFunc) {
	s.handle(route{pattern, admin, func(w http.ResponseWriter, r *http.Request) error {
		h(w, r)
		return nil
	}})
}

// MountUnlimited serves h under pattern without a key and without the rate
// limit: for immutable static assets only.
func (s *Server) MountUnlimited(pattern string, h http.Handler) {
	s.handle(route{pattern, public, func(w http.ResponseWriter, r *http.Request) error {
		h.ServeHTTP(w, r)
		return nil
	}})
}

// MountPublic serves h under prefix without an API key (the dev OAuth
// provider, the live view with its own tokens, the dashboard), still with
// request ids, logging, metrics and the per-address rate limit.
func (s *Server) MountPublic(pattern string, h http.Handler) {
	s.handle(route{pattern, publicLimited, func(w http.ResponseWriter, r *http.Request) error {
		h.ServeHTTP(w, r)
		return nil
	}})
}
