// Package httpapi is hangar's HTTP API: routes, authentication, rate limits,
// request logging and metrics, error mapping, server-sent events.
package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// Options configure a Server.
type Options struct {
	Store   store.Store
	Events  *events.Bus
	Log     *slog.Logger
	Version string
	// RateLimit requests per RateWindow, per API key or client address.
	RateLimit  int
	RateWindow time.Duration
	// MaxBodyBytes caps JSON request bodies.
	MaxBodyBytes int64
	// MaxStreamsPerUser bounds one user's open event streams (default 16).
	MaxStreamsPerUser int
	// BodyReadTimeout bounds reading one request body (default 60 s, plus
	// a second per 256 KiB of the route's body limit); see body.go.
	BodyReadTimeout time.Duration
	// MaxFileBytes caps file uploads (default DefaultMaxFileBytes).
	MaxFileBytes int64
	// Registry receives the HTTP metrics; nil makes a private one with the
	// Go runtime and process collectors.
	Registry *prometheus.Registry
	// Root serves every path no other route claims (the dashboard); nil
	// answers a JSON 404.
	Root http.Handler
}

// Server serves the API. Build it with New, mount Handler, and call
// Shutdown-related hooks through Close.
type Server struct {
	opts    Options
	log     *slog.Logger
	limiter *limiter
	streams *streamCounter
	reg     *prometheus.Registry
	mux     *http.ServeMux

	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	// closing is closed when the daemon begins shutting down, so that
	// long-lived streams (SSE) end and let in-flight requests drain.
	closing chan struct{}
}

// New builds the server and its routes.
func New(o Options) *Server {
	reg := o.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	s := &Server{
		opts:    o,
		log:     o.Log,
		limiter: newLimiter(o.RateLimit, o.RateWindow),
		streams: newStreamCounter(o.MaxStreamsPerUser),
		reg:     reg,
		mux:     http.NewServeMux(),
		closing: make(chan struct{}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hangar_http_requests_total",
			Help: "HTTP requests by route pattern, method and status.",
		}, []string{"route", "method", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hangar_http_request_duration_seconds",
			Help:    "HTTP request latency by route pattern, method and status.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route", "method", "status"}),
	}
	reg.MustRegister(s.requests, s.latency)
	s.routes()
	if o.Events != nil {
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-s.closing; cancel() }()
		go o.Events.Poll(ctx, ssePoll)
	}
	return s
}

// DefaultMaxFileBytes caps file uploads when Options.MaxFileBytes is 0.
const DefaultMaxFileBytes = 256 << 20

func (s *Server) maxFileBytes() int64 {
	if s.opts.MaxFileBytes > 0 {
		return s.opts.MaxFileBytes
	}
	return DefaultMaxFileBytes
}

// Registry is where subsystems register their own metrics.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Close ends long-lived streams; call it when shutdown begins.
func (s *Server) Close() {
	select {
	case <-s.closing:
	default:
		close(s.closing)
	}
}

// access says who may call a route.
type access int

const (
	public        access = iota // no key needed, not limited (health, metrics)
	publicLimited               // no key needed, limited per address (dev OAuth, live view, dashboard)
	authed                      // any valid key
	admin                       // a key of an admin user
)

// handlerFunc is a route's handler: it returns an error rather than writing
// one, so errors are mapped and logged in one place.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// route is one entry of the routing table.
type route struct {
	pattern string // net/http pattern with method, e.g. "GET /api/v1/me"
	access  access
	handler handlerFunc
}

func (s *Server) routes() {
	table := []route{
		{"GET /health", public, s.handleHealth},
		{"GET /metrics", public, s.handleMetrics},
		{"GET /api/v1/me", authed, s.handleMe},
		{"GET /api/v1/events", authed, s.handleEvents},
		{"POST /api/v1/users", admin, s.handleCreateUser},
		{"GET /api/v1/users", admin, s.handleListUsers},
		{"DELETE /api/v1/users/{id}", admin, s.handleDeleteUser},
	}
	for _, rt := range table {
		s.handle(rt)
	}
	s.mountKeys()
	s.mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &apiError{http.StatusNotFound, api.CodeNotFound, "no route for " + r.Method + " " + r.URL.Path})
	})
	if s.opts.Root == nil {
		s.opts.Root = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeError(w, &apiError{http.StatusNotFound, api.CodeNotFound, "no route for " + r.Method + " " + r.URL.Path})
		})
	}
	s.MountPublic("/", s.opts.Root)
}

// handle mounts a route behind the middleware chain: request id, logging,
// metrics, authentication, rate limiting, body limit.
func (s *Server) handle(rt route) { s.handleLimit(rt, s.opts.MaxBodyBytes) }

// handleLimit is handle with its own request body limit (uploads).
func (s *Server) handleLimit(rt route, maxBody int64) {
	path := rt.pattern
	if _, p, ok := strings.Cut(rt.pattern, " "); ok {
		path = p
	}
	s.mux.Handle(rt.pattern, s.wrap(path, rt.access, maxBody, rt.handler))
}

// Handler is the root http.Handler.
func (s *Server) Handler() http.Handler { return s.mux }

type ctxKey int

const (
	ctxUser ctxKey = iota
	ctxLog
	ctxKeyID // id of the API key the request authenticated with
)

// keyFrom returns the id of the API key the caller authenticated with.
func keyFrom(ctx context.Context) string {
	id, _ := ctx.Value(ctxKeyID).(string)
	return id
}

