package devoauth

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// loopbackRedirect reports whether raw is an acceptable native-app redirect
// (RFC 8252 §7.3): http, a loopback host, an explicit port, no fragment and
// no user info.
func loopbackRedirect(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return false
	}
	switch u.Hostname() {
	case "127.0.0.1", "localhost", "::1":
	default:
		return false
	}
	port, err := strconv.Atoi(u.Port())
	return err == nil && port > 0 && port < 65536
}

// validRedirect accepts a loopback redirect, or this server's own /code page
// (paste mode: the browser shows the code and the user types it into the CLI).
func (s *Server) validRedirect(r *http.Request, raw string) bool {
	if loopbackRedirect(raw) {
		return true
	}
	return raw == s.BaseURL(r)+"/code"
}

// validChallenge checks an S256 challenge: base64url of 32 bytes, no padding.
func validChallenge(c string) bool {
	b, err := base64.RawURLEncoding.DecodeString(c)
	return err == nil && len(b) == 32
}

// redirectWith sends the browser back to the client with params added to
// redirectURI's query. 303 turns the POST of the consent form into a GET.
func redirectWith(w http.ResponseWriter, r *http.Request, redirectURI string, params url.Values) {
	u, err := url.Parse(redirectURI)
	if err != nil {
		// validRedirect parsed it already; this cannot happen.
		http.Error(w, "bad redirect_uri", http.StatusBadRequest)
		return
	}
	q := u.Query()
	for k, vs := range params {
		for _, v := range vs {
			q.Add(k, v)
		}
	}
	u.RawQuery = q.Encode()
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, u.String(), http.StatusSeeOther)
}

// redirectError ends a flow with an OAuth error at the client's redirect.
func redirectError(w http.ResponseWriter, r *http.Request, redirectURI, state, code, desc string) {
	p := url.Values{"error": {code}}
	if desc != "" {
		p.Set("error_description", desc)
	}
	if state != "" {
		p.Set("state", state)
	}
	redirectWith(w, r, redirectURI, p)
}

func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	clientID, redirectURI, state := q.Get("client_id"), q.Get("redirect_uri"), q.Get("state")
	// Until client and redirect are known good, errors go to the user,
	// never to the redirect (RFC 6749 §4.1.2.1): an open redirector would
	// otherwise be one bad link away.
	name, known := s.clientName(clientID)
	if clientID == "" || !known {
		s.log.Info("dev oauth authorize refused", "reason", "unknown client", "client_id", clientID)
		s.errorPage(w, http.StatusBadRequest, "Unknown application", "The client_id of this login link is missing or not registered with this server.")
		return
	}
	if redirectURI == "" || !s.validRedirect(r, redirectURI) {
		s.log.Info("dev oauth authorize refused", "reason", "redirect_uri not loopback", "client_id", clientID)
		s.errorPage(w, http.StatusBadRequest, "Invalid redirect address",
			"redirect_uri must be a loopback address with a port, such as http://127.0.0.1:1455/auth/callback or http://localhost:1455/callback.")
		return
	}
	fail := func(code, desc string) {
		s.log.Info("dev oauth authorize refused", "reason", desc, "client_id", clientID)
		redirectError(w, r, redirectURI, state, code, desc)
	}
	switch {
	case q.Get("response_type") != "code":
		fail("unsupported_response_type", "response_type must be code")
		return
	case state == "":
		fail("invalid_request", "state is required")
		return
	case q.Get("code_challenge_method") != "S256":
		fail("invalid_request", "code_challenge_method must be S256 (plain is not accepted)")
		return
	case !validChallenge(q.Get("code_challenge")):
		fail("invalid_request", "code_challenge must be the base64url SHA-256 of the code verifier")
		return
	}
	id, key := newSecret("devreq_")
	now := s.opts.Now()
	s.mu.Lock()
	s.sweepLocked(now)
	if s.pendingFullLocked() {
		s.mu.Unlock()
		s.log.Warn("dev oauth authorize refused", "reason", "too many pending authorizations", "limit", maxPending)
		s.errorPage(w, http.StatusServiceUnavailable, "Too many logins in progress",
			"Too many sign-ins are waiting to be completed. Try again in a few minutes.")
		return
	}
	s.requests[key] = &authRequest{
		clientID: clientID, redirectURI: redirectURI, state: state,
		challenge: q.Get("code_challenge"), scope: q.Get("scope"),
		expires: now.Add(s.opts.RequestTTL),
	}
	s.mu.Unlock()
	s.renderLogin(w, http.StatusOK, loginData{Action: s.prefix + "/login", Request: id, Client: name})
}

// lookupRequest finds the live request named by the form's "request" field.
func (s *Server) lookupRequest(r *http.Request) (*authRequest, string, bool) {
	id := r.PostFormValue("request")
	if id == "" {
		return nil, "", false
	}
	key := hashKey(id)
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ar, ok := s.requests[key]
	if !ok || now.After(ar.expires) {
		delete(s.requests, key)
		return nil, "", false
	}
	return ar, key, true
}

