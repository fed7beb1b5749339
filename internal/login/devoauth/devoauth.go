// Package devoauth is hangar's built-in OAuth 2.0 authorization server for
// the "dev" provider: the authorization-code grant with PKCE (S256 only),
// refresh tokens that rotate, and a userinfo endpoint. It lets the whole
// browser-login flow run offline, for demos and tests, with a real browser
// filling in a real login form.
//
// It is a development provider: its users are configured (by default one
// demo user, DemoUsername / DemoPassword, a documented demo credential and
// not a secret), and codes and tokens live in memory only, so a daemon
// restart logs everyone out of it. Tokens are stored as SHA-256 hashes.
//
// Endpoints, relative to Options.Prefix (the daemon mounts it at
// /dev-oauth):
//
//	GET  /authorize   client_id, redirect_uri, response_type=code, state,
//	                  code_challenge, code_challenge_method=S256, scope
//	                  → login form → consent page → redirect with code & state
//	POST /login       the login form (internal to the flow)
//	POST /consent     the consent form (internal to the flow)
//	POST /token       grant_type=authorization_code | refresh_token
//	                  (form-encoded or JSON body)
//	GET  /userinfo    Authorization: Bearer → {"sub","email","name"}
//	GET  /code        shows a code for CLIs whose redirect_uri is this page
//	                  (paste mode)
//	GET  /.well-known/oauth-authorization-server   RFC 8414 metadata
//	POST /v1/complete Authorization: Bearer, {"prompt","model"} → the dev
//	                  model's answer streamed as NDJSON (model.go)
//
// redirect_uri must be a loopback http URL with an explicit port
// (http://127.0.0.1:<port>/…, http://localhost:<port>/… or
// http://[::1]:<port>/…), or this server's own /code page.
package devoauth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The demo account every dev server accepts unless Options.Users says
// otherwise. It is a documented demo credential, not a secret.
const (
	DemoUsername = "demo"
	DemoPassword = "hangar-demo"
	DemoEmail    = "demo@hangar.dev"
	DemoName     = "Hangar Demo"
)

// DefaultClientID is the client id of hangar-devcli.
const DefaultClientID = "hangar-devcli"

// Defaults for Options' lifetimes.
const (
	DefaultCodeTTL    = 60 * time.Second
	DefaultAccessTTL  = time.Hour
	DefaultRefreshTTL = 30 * 24 * time.Hour
	// DefaultRequestTTL bounds how long a user may sit on the login and
	// consent pages.
	DefaultRequestTTL = 10 * time.Minute
)

// maxLoginFailures is how many wrong passwords one authorization request
// tolerates before it ends with access_denied.
const maxLoginFailures = 5

// User is an account of the dev provider.
type User struct {
	Username string
	Password string
	Subject  string // "sub" in userinfo; defaults to "dev|" + Username
	Email    string
	Name     string
}

// DemoUser is the default account.
func DemoUser() User {
	return User{Username: DemoUsername, Password: DemoPassword, Subject: "dev|" + DemoUsername, Email: DemoEmail, Name: DemoName}
}

// Options configure a Server. The zero value is usable: the server answers
// at the root with the demo user and accepts any client id.
type Options struct {
	// Prefix is the path the handler is mounted at, e.g. "/dev-oauth".
	// Requests reach the handler with the prefix still in their path
	// (mux.Handle("/dev-oauth/", srv), no StripPrefix), and the pages'
	// forms post back under it.
	Prefix string
	// BaseURL is the externally visible URL of Prefix, e.g.
	// "http://10.0.2.2:4000/dev-oauth", used in the metadata document and
	// to recognise the /code page as a redirect_uri. Empty: derived from
	// each request's Host.
	BaseURL string
	// Users who can sign in; empty means DemoUser alone.
	Users []User
	// Clients maps known client ids to display names. Nil accepts any
	// client id and shows the id itself.
	Clients map[string]string
	// Lifetimes; zero means the Default* constant.
	CodeTTL, AccessTTL, RefreshTTL, RequestTTL time.Duration
	// Now is the clock (tests move it); nil means time.Now.
	Now func() time.Time
	// Log receives one line per login, grant and refusal, never a code,
	// token or password. Nil discards.
	Log *slog.Logger
}

// Server is the dev OAuth authorization server. It is an http.Handler.
type Server struct {
	opts   Options
	prefix string
	users  map[string]User
	log    *slog.Logger
	mux    *http.ServeMux

	mu        sync.Mutex              // guards requests, codes, access, refresh, revoked, lastSweep
	requests  map[string]*authRequest // by SHA-256 of the request id
	codes     map[string]*authCode    // by SHA-256 of the code
	access    map[string]*token       // by SHA-256 of the access token
	refresh   map[string]*token       // by SHA-256 of the refresh token
	revoked   map[string]time.Time    // revoked grant families, until when to remember them
	lastSweep time.Time
	// reuses counts refresh tokens presented a second time (each one
	// revoked its grant): hangar's single-writer leases exist so that
	// this stays zero.
	reuses int
}

// authRequest is an /authorize call in progress: the user is on the login
// or consent page. Its id travels in a hidden form field.
type authRequest struct {
	clientID, redirectURI, state, challenge, scope string
	user                                           *User // set once the password was right
	failures                                       int
	expires                                        time.Time
}

