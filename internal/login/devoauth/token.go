package devoauth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"mime"
	"net/http"
	"strings"
	"time"
)

// TokenResponse is the JSON answer of /token.
type TokenResponse struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	Scope        string `json:"scope,omitempty"`
}

// ErrorResponse is an OAuth error (RFC 6749 §5.2).
type ErrorResponse struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

// Userinfo is the JSON answer of /userinfo.
type Userinfo struct {
	Sub   string `json:"sub"`
	Email string `json:"email"`
	Name  string `json:"name"`
}

// maxTokenBody bounds a /token request body.
const maxTokenBody = 64 << 10

// tokenParams reads a /token request: form-encoded as RFC 6749 says, or a
// JSON object of strings as some CLIs send (Codex and Claude Code refresh
// with JSON).
func tokenParams(w http.ResponseWriter, r *http.Request) (map[string]string, bool) {
	r.Body = http.MaxBytesReader(w, r.Body, maxTokenBody)
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	out := map[string]string{}
	if ct == "application/json" {
		var m map[string]any
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			return nil, false
		}
		for k, v := range m {
			if s, ok := v.(string); ok {
				out[k] = s
			}
		}
		return out, true
	}
	if err := r.ParseForm(); err != nil {
		return nil, false
	}
	for k := range r.PostForm {
		out[k] = r.PostForm.Get(k)
	}
	return out, true
}