func (s *Server) expiredPage(w http.ResponseWriter) {
	s.errorPage(w, http.StatusBadRequest, "This login has expired",
		"Start the login again from your command line tool.")
}

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	ar, key, ok := s.lookupRequest(r)
	if !ok {
		s.expiredPage(w)
		return
	}
	name, _ := s.clientName(ar.clientID)
	username := strings.TrimSpace(r.PostFormValue("username"))
	u, good := s.checkPassword(username, r.PostFormValue("password"))
	if !good {
		s.mu.Lock()
		ar.failures++
		failures := ar.failures
		tooMany := failures >= maxLoginFailures
		if tooMany {
			delete(s.requests, key)
		}
		s.mu.Unlock()
		s.log.Info("dev oauth login failed", "username", username, "client_id", ar.clientID, "failures", failures)
		if tooMany {
			redirectError(w, r, ar.redirectURI, ar.state, "access_denied", "too many failed sign-in attempts")
			return
		}
		s.renderLogin(w, http.StatusUnauthorized, loginData{
			Action: s.prefix + "/login", Request: r.PostFormValue("request"), Client: name,
			Username: username, Error: "Wrong username or password. Try again.",
		})
		return
	}
	s.mu.Lock()
	ar.user = &u
	s.mu.Unlock()
	s.log.Info("dev oauth login", "username", u.Username, "client_id", ar.clientID)
	s.renderConsent(w, consentData{
		Action: s.prefix + "/consent", Request: r.PostFormValue("request"), Client: name,
		Email: u.Email, Scopes: strings.Fields(ar.scope),
	})
}

func (s *Server) handleConsent(w http.ResponseWriter, r *http.Request) {
	ar, key, ok := s.lookupRequest(r)
	if !ok {
		s.expiredPage(w)
		return
	}
	s.mu.Lock()
	user := ar.user
	if user != nil {
		delete(s.requests, key) // one decision per request
	}
	s.mu.Unlock()
	if user == nil {
		s.errorPage(w, http.StatusBadRequest, "Sign in first", "This request has not been signed in yet.")
		return
	}
	if r.PostFormValue("decision") != "allow" {
		s.log.Info("dev oauth consent denied", "username", user.Username, "client_id", ar.clientID)
		redirectError(w, r, ar.redirectURI, ar.state, "access_denied", "the user denied access")
		return
	}
	code, ckey := newSecret("devac_")
	now := s.opts.Now()
	s.mu.Lock()
	s.sweepLocked(now)
	s.codes[ckey] = &authCode{
		clientID: ar.clientID, redirectURI: ar.redirectURI, challenge: ar.challenge,
		scope: ar.scope, user: *user, expires: now.Add(s.opts.CodeTTL),
	}
	s.mu.Unlock()
	s.log.Info("dev oauth code issued", "username", user.Username, "client_id", ar.clientID)
	redirectWith(w, r, ar.redirectURI, url.Values{"code": {code}, "state": {ar.state}})
}

func (s *Server) handleCodePage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if e := q.Get("error"); e != "" {
		s.errorPage(w, http.StatusOK, "Login not completed", "The login ended with: "+e+". Start it again from your command line tool.")
		return
	}
	code := q.Get("code")
	if code == "" {
		s.errorPage(w, http.StatusBadRequest, "No code", "This page shows the code of a finished login; there is none in this address.")
		return
	}
	s.renderCode(w, codeData{Code: code + "#" + q.Get("state")})
}

// metadata is the RFC 8414 document, so clients can find the endpoints.
type metadata struct {
	Issuer                            string   `json:"issuer"`
	AuthorizationEndpoint             string   `json:"authorization_endpoint"`
	TokenEndpoint                     string   `json:"token_endpoint"`
	UserinfoEndpoint                  string   `json:"userinfo_endpoint"`
	ResponseTypesSupported            []string `json:"response_types_supported"`
	GrantTypesSupported               []string `json:"grant_types_supported"`
	CodeChallengeMethodsSupported     []string `json:"code_challenge_methods_supported"`
	TokenEndpointAuthMethodsSupported []string `json:"token_endpoint_auth_methods_supported"`
}

func (s *Server) handleMetadata(w http.ResponseWriter, r *http.Request) {
	base := s.BaseURL(r)
	writeJSON(w, http.StatusOK, metadata{
		Issuer:                            base,
		AuthorizationEndpoint:             base + "/authorize",
		TokenEndpoint:                     base + "/token",
		UserinfoEndpoint:                  base + "/userinfo",
		ResponseTypesSupported:            []string{"code"},
		GrantTypesSupported:               []string{"authorization_code", "refresh_token"},
		CodeChallengeMethodsSupported:     []string{"S256"},
		TokenEndpointAuthMethodsSupported: []string{"none"},
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