type authCode struct {
	clientID, redirectURI, challenge, scope string
	user                                    User
	expires                                 time.Time
	used                                    bool
	family                                  string // grant the code produced, revoked on reuse
}

// token is an access or refresh token. Tokens from one authorization (the
// first exchange and every refresh after it) share a family, so a replayed
// code or refresh token revokes them all.
type token struct {
	user     User
	clientID string
	scope    string
	expires  time.Time
	family   string
	used     bool // refresh tokens: already exchanged (rotation)
}

// New returns a dev OAuth server.
func New(opts Options) *Server {
	if opts.CodeTTL <= 0 {
		opts.CodeTTL = DefaultCodeTTL
	}
	if opts.AccessTTL <= 0 {
		opts.AccessTTL = DefaultAccessTTL
	}
	if opts.RefreshTTL <= 0 {
		opts.RefreshTTL = DefaultRefreshTTL
	}
	if opts.RequestTTL <= 0 {
		opts.RequestTTL = DefaultRequestTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if len(opts.Users) == 0 {
		opts.Users = []User{DemoUser()}
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts.BaseURL = strings.TrimRight(opts.BaseURL, "/")
	s := &Server{
		opts:     opts,
		prefix:   strings.TrimRight(opts.Prefix, "/"),
		users:    map[string]User{},
		log:      log,
		mux:      http.NewServeMux(),
		requests: map[string]*authRequest{},
		codes:    map[string]*authCode{},
		access:   map[string]*token{},
		refresh:  map[string]*token{},
		revoked:  map[string]time.Time{},
	}
	if s.prefix != "" && !strings.HasPrefix(s.prefix, "/") {
		s.prefix = "/" + s.prefix
	}
	for _, u := range opts.Users {
		if u.Subject == "" {
			u.Subject = "dev|" + u.Username
		}
		s.users[u.Username] = u
	}
	p := s.prefix
	s.mux.HandleFunc("GET "+p+"/authorize", s.handleAuthorize)
	s.mux.HandleFunc("POST "+p+"/login", s.handleLogin)
	s.mux.HandleFunc("POST "+p+"/consent", s.handleConsent)
	s.mux.HandleFunc("POST "+p+"/token", s.handleToken)
	s.mux.HandleFunc("GET "+p+"/userinfo", s.handleUserinfo)
	s.mux.HandleFunc("GET "+p+"/code", s.handleCodePage)
	s.mux.HandleFunc("GET "+p+"/.well-known/oauth-authorization-server", s.handleMetadata)
	s.mux.HandleFunc("POST "+p+"/v1/complete", s.handleComplete)
	return s
}

// ServeHTTP serves the endpoints under Options.Prefix.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !limitRequest(w, r) {
		return
	}
	s.mux.ServeHTTP(w, r)
}

// BaseURL is the server's external URL for r: Options.BaseURL, or the
// scheme and host r arrived with plus the prefix.
func (s *Server) BaseURL(r *http.Request) string {
	if s.opts.BaseURL != "" {
		return s.opts.BaseURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + s.prefix
}

func (s *Server) clientName(id string) (string, bool) {
	if s.opts.Clients == nil {
		return id, true
	}
	name, ok := s.opts.Clients[id]
	return name, ok
}

// checkPassword compares in constant time, and spends the same time on an
// unknown user, so the form does not reveal which usernames exist.
func (s *Server) checkPassword(username, password string) (User, bool) {
	u, ok := s.users[username]
	want := u.Password
	if !ok {
		want = "\x00no such user\x00"
	}
	match := subtle.ConstantTimeCompare([]byte(password), []byte(want)) == 1
	return u, ok && match
}

// newSecret returns a random URL-safe value with prefix (which says what
// the value is when one turns up where it should not) and its hash key.
func newSecret(prefix string) (value, key string) {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (panics instead)
	value = prefix + base64.RawURLEncoding.EncodeToString(b[:])
	return value, hashKey(value)
}

// hashKey is how codes and tokens are keyed in memory: a dump of the maps
// holds no usable credential.
func hashKey(v string) string {
	h := sha256.Sum256([]byte(v))
	return hex.EncodeToString(h[:])
}

// sweepLocked drops expired entries at most once a minute, so memory stays
// bounded by the live grants. s.mu must be held.
func (s *Server) sweepLocked(now time.Time) {
	if now.Sub(s.lastSweep) < time.Minute {
		return
	}
	s.lastSweep = now
	for k, v := range s.requests {
		if now.After(v.expires) {
			delete(s.requests, k)
		}
	}
	for k, v := range s.codes {
		if now.After(v.expires) {
			delete(s.codes, k)
		}
	}
	for _, m := range []map[string]*token{s.access, s.refresh} {
		for k, v := range m {
			if now.After(v.expires) {
				delete(m, k)
			}
		}
	}
	for f, until := range s.revoked {
		if now.After(until) {
			delete(s.revoked, f)
		}
	}
}

// revokeFamilyLocked deletes every token of a grant and remembers the
// grant as revoked, so an exchange racing the revocation issues nothing.
// s.mu must be held.
func (s *Server) revokeFamilyLocked(family string) {
	if family == "" {
		return
	}
	s.revoked[family] = s.opts.Now().Add(s.opts.RefreshTTL)
	for _, m := range []map[string]*token{s.access, s.refresh} {
		for k, v := range m {
			if v.family == family {
				delete(m, k)
			}
		}
	}
}
