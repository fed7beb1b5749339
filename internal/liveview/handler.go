// Package liveview serves the live view of a browser VM: a noVNC page and a
// websocket bridged to the VM's VNC server (x11vnc on 127.0.0.1:5900 inside
// the guest, reached over the agent link). The credential is a short-lived
// token bound to one login session and its owner (see Signer); the token,
// not the API key, authorizes every route here, so the routes are mounted
// outside the API's bearer authentication.
package liveview

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/liveview/webrtc"
	"github.com/hangar-vm/hangar/web/novnc"
)

// Prefix is the URL path under which Handler serves everything.
const Prefix = "/live/"

// Defaults for Options.
const (
	DefaultAliveInterval = 3 * time.Second
	DefaultMaxViewers    = 4
	DefaultDialTimeout   = 30 * time.Second
)

// Options configure the live-view handler.
type Options struct {
	// Signer verifies tokens; the same one the API issues them with.
	Signer *Signer
	// Dial opens the raw VNC byte stream of a session's VM (for a browser
	// VM: (*vm.Manager).DialPort(ctx, owner, vmID, 5900)). ctx bounds the
	// dial only; the connection must stay usable after Dial returns. The
	// bridge closes it.
	Dial func(ctx context.Context, sessionID string, claims Claims) (net.Conn, error)
	// Alive reports whether a login session can still be viewed. It is
	// asked before the page and the websocket are served and every
	// AliveInterval while a websocket is open; false ends the view.
	Alive func(ctx context.Context, sessionID string) bool
	// Log receives connect and disconnect records (never the token).
	Log *slog.Logger
	// AliveInterval is how often open views re-check Alive.
	AliveInterval time.Duration
	// MaxViewers caps concurrent websockets per session (x11vnc runs
	// -shared, so several viewers can watch at once).
	MaxViewers int
	// DialTimeout bounds Dial.
	DialTimeout time.Duration
	// OriginPatterns are extra hosts (as in websocket.AcceptOptions) whose
	// pages may open the websocket. The daemon's own origin is always
	// allowed; set this only when the viewer page is served from another
	// host name than the websocket (a reverse proxy rewriting Host).
	OriginPatterns []string
	// WebRTC, when set, serves /live/{session}/webrtc and makes the page
	// try WebRTC before noVNC.
	WebRTC *webrtc.Server
	// Metrics, when set, counts VNC views (transport="vnc").
	Metrics *webrtc.Metrics
}

// Server is the live-view handler. It serves, under Prefix:
//
//	GET /live/{session}?token=…[&view_only=1]  viewer page (HTML)
//	GET /live/{session}/ws?token=…[&view_only=1]  websocket ↔ VNC
//	GET /live/{session}/webrtc?token=…[&view_only=1]  WebRTC signalling
//	    websocket (when Options.WebRTC is set)
//	GET /live/novnc/…  vendored noVNC modules
//	GET /live/static/…  the viewer's own script and style
//	GET /live/v/{version}/novnc/…, /live/v/{version}/static/…  the same,
//	    cacheable for good (the page uses these)
//
// It implements http.Handler.
type Server struct {
	opts  Options
	log   *slog.Logger
	files map[string]staticFile
	// version is a hash of all static files: the page loads them under
	// /live/v/{version}/, so browsers may cache them for good and a new
	// build is fetched at once.
	version string
	page    *template.Template
	ctx     context.Context
	cancel  context.CancelCauseFunc

	// mu guards viewers and closed.
	mu      sync.Mutex
	viewers map[string]map[*bridge]struct{}
	closed  bool
	// wg counts running bridges so Close can wait for them.
	wg sync.WaitGroup
}

//go:embed assets
var assets embed.FS