// userFrom returns the authenticated caller.
func userFrom(ctx context.Context) store.User {
	u, _ := ctx.Value(ctxUser).(store.User)
	return u
}

// logFrom returns the request-scoped logger (it carries request_id).
func logFrom(ctx context.Context, fallback *slog.Logger) *slog.Logger {
	if l, ok := ctx.Value(ctxLog).(*slog.Logger); ok {
		return l
	}
	return fallback
}

// statusWriter remembers the status for logs and metrics, and passes
// Flush through for SSE.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer (hijacking for
// websockets, deadlines for long streams).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (s *Server) wrap(path string, acc access, maxBody int64, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		reqID := r.Header.Get("X-Request-Id")
		if !validRequestID(reqID) {
			reqID = newRequestID()
		}
		rw.Header().Set("X-Request-Id", reqID)
		log := s.log.With("request_id", reqID)
		w := &statusWriter{ResponseWriter: rw}
		ctx := context.WithValue(r.Context(), ctxLog, log)
		r = r.WithContext(ctx)

		err := s.authorize(w, r, acc, &r)
		if err == nil {
			r.Body = &timedBody{ReadCloser: http.MaxBytesReader(w, r.Body, maxBody), rc: http.NewResponseController(w), budget: s.bodyTimeout(maxBody)}
			err = h(w, r)
		}
		if err != nil {
			ae := toAPIError(err)
			if ae.status >= 500 {
				log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			if w.status == 0 {
				writeError(w, ae)
			}
		}
		status := w.status
		if status == 0 {
			status = http.StatusOK
		}
		d := time.Since(start)
		st := strconv.Itoa(status)
		s.requests.WithLabelValues(path, r.Method, st).Inc()
		s.latency.WithLabelValues(path, r.Method, st).Observe(d.Seconds())
		// The request-scoped logger carries user_id once authenticated.
		logFrom(r.Context(), log).Info("request", "method", r.Method, "path", r.URL.Path, "status", status,
			"duration_ms", d.Milliseconds(), "remote", clientAddr(r))
	})
}

// authorize authenticates the bearer key (when the route needs one), applies
// the rate limit, and checks the role. On success *rp carries the user.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, acc access, rp **http.Request) error {
	if acc == public {
		// Health and metrics are probes; limiting them would make a busy
		// monitor look like an outage.
		return nil
	}
	if acc == publicLimited {
		d := s.limiter.allow("addr:" + clientAddr(r))
		s.limiter.setHeaders(w, d)
		if !d.ok {
			return s.rateLimited(w, d.reset)
		}
		return nil
	}
	key, hasKey := bearer(r)
	// An address that sent a window's worth of missing or wrong keys is
	// refused before its key is looked up, so guessing keys costs the
	// store nothing once limited. (Only failures count here: anonymous
	// dashboard loads from a shared address must not lock out its users.)
	failKey := "authfail:" + clientAddr(r)
	if over, reset := s.limiter.exhausted(failKey); over {
		return s.rateLimited(w, reset)
	}
	var user store.User
	var keyID string
	var authErr error
	if !hasKey {
		authErr = errorf(http.StatusUnauthorized, api.CodeUnauthenticated, "missing API key: send Authorization: Bearer <key>")
	} else {
		k, u, err := s.opts.Store.LookupAPIKey(r.Context(), HashKey(key))
		switch {
		case err == nil:
			user, keyID = u, k.ID
		case isNotFound(err):
			authErr = errorf(http.StatusUnauthorized, api.CodeUnauthenticated, "invalid API key")
		default:
			return err
		}
	}
	// Authenticated callers are limited per key (user); everyone else per
	// address, so guessing keys is limited too.
	limitKey := "addr:" + clientAddr(r)
	if authErr == nil {
		limitKey = "user:" + user.ID
	}
	if authErr != nil {
		s.limiter.allow(failKey)
	}
	d := s.limiter.allow(limitKey)
	s.limiter.setHeaders(w, d)
	if !d.ok {
		return s.rateLimited(w, d.reset)
	}
	if authErr != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hangar"`)
		return authErr
	}
	if acc == admin && user.Role != store.RoleAdmin {
		return errorf(http.StatusForbidden, api.CodeForbidden, "this needs an admin key")
	}
	ctx := context.WithValue(r.Context(), ctxUser, user)
	ctx = context.WithValue(ctx, ctxKeyID, keyID)
	ctx = context.WithValue(ctx, ctxLog, logFrom(ctx, s.log).With("user_id", user.ID))
	*rp = r.WithContext(ctx)
	return nil
}

// rateLimited is the 429 of a caller whose window resets in reset.
func (s *Server) rateLimited(w http.ResponseWriter, reset time.Duration) error {
	secs := seconds(reset)
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	return errorf(http.StatusTooManyRequests, api.CodeRateLimited, "rate limit of %d requests per %s exceeded; retry in %ds", s.limiter.limit, s.limiter.window, secs)
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, key, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(key) == "" {
		return "", false
	}
	return strings.TrimSpace(key), true
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) error {
	if err := s.opts.Store.Ping(r.Context()); err != nil {
		logFrom(r.Context(), s.log).Error("health: store unreachable", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, api.Health{Status: "store unreachable", Version: s.opts.Version, Store: s.opts.Store.Dialect()})
		return nil
	}
	writeJSON(w, http.StatusOK, api.Health{Status: "ok", Version: s.opts.Version, Store: s.opts.Store.Dialect()})
	return nil
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) error {
	promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
	return nil
}
