package httpapi

import (
	"net/http"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// A user manages their own API keys: a second key for a script or another
// machine, an expiry for a key handed to something short-lived, revoking
// a key that leaked. Keys are the caller's own; an admin manages other
// users' keys by deleting the user (or their keys in the store).

// maxKeysPerUser bounds the keys one user may hold.
const maxKeysPerUser = 50

func (s *Server) mountKeys() {
	for _, rt := range []route{
		{"GET /api/v1/keys", authed, s.handleListKeys},
		{"POST /api/v1/keys", authed, s.handleCreateKey},
		{"DELETE /api/v1/keys/{id}", authed, s.handleRevokeKey},
	} {
		s.handle(rt)
	}
}

func toAPIKey(k store.APIKey, currentID string, now time.Time) api.APIKey {
	out := api.APIKey{ID: k.ID, Name: k.Name, Prefix: k.Prefix, CreatedAt: k.CreatedAt, Current: k.ID == currentID}
	if !k.ExpiresAt.IsZero() {
		e := k.ExpiresAt
		out.ExpiresAt = &e
		out.Expired = !now.Before(e)
	}
	return out
}

func (s *Server) handleListKeys(w http.ResponseWriter, r *http.Request) error {
	keys, err := s.opts.Store.ListAPIKeys(r.Context(), userFrom(r.Context()).ID)
	if err != nil {
		return err
	}
	cur := keyFrom(r.Context())
	now := time.Now()
	out := make([]api.APIKey, 0, len(keys))
	for _, k := range keys {
		out = append(out, toAPIKey(k, cur, now))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) handleCreateKey(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateAPIKeyRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if req.Name != "" {
		if err := validName(req.Name); err != nil {
			return err
		}
	}
	u := userFrom(r.Context())
	now := time.Now().UTC()
	k := store.APIKey{ID: store.NewID("key"), UserID: u.ID, Name: req.Name, CreatedAt: now}
	if req.ExpiresIn != "" {
		d, err := time.ParseDuration(req.ExpiresIn)
		if err != nil || d < time.Minute || d > 5*365*24*time.Hour {
			return badRequest("expires_in %q: want a duration from 1m to 43800h, such as 720h", req.ExpiresIn)
		}
		k.ExpiresAt = now.Add(d)
	}
	have, err := s.opts.Store.ListAPIKeys(r.Context(), u.ID)
	if err != nil {
		return err
	}
	if len(have) >= maxKeysPerUser {
		return errorf(http.StatusTooManyRequests, api.CodeQuotaExceeded, "API keys per user is %d: you have %d, 0 left; revoke one first", maxKeysPerUser, len(have))
	}
	key := NewKey()
	k.Hash, k.Prefix = HashKey(key), key[:len(keyPrefix)+4]
	if err := s.opts.Store.CreateAPIKey(r.Context(), k); err != nil {
		return err
	}
	logFrom(r.Context(), s.log).Info("api key created", "key_id", k.ID, "prefix", k.Prefix, "expires_at", k.ExpiresAt)
	writeJSON(w, http.StatusCreated, api.CreateAPIKeyResponse{APIKey: toAPIKey(k, "", now), Key: key})
	return nil
}

func (s *Server) handleRevokeKey(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := s.opts.Store.DeleteAPIKey(r.Context(), id, userFrom(r.Context()).ID); err != nil {
		if isNotFound(err) {
			return notFound("api key " + id)
		}
		return err
	}
	logFrom(r.Context(), s.log).Info("api key revoked", "key_id", id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
