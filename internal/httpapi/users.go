package httpapi

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"time"
	"unicode"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// keyPrefix marks hangar API keys so that secret scanners and humans
// recognise them.
const keyPrefix = "hgr_"

// NewKey returns a fresh random API key (160 bits).
func NewKey() string {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return keyPrefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// HashKey is what the store keeps of a key. A fast hash is right here: keys
// are 160 random bits, not passwords.
func HashKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// CreateUserWithKey creates a user and their first API key, returning the
// key (shown once).
func CreateUserWithKey(r *http.Request, st store.Store, name, role string) (store.User, string, error) {
	ctx := r.Context()
	u := store.User{ID: store.NewID("usr"), Name: name, Role: role, CreatedAt: time.Now().UTC()}
	if err := st.CreateUser(ctx, u); err != nil {
		return store.User{}, "", err
	}
	key := NewKey()
	if err := st.CreateAPIKey(ctx, store.APIKey{ID: store.NewID("key"), UserID: u.ID, Hash: HashKey(key), Prefix: key[:len(keyPrefix)+4], CreatedAt: u.CreatedAt}); err != nil {
		return store.User{}, "", err
	}
	return u, key, nil
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

func toAPIUser(u store.User) api.User {
	return api.User{ID: u.ID, Name: u.Name, Role: u.Role, CreatedAt: u.CreatedAt}
}

func validName(name string) error {
	if name == "" {
		return badRequest("name is required")
	}
	if len(name) > 64 {
		return badRequest("name is longer than 64 characters")
	}
	for _, c := range name {
		if !(unicode.IsLetter(c) || unicode.IsDigit(c) || c == '-' || c == '_' || c == '.' || c == '@') {
			return badRequest("name %q may hold only letters, digits and - _ . @", name)
		}
	}
	return nil
}

func (s *Server) handleMe(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, toAPIUser(userFrom(r.Context())))
	return nil
}

func (s *Server) handleCreateUser(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateUserRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if err := validName(req.Name); err != nil {
		return err
	}
	switch req.Role {
	case "":
		req.Role = store.RoleUser
	case store.RoleUser, store.RoleAdmin:
	default:
		return badRequest("role %q: want user or admin", req.Role)
	}
	u, key, err := CreateUserWithKey(r, s.opts.Store, req.Name, req.Role)
	if errors.Is(err, store.ErrConflict) {
		return errorf(http.StatusConflict, api.CodeConflict, "a user named %q already exists", req.Name)
	}
	if err != nil {
		return err
	}
	caller := userFrom(r.Context())
	if _, err := s.opts.Events.Publish(r.Context(), u.ID, "user_created", u.ID, map[string]string{"name": u.Name, "role": u.Role, "by": caller.ID}); err != nil {
		logFrom(r.Context(), s.log).Warn("publish user_created", "err", err)
	}
	logFrom(r.Context(), s.log).Info("user created", "new_user_id", u.ID, "name", u.Name, "role", u.Role)
	writeJSON(w, http.StatusCreated, api.CreateUserResponse{ID: u.ID, Name: u.Name, Role: u.Role, APIKey: key})
	return nil
}

func (s *Server) handleListUsers(w http.ResponseWriter, r *http.Request) error {
	users, err := s.opts.Store.ListUsers(r.Context())
	if err != nil {
		return err
	}
	out := make([]api.User, 0, len(users))
	for _, u := range users {
		out = append(out, toAPIUser(u))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) handleDeleteUser(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if id == userFrom(r.Context()).ID {
		return errorf(http.StatusConflict, api.CodeConflict, "you cannot delete your own user; use another admin key")
	}
	if err := s.opts.Store.DeleteUser(r.Context(), id); err != nil {
		if isNotFound(err) {
			return notFound("user " + id)
		}
		return err
	}
	if _, err := s.opts.Events.Publish(r.Context(), "", "user_deleted", id, nil); err != nil {
		logFrom(r.Context(), s.log).Warn("publish user_deleted", "err", err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