func (s *Server) tokenError(w http.ResponseWriter, status int, code, desc, clientID string) {
	s.log.Info("dev oauth token refused", "error", code, "reason", desc, "client_id", clientID)
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="hangar-dev"`)
	}
	writeJSON(w, status, ErrorResponse{Error: code, Description: desc})
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	p, ok := tokenParams(w, r)
	if !ok {
		s.tokenError(w, http.StatusBadRequest, "invalid_request", "the body must be form-encoded or a JSON object", "")
		return
	}
	clientID := p["client_id"]
	if _, known := s.clientName(clientID); clientID == "" || !known {
		s.tokenError(w, http.StatusUnauthorized, "invalid_client", "client_id is missing or unknown", clientID)
		return
	}
	switch p["grant_type"] {
	case "authorization_code":
		s.exchangeCode(w, p)
	case "refresh_token":
		s.refreshGrant(w, p)
	case "":
		s.tokenError(w, http.StatusBadRequest, "invalid_request", "grant_type is required", clientID)
	default:
		s.tokenError(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token", clientID)
	}
}

// verifierMatches checks an RFC 7636 verifier (43-128 unreserved
// characters) against an S256 challenge.
func verifierMatches(verifier, challenge string) bool {
	if len(verifier) < 43 || len(verifier) > 128 {
		return false
	}
	for _, c := range verifier {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.ContainsRune("-._~", c)) {
			return false
		}
	}
	sum := sha256.Sum256([]byte(verifier))
	got := base64.RawURLEncoding.EncodeToString(sum[:])
	return subtle.ConstantTimeCompare([]byte(got), []byte(challenge)) == 1
}

func (s *Server) exchangeCode(w http.ResponseWriter, p map[string]string) {
	clientID := p["client_id"]
	if p["code"] == "" || p["redirect_uri"] == "" || p["code_verifier"] == "" {
		s.tokenError(w, http.StatusBadRequest, "invalid_request", "code, redirect_uri and code_verifier are required", clientID)
		return
	}
	now := s.opts.Now()
	s.mu.Lock()
	key := hashKey(p["code"])
	c, ok := s.codes[key]
	switch {
	case !ok || now.After(c.expires):
		delete(s.codes, key)
		s.mu.Unlock()
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", "the authorization code is invalid or expired", clientID)
		return
	case c.used:
		// A code presented twice may have been stolen: the tokens the
		// first exchange issued go too (RFC 6749 §4.1.2).
		s.revokeFamilyLocked(c.family)
		s.mu.Unlock()
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", "the authorization code was already used", clientID)
		return
	}
	// Any presentation uses the code up, right or wrong: a wrong verifier
	// must not leave it open to guessing. The family is fixed now so that a
	// replay racing this exchange revokes what it is about to issue.
	_, family := newSecret("devgrant_")
	c.used, c.family = true, family
	s.mu.Unlock()

	switch {
	case c.clientID != clientID:
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", "the code was issued to another client", clientID)
		return
	case c.redirectURI != p["redirect_uri"]:
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", "redirect_uri does not match the authorization request", clientID)
		return
	case !verifierMatches(p["code_verifier"], c.challenge):
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", "code_verifier does not match the code_challenge", clientID)
		return
	}
	resp, ok := s.issue(now, c.user, clientID, c.scope, family)
	if !ok {
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", "the authorization code was already used", clientID)
		return
	}
	s.log.Info("dev oauth tokens issued", "grant_type", "authorization_code", "username", c.user.Username, "client_id", clientID)
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) refreshGrant(w http.ResponseWriter, p map[string]string) {
	clientID := p["client_id"]
	if p["refresh_token"] == "" {
		s.tokenError(w, http.StatusBadRequest, "invalid_request", "refresh_token is required", clientID)
		return
	}
	now := s.opts.Now()
	key := hashKey(p["refresh_token"])
	s.mu.Lock()
	t, ok := s.refresh[key]
	switch {
	case !ok || now.After(t.expires):
		delete(s.refresh, key)
		s.mu.Unlock()
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", "the refresh token is invalid or expired", clientID)
		return
	case t.used:
		// Rotation: an old refresh token coming back means two holders of
		// one grant, so the whole grant is revoked.
		s.revokeFamilyLocked(t.family)
		s.reuses++
		s.mu.Unlock()
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", "the refresh token was already used (refresh tokens rotate)", clientID)
		return
	case t.clientID != clientID:
		s.mu.Unlock()
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", "the refresh token was issued to another client", clientID)
		return
	}
	t.used = true
	s.mu.Unlock()
	resp, ok := s.issue(now, t.user, clientID, t.scope, t.family)
	if !ok {
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", "the grant was revoked", clientID)
		return
	}
	s.log.Info("dev oauth tokens issued", "grant_type", "refresh_token", "username", t.user.Username, "client_id", clientID)
	writeJSON(w, http.StatusOK, resp)
}

// issue creates an access and a refresh token of one grant family. ok is
// false when the family was revoked meanwhile (a replay raced this grant).
func (s *Server) issue(now time.Time, u User, clientID, scope, family string) (resp TokenResponse, ok bool) {
	at, atKey := newSecret("devat_")
	rt, rtKey := newSecret("devrt_")
	s.mu.Lock()
	s.sweepLocked(now)
	if _, revoked := s.revoked[family]; revoked {
		s.mu.Unlock()
		return TokenResponse{}, false
	}
	s.access[atKey] = &token{user: u, clientID: clientID, scope: scope, expires: now.Add(s.opts.AccessTTL), family: family}
	s.refresh[rtKey] = &token{user: u, clientID: clientID, scope: scope, expires: now.Add(s.opts.RefreshTTL), family: family}
	s.mu.Unlock()
	return TokenResponse{
		AccessToken: at, RefreshToken: rt, TokenType: "Bearer",
		ExpiresIn: int64(s.opts.AccessTTL / time.Second), Scope: scope,
	}, true
}

func (s *Server) handleUserinfo(w http.ResponseWriter, r *http.Request) {
	u, ok := s.bearerUser(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, Userinfo{Sub: u.Subject, Email: u.Email, Name: u.Name})
}

// bearerUser checks the request's Bearer access token and returns its
// user; when the token is missing, unknown or expired it has answered 401.
func (s *Server) bearerUser(w http.ResponseWriter, r *http.Request) (User, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, _ := strings.Cut(h, " ")
	tok = strings.TrimSpace(tok)
	if !strings.EqualFold(scheme, "Bearer") || tok == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hangar-dev"`)
		writeJSON(w, http.StatusUnauthorized, ErrorResponse{Error: "invalid_request", Description: "a Bearer access token is required"})
		return User{}, false
	}
	now := s.opts.Now()
	key := hashKey(tok)
	s.mu.Lock()
	t, ok := s.access[key]
	if ok && now.After(t.expires) {
		delete(s.access, key)
		ok = false
	}
	var u User
	if ok {
		u = t.user
	}
	s.mu.Unlock()
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hangar-dev", error="invalid_token"`)
		writeJSON(w, http.StatusUnauthorized, ErrorResponse{Error: "invalid_token", Description: "the access token is invalid or expired"})
		return User{}, false
	}
	return u, true
}