// filesVersion names one build's set of static files, for the versioned
// URLs the page uses.
func filesVersion(files map[string]staticFile) string {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%s %s\n", n, files[n].etag)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

type staticFile struct {
	body  []byte
	ctype string
	etag  string
}

// Handler builds the live-view handler. Mount it at Prefix ("/live/"),
// without http.StripPrefix (it routes on the full path), outside bearer-key
// authentication; call Close when the daemon shuts down, because
// http.Server.Shutdown does not wait for hijacked (websocket) connections.
// Signer, Dial and Alive are required; Handler panics without them, as it
// would on any other wiring mistake found at start-up.
func Handler(opts Options) *Server {
	if opts.Signer == nil || opts.Dial == nil || opts.Alive == nil {
		panic("liveview: Options.Signer, Dial and Alive are required")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.AliveInterval <= 0 {
		opts.AliveInterval = DefaultAliveInterval
	}
	if opts.MaxViewers <= 0 {
		opts.MaxViewers = DefaultMaxViewers
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	s := &Server{
		opts:    opts,
		log:     opts.Log,
		files:   map[string]staticFile{},
		page:    template.Must(template.ParseFS(assets, "assets/viewer.html")),
		ctx:     ctx,
		cancel:  cancel,
		viewers: map[string]map[*bridge]struct{}{},
	}
	// Both trees are small and fixed at build time; reading them once gives
	// every file a content hash for ETag revalidation.
	s.loadFiles(novnc.FS, ".", "novnc/")
	s.loadFiles(assets, "assets", "static/")
	// The page is a template, served only through servePage.
	delete(s.files, "static/viewer.html")
	s.version = filesVersion(s.files)
	return s
}

func (s *Server) loadFiles(fsys fs.FS, root, urlPrefix string) {
	err := fs.WalkDir(fsys, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		rel := strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
		s.files[urlPrefix+rel] = staticFile{body: body, ctype: contentType(p), etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	if err != nil {
		// The trees are embedded in the binary; failing to read them is a
		// build defect, not a runtime condition.
		panic(fmt.Sprintf("liveview: read embedded files: %v", err))
	}
}

// contentType is explicit for the types served here so that a host's
// /etc/mime.types cannot change what browsers get; ES modules must be
// served with a JavaScript type or the browser refuses to run them.
func contentType(name string) string {
	switch path.Ext(name) {
	case ".js":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".html":
		return "text/html; charset=utf-8"
	case ".txt", ".md", "":
		return "text/plain; charset=utf-8"
	}
	if t := mime.TypeByExtension(path.Ext(name)); t != "" {
		return t
	}
	return "application/octet-stream"
}

// Path is the viewer page's URL path with its token, e.g. for the API's
// live_view_url: "/live/{session}?token=…". Add "&view_only=1" to make a
// link that cannot send input even if the token allows it.
func Path(sessionID, token string) string {
	return Prefix + url.PathEscape(sessionID) + "?" + url.Values{"token": {token}}.Encode()
}

// validSession matches the session ids the handler accepts in a path.
var validSession = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$`)

// ServeHTTP routes requests under Prefix.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	rest, ok := strings.CutPrefix(r.URL.Path, Prefix)
	if !ok {
		http.NotFound(w, r)
		return
	}
	if strings.HasPrefix(rest, "novnc/") || strings.HasPrefix(rest, "static/") {
		s.serveFile(w, r, rest, false)
		return
	}
	if v, ok := strings.CutPrefix(rest, "v/"); ok {
		ver, name, _ := strings.Cut(v, "/")
		s.serveFile(w, r, name, ver == s.version)
		return
	}
	session, sub, _ := strings.Cut(rest, "/")
	if !validSession.MatchString(session) {
		http.NotFound(w, r)
		return
	}
	switch sub {
	case "":
		s.servePage(w, r, session)
	case "ws":
		s.serveWS(w, r, session)
	case "webrtc":
		s.serveWebRTC(w, r, session)
	default:
		http.NotFound(w, r)
	}
}

// serveFile serves an embedded file. immutable is for URLs carrying the
// current version, whose content can never change.
func (s *Server) serveFile(w http.ResponseWriter, r *http.Request, name string, immutable bool) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	f, ok := s.files[name]
	if !ok {
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	h.Set("Content-Type", f.ctype)
	h.Set("ETag", f.etag)
	if immutable {
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		// Unversioned URLs revalidate every time (cheap, 304) so a daemon
		// upgrade that changes noVNC is picked up at once.
		h.Set("Cache-Control", "no-cache")
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
}

// authorize checks the token and that the session is still alive. It
// writes the refusal itself and returns ok=false when the request must
// stop. The effective view-only flag is the token's, or true when the
// query asks for it: the query can only restrict, never widen.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, session string, page bool) (Claims, bool, bool) {
	q := r.URL.Query()
	claims, err := s.opts.Signer.Verify(q.Get("token"), session)
	if err != nil {
		msg := "this live-view link is not valid"
		if errors.Is(err, ErrExpiredToken) {
			msg = "this live-view link has expired; open the login session again to get a new one"
		}
		s.log.Info("live view refused", "session_id", session, "reason", err.Error(), "remote", remoteHost(r))
		s.refuse(w, page, http.StatusForbidden, msg)
		return Claims{}, false, false
	}
	if !s.opts.Alive(r.Context(), session) {
		s.refuse(w, page, http.StatusGone, "this login session has ended")
		return Claims{}, false, false
	}
	viewOnly := claims.ViewOnly || isTrue(q.Get("view_only"))
	return claims, viewOnly, true
}

func isTrue(v string) bool {
	switch strings.ToLower(v) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

func (s *Server) refuse(w http.ResponseWriter, page bool, status int, msg string) {
	w.Header().Set("Cache-Control", "no-store")
	if !page {
		http.Error(w, msg, status)
		return
	}
	s.setPageHeaders(w, nil)
	w.WriteHeader(status)
	_ = s.page.Execute(w, pageData{Version: s.version, Error: msg})
}

// pageData fills assets/viewer.html.
type pageData struct {
	Version  string
	Session  string
	ViewOnly bool
	WebRTC   bool
	Error    string
}

func (s *Server) servePage(w http.ResponseWriter, r *http.Request, session string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	_, viewOnly, ok := s.authorize(w, r, session, true)
	if !ok {
		return
	}
	s.setPageHeaders(w, r)
	w.Header().Set("Cache-Control", "no-store")
	if r.Method == http.MethodHead {
		return
	}
	if err := s.page.Execute(w, pageData{Version: s.version, Session: session, ViewOnly: viewOnly, WebRTC: s.opts.WebRTC != nil}); err != nil {
		s.log.Debug("live view page write failed", "session_id", session, "err", err)
	}
}

// hostPattern is what a Host header may look like to be echoed into the
// Content-Security-Policy.
var hostPattern = regexp.MustCompile(`^[A-Za-z0-9.\-\[\]:]+$`)

// setPageHeaders locks the page down to its own origin: no third-party
// resources, no referrer (the URL carries the token), framing only by the
// daemon's own pages (the dashboard embeds the view).
func (s *Server) setPageHeaders(w http.ResponseWriter, r *http.Request) {
	connect := "'self'"
	if r != nil && hostPattern.MatchString(r.Host) {
		// Older browsers do not let 'self' cover ws: and wss:.
		connect += " ws://" + r.Host + " wss://" + r.Host
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "+
		"img-src 'self' data: blob:; connect-src "+connect+"; object-src 'none'; base-uri 'none'; "+
		"form-action 'none'; frame-ancestors 'self'")
}

// Close ends every open view (the browser sees close code 1001 and may
// retry) and waits for the bridges to finish. New websockets are refused.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel(errShuttingDown)
	s.wg.Wait()
}

// EndSession closes every open view of a session at once (close code 4000,
// "login session ended"); call it when a session completes, fails or is
// cancelled so viewers do not wait for the next Alive check.
func (s *Server) EndSession(sessionID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for b := range s.viewers[sessionID] {
		b.end(errSessionEnded)
	}
}

// Viewers returns how many websockets are open for a session.
func (s *Server) Viewers(sessionID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.viewers[sessionID])
}

func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
