package devoauth

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a settable time source for the server.
type clock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// lockedBuffer collects the server's log lines so tests can check that no
// secret was logged.
type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// callback is a client's loopback listener: it records what the browser
// was redirected to.
type callback struct {
	*httptest.Server
	mu  sync.Mutex // guards got
	got []url.Values
}

func newCallback(t *testing.T) *callback {
	cb := &callback{}
	cb.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cb.mu.Lock()
		cb.got = append(cb.got, r.URL.Query())
		cb.mu.Unlock()
		io.WriteString(w, "callback received")
	}))
	t.Cleanup(cb.Close)
	return cb
}

func (cb *callback) last(t *testing.T) url.Values {
	t.Helper()
	cb.mu.Lock()
	defer cb.mu.Unlock()
	if len(cb.got) == 0 {
		t.Fatal("the callback was never called")
	}
	return cb.got[len(cb.got)-1]
}

func (cb *callback) calls() int { cb.mu.Lock(); defer cb.mu.Unlock(); return len(cb.got) }

type env struct {
	t     *testing.T
	srv   *Server
	ts    *httptest.Server
	base  string // URL of the prefix
	clk   *clock
	logs  *lockedBuffer
	cb    *callback
	redir string
	http  *http.Client
}

func newEnv(t *testing.T, opts Options) *env {
	e := &env{t: t, clk: &clock{now: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}, logs: &lockedBuffer{}}
	opts.Prefix = "/dev-oauth"
	opts.Now = e.clk.Now
	opts.Log = slog.New(slog.NewTextHandler(e.logs, nil))
	e.srv = New(opts)
	mux := http.NewServeMux()
	// Mounted the way the daemon mounts it: the prefix stays in the path.
	mux.Handle("/dev-oauth/", e.srv)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "daemon route", http.StatusTeapot) })
	e.ts = httptest.NewServer(mux)
	t.Cleanup(e.ts.Close)
	e.base = e.ts.URL + "/dev-oauth"
	e.cb = newCallback(t)
	e.redir = e.cb.URL + "/auth/callback"
	e.http = &http.Client{Timeout: 10 * time.Second}
	t.Cleanup(func() {
		// Whatever the test did, no code, token or password was logged.
		logs := e.logs.String()
		for _, bad := range []string{"devac_", "devat_", "devrt_", "devreq_", DemoPassword} {
			if strings.Contains(logs, bad) {
				t.Errorf("server log contains %q:\n%s", bad, logs)
			}
		}
	})
	return e
}

type pkce struct{ verifier, challenge string }

func newPKCE(t *testing.T) pkce {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	v := base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(v))
	return pkce{v, base64.RawURLEncoding.EncodeToString(sum[:])}
}

func (e *env) authorizeURL(p pkce, state string, mod func(url.Values)) string {
	q := url.Values{
		"client_id": {DefaultClientID}, "redirect_uri": {e.redir}, "response_type": {"code"},
		"state": {state}, "code_challenge": {p.challenge}, "code_challenge_method": {"S256"},
		"scope": {"openid email profile offline_access"},
	}
	if mod != nil {
		mod(q)
	}
	return e.base + "/authorize?" + q.Encode()
}

func (e *env) do(req *http.Request) (*http.Response, string) {
	e.t.Helper()
	resp, err := e.http.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func (e *env) get(u string) (*http.Response, string) {
	req, _ := http.NewRequest("GET", u, nil)
	return e.do(req)
}

func (e *env) postForm(u string, v url.Values) (*http.Response, string) {
	req, _ := http.NewRequest("POST", u, strings.NewReader(v.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return e.do(req)
}

var (
	requestRE = regexp.MustCompile(`name="request" value="([^"]+)"`)
	actionRE  = regexp.MustCompile(`<form method="post" action="([^"]+)"`)
)

// form pulls the action and hidden request id out of a page, as a browser
// would submit them.
func (e *env) form(page string) (action, request string) {
	e.t.Helper()
	a, r := actionRE.FindStringSubmatch(page), requestRE.FindStringSubmatch(page)
	if a == nil || r == nil {
		e.t.Fatalf("no form in page:\n%s", page)
	}
	return e.ts.URL + a[1], r[1]
}

// login runs authorize → login → consent(decision) and returns the final
// response (the callback's, since the client follows the redirect).
func (e *env) login(p pkce, state, decision string) *http.Response {
	e.t.Helper()
	resp, page := e.get(e.authorizeURL(p, state, nil))
	if resp.StatusCode != 200 {
		e.t.Fatalf("authorize = %d:\n%s", resp.StatusCode, page)
	}
	action, req := e.form(page)
	resp, page = e.postForm(action, url.Values{"request": {req}, "username": {DemoUsername}, "password": {DemoPassword}})
	if resp.StatusCode != 200 || !strings.Contains(page, "Allow "+DefaultClientID+" to access your account?") {
		e.t.Fatalf("login = %d:\n%s", resp.StatusCode, page)
	}
	action, req = e.form(page)
	resp, _ = e.postForm(action, url.Values{"request": {req}, "decision": {decision}})
	return resp
}

func (e *env) token(v url.Values) (int, map[string]any) {
	e.t.Helper()
	resp, body := e.postForm(e.base+"/token", v)
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		e.t.Fatalf("token response is not JSON (%d): %s", resp.StatusCode, body)
	}
	if resp.Header.Get("Cache-Control") != "no-store" {
		e.t.Fatal("token response is cacheable")
	}
	return resp.StatusCode, m
}

func (e *env) exchange(code string, p pkce) (int, map[string]any) {
	return e.token(url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {e.redir},
		"client_id": {DefaultClientID}, "code_verifier": {p.verifier}})
}

func (e *env) userinfo(tok string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.base+"/userinfo", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, body := e.do(req)
	var m map[string]any
	_ = json.Unmarshal([]byte(body), &m)
	return resp.StatusCode, m
}

func wantOAuthError(t *testing.T, status int, m map[string]any, wantStatus int, wantErr string) {
	t.Helper()
	if status != wantStatus || m["error"] != wantErr {
		t.Fatalf("got %d %v, want %d error=%s", status, m, wantStatus, wantErr)
	}
	if _, ok := m["access_token"]; ok {
		t.Fatal("an error response carries an access token")
	}
}

// code completes a login and returns the code the callback received.
func (e *env) code(p pkce, state string) string {
	e.t.Helper()
	resp := e.login(p, state, "allow")
	if resp.StatusCode != 200 {
		e.t.Fatalf("callback answered %d", resp.StatusCode)
	}
	q := e.cb.last(e.t)
	if q.Get("state") != state || q.Get("code") == "" || q.Get("error") != "" {
		e.t.Fatalf("callback got %v", q)
	}
	return q.Get("code")
}

func TestFullFlow(t *testing.T) {
	e := newEnv(t, Options{})
	p := newPKCE(t)

	resp, page := e.get(e.authorizeURL(p, "st-1", nil))
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("authorize = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// Keyboard use through VNC: username focused first, then password,
	// then the submit button, in DOM (= Tab) order, with no tabindex games.
	iu := strings.Index(page, `id="username"`)
	ip := strings.Index(page, `id="password"`)
	is := strings.Index(page, `id="signin"`)
	if iu < 0 || ip < iu || is < ip || strings.Contains(page, "tabindex") {
		t.Fatalf("login form order wrong:\n%s", page)
	}
	if !regexp.MustCompile(`id="username"[^>]*autofocus`).MatchString(page) || !strings.Contains(page, `<label for="username">`) ||
		!strings.Contains(page, `<label for="password">`) || !strings.Contains(page, `type="submit" id="signin"`) {
		t.Fatalf("login form lacks autofocus, labels or a submit button:\n%s", page)
	}
	action, req := e.form(page)
	if !strings.HasPrefix(action, e.base+"/") {
		t.Fatalf("form posts outside the prefix: %s", action)
	}
	resp, page = e.postForm(action, url.Values{"request": {req}, "username": {DemoUsername}, "password": {DemoPassword}})
	if resp.StatusCode != 200 || !strings.Contains(page, "Allow hangar-devcli to access your account?") || !strings.Contains(page, DemoEmail) {
		t.Fatalf("consent page = %d:\n%s", resp.StatusCode, page)
	}
	ia, id := strings.Index(page, `id="allow"`), strings.Index(page, `id="deny"`)
	if ia < 0 || id < ia || !regexp.MustCompile(`id="allow"[^>]*autofocus`).MatchString(page) {
		t.Fatalf("Allow must come first and be focused:\n%s", page)
	}
	action, req = e.form(page)
	resp, body := e.postForm(action, url.Values{"request": {req}, "decision": {"allow"}})
	if resp.StatusCode != 200 || body != "callback received" {
		t.Fatalf("after consent: %d %q", resp.StatusCode, body)
	}
	q := e.cb.last(t)
	if q.Get("state") != "st-1" || !strings.HasPrefix(q.Get("code"), "devac_") {
		t.Fatalf("callback query = %v", q)
	}
	// The consent form cannot be submitted twice.
	resp, _ = e.postForm(action, url.Values{"request": {req}, "decision": {"allow"}})
	if resp.StatusCode != http.StatusBadRequest || e.cb.calls() != 1 {
		t.Fatalf("second consent = %d, callback calls %d", resp.StatusCode, e.cb.calls())
	}

	status, tok := e.exchange(q.Get("code"), p)
	if status != 200 || tok["token_type"] != "Bearer" || tok["expires_in"] != float64(3600) {
		t.Fatalf("exchange = %d %v", status, tok)
	}
	at, rt := tok["access_token"].(string), tok["refresh_token"].(string)
	if at == "" || rt == "" || at == rt {
		t.Fatal("exchange returned no or equal tokens")
	}
	status, ui := e.userinfo(at)
	if status != 200 || ui["email"] != DemoEmail || ui["sub"] != "dev|demo" || ui["name"] != DemoName {
		t.Fatalf("userinfo = %d %v", status, ui)
	}

	// Refresh with a JSON body, the way Codex sends it; the refresh token
	// rotates.
	rb, _ := json.Marshal(map[string]string{"grant_type": "refresh_token", "refresh_token": rt, "client_id": DefaultClientID})
	r2, _ := http.NewRequest("POST", e.base+"/token", bytes.NewReader(rb))
	r2.Header.Set("Content-Type", "application/json")
	resp, body = e.do(r2)
	var tok2 map[string]any
	if err := json.Unmarshal([]byte(body), &tok2); err != nil || resp.StatusCode != 200 {
		t.Fatalf("refresh = %d %s", resp.StatusCode, body)
	}
	at2, rt2 := tok2["access_token"].(string), tok2["refresh_token"].(string)
	if at2 == at || rt2 == rt || at2 == "" || rt2 == "" {
		t.Fatal("refresh did not issue new tokens")
	}
	if status, ui := e.userinfo(at2); status != 200 || ui["email"] != DemoEmail {
		t.Fatalf("userinfo with refreshed token = %d %v", status, ui)
	}
	// Replaying the old refresh token is refused and revokes the grant.
	status, m := e.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {DefaultClientID}})
	wantOAuthError(t, status, m, 400, "invalid_grant")
	if status, _ := e.userinfo(at2); status != 401 {
		t.Fatalf("refreshed access token still works after refresh-token reuse: %d", status)
	}
	status, m = e.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt2}, "client_id": {DefaultClientID}})
	wantOAuthError(t, status, m, 400, "invalid_grant")

	// The metadata document names the endpoints under the prefix.
	resp, body = e.get(e.base + "/.well-known/oauth-authorization-server")
	var md map[string]any
	if err := json.Unmarshal([]byte(body), &md); err != nil || resp.StatusCode != 200 || md["token_endpoint"] != e.base+"/token" {
		t.Fatalf("metadata = %d %s", resp.StatusCode, body)
	}
	// Outside the prefix the daemon's own routes answer.
	if resp, _ := e.get(e.ts.URL + "/authorize"); resp.StatusCode != http.StatusTeapot {
		t.Fatalf("unprefixed /authorize = %d", resp.StatusCode)
	}
}

func TestRefusals(t *testing.T) {
	t.Run("wrong verifier burns the code", func(t *testing.T) {
		e := newEnv(t, Options{})
		p := newPKCE(t)
		code := e.code(p, "s")
		status, m := e.exchange(code, newPKCE(t))
		wantOAuthError(t, status, m, 400, "invalid_grant")
		if !strings.Contains(m["error_description"].(string), "code_verifier") {
			t.Fatalf("description = %v", m["error_description"])
		}
		status, m = e.exchange(code, p)
		wantOAuthError(t, status, m, 400, "invalid_grant")
	})
	t.Run("malformed verifier", func(t *testing.T) {
		e := newEnv(t, Options{})
		p := newPKCE(t)
		code := e.code(p, "s")
		bad := p
		bad.verifier = p.verifier[:20] // too short, even though it is a prefix of the right one
		status, m := e.exchange(code, bad)
		wantOAuthError(t, status, m, 400, "invalid_grant")
	})
	t.Run("reused code revokes the first tokens", func(t *testing.T) {
		e := newEnv(t, Options{})
		p := newPKCE(t)
		code := e.code(p, "s")
		status, tok := e.exchange(code, p)
		if status != 200 {
			t.Fatalf("first exchange = %d %v", status, tok)
		}
		status, m := e.exchange(code, p)
		wantOAuthError(t, status, m, 400, "invalid_grant")
		if !strings.Contains(m["error_description"].(string), "already used") {
			t.Fatalf("description = %v", m["error_description"])
		}
		if status, _ := e.userinfo(tok["access_token"].(string)); status != 401 {
			t.Fatalf("access token of a replayed code still works: %d", status)
		}
	})
	t.Run("expired code", func(t *testing.T) {
		e := newEnv(t, Options{})
		p := newPKCE(t)
		code := e.code(p, "s")
		e.clk.Add(DefaultCodeTTL + time.Second)
		status, m := e.exchange(code, p)
		wantOAuthError(t, status, m, 400, "invalid_grant")
	})
	t.Run("code just inside its lifetime works", func(t *testing.T) {
		e := newEnv(t, Options{})
		p := newPKCE(t)
		code := e.code(p, "s")
		e.clk.Add(DefaultCodeTTL - time.Second)
		if status, m := e.exchange(code, p); status != 200 {
			t.Fatalf("exchange at 59s = %d %v", status, m)
		}
	})
	t.Run("redirect_uri and client must match", func(t *testing.T) {
		e := newEnv(t, Options{})
		p := newPKCE(t)
		code := e.code(p, "s")
		status, m := e.token(url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {e.redir + "x"},
			"client_id": {DefaultClientID}, "code_verifier": {p.verifier}})
		wantOAuthError(t, status, m, 400, "invalid_grant")
		code = e.code(p, "s2")
		status, m = e.token(url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {e.redir},
			"client_id": {"someone-else"}, "code_verifier": {p.verifier}})
		wantOAuthError(t, status, m, 400, "invalid_grant")
	})
	t.Run("non-loopback redirect_uri", func(t *testing.T) {
		e := newEnv(t, Options{})
		p := newPKCE(t)
		noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		for _, bad := range []string{
			"https://evil.example/cb", "http://evil.example:1455/cb", "http://127.0.0.1/cb",
			"http://127.0.0.1:1455/cb#frag", "http://user@127.0.0.1:1455/cb", "http://127.0.0.2:1455/cb",
			"http://localhost.evil.example:1455/cb", "file:///etc/passwd", "",
		} {
			resp, err := noFollow.Get(e.authorizeURL(p, "s", func(q url.Values) { q.Set("redirect_uri", bad) }))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 400 || resp.Header.Get("Location") != "" || !strings.Contains(string(body), "loopback") {
				t.Fatalf("redirect_uri %q: %d Location=%q", bad, resp.StatusCode, resp.Header.Get("Location"))
			}
		}
		for _, good := range []string{"http://localhost:1455/auth/callback", "http://[::1]:8085/oauth2callback", "http://127.0.0.1:1/"} {
			resp, err := noFollow.Get(e.authorizeURL(p, "s", func(q url.Values) { q.Set("redirect_uri", good) }))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("redirect_uri %q refused: %d", good, resp.StatusCode)
			}
		}
	})
	t.Run("PKCE plain, missing challenge, wrong response_type, no state", func(t *testing.T) {
		e := newEnv(t, Options{})
		p := newPKCE(t)
		cases := []struct {
			mod  func(url.Values)
			want string
		}{
			{func(q url.Values) { q.Set("code_challenge_method", "plain"); q.Set("code_challenge", p.verifier) }, "invalid_request"},
			{func(q url.Values) { q.Del("code_challenge_method") }, "invalid_request"},
			{func(q url.Values) { q.Del("code_challenge") }, "invalid_request"},
			{func(q url.Values) { q.Set("code_challenge", "short") }, "invalid_request"},
			{func(q url.Values) { q.Set("response_type", "token") }, "unsupported_response_type"},
		}
		for i, c := range cases {
			resp, _ := e.get(e.authorizeURL(p, "st", c.mod))
			if resp.StatusCode != 200 {
				t.Fatalf("case %d: %d", i, resp.StatusCode)
			}
			q := e.cb.last(t)
			if q.Get("error") != c.want || q.Get("state") != "st" || q.Get("code") != "" {
				t.Fatalf("case %d: callback got %v, want error=%s", i, q, c.want)
			}
		}
		e.get(e.authorizeURL(p, "", nil))
		if q := e.cb.last(t); q.Get("error") != "invalid_request" {
			t.Fatalf("no state: callback got %v", q)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		e := newEnv(t, Options{})
		p := newPKCE(t)
		_, page := e.get(e.authorizeURL(p, "st", nil))
		action, req := e.form(page)
		for i := range maxLoginFailures - 1 {
			resp, page := e.postForm(action, url.Values{"request": {req}, "username": {DemoUsername}, "password": {"wrong"}})
			if resp.StatusCode != 401 || !strings.Contains(page, "Wrong username or password") || strings.Contains(page, "Allow ") {
				t.Fatalf("attempt %d: %d\n%s", i, resp.StatusCode, page)
			}
			if !regexp.MustCompile(`id="username" name="username" value="demo"`).MatchString(page) {
				t.Fatalf("the username is not kept after a failed attempt:\n%s", page)
			}
		}
		if e.cb.calls() != 0 {
			t.Fatal("a wrong password reached the client")
		}
		// An unknown user fails the same way.
		resp, _ := e.postForm(action, url.Values{"request": {req}, "username": {"nobody"}, "password": {DemoPassword}})
		if resp.StatusCode != 200 {
			// That was the fifth failure: the flow ends with access_denied.
			t.Fatalf("fifth failure = %d", resp.StatusCode)
		}
		if q := e.cb.last(t); q.Get("error") != "access_denied" || q.Get("state") != "st" {
			t.Fatalf("after too many failures the callback got %v", q)
		}
		// The request is gone: the right password no longer helps.
		resp, _ = e.postForm(action, url.Values{"request": {req}, "username": {DemoUsername}, "password": {DemoPassword}})
		if resp.StatusCode != 400 {
			t.Fatalf("login on an ended request = %d", resp.StatusCode)
		}
	})
	t.Run("deny", func(t *testing.T) {
		e := newEnv(t, Options{})
		p := newPKCE(t)
		resp := e.login(p, "st-deny", "deny")
		if resp.StatusCode != 200 {
			t.Fatalf("callback = %d", resp.StatusCode)
		}
		q := e.cb.last(t)
		if q.Get("error") != "access_denied" || q.Get("state") != "st-deny" || q.Get("code") != "" {
			t.Fatalf("callback after deny got %v", q)
		}
	})
	t.Run("consent without login", func(t *testing.T) {
		e := newEnv(t, Options{})
		_, page := e.get(e.authorizeURL(newPKCE(t), "st", nil))
		_, req := e.form(page)
		resp, _ := e.postForm(e.base+"/consent", url.Values{"request": {req}, "decision": {"allow"}})
		if resp.StatusCode != 400 || e.cb.calls() != 0 {
			t.Fatalf("consent before login = %d, callback calls %d", resp.StatusCode, e.cb.calls())
		}
	})
	t.Run("expired login request", func(t *testing.T) {
		e := newEnv(t, Options{})
		_, page := e.get(e.authorizeURL(newPKCE(t), "st", nil))
		action, req := e.form(page)
		e.clk.Add(DefaultRequestTTL + time.Second)
		resp, page := e.postForm(action, url.Values{"request": {req}, "username": {DemoUsername}, "password": {DemoPassword}})
		if resp.StatusCode != 400 || !strings.Contains(page, "expired") {
			t.Fatalf("login on an expired request = %d", resp.StatusCode)
		}
	})
	t.Run("access token expiry and bad tokens", func(t *testing.T) {
		e := newEnv(t, Options{})
		p := newPKCE(t)
		_, tok := e.exchange(e.code(p, "s"), p)
		at := tok["access_token"].(string)
		for _, bad := range []string{"", "devat_nope", at + "x"} {
			if status, m := e.userinfo(bad); status != 401 || m["error"] == nil {
				t.Fatalf("userinfo with %q = %d %v", bad, status, m)
			}
		}
		e.clk.Add(DefaultAccessTTL + time.Second)
		if status, m := e.userinfo(at); status != 401 || m["error"] != "invalid_token" {
			t.Fatalf("expired access token = %d %v", status, m)
		}
		// The refresh token outlives it.
		status, m := e.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok["refresh_token"].(string)}, "client_id": {DefaultClientID}})
		if status != 200 {
			t.Fatalf("refresh after access expiry = %d %v", status, m)
		}
	})
	t.Run("token endpoint input errors", func(t *testing.T) {
		e := newEnv(t, Options{Clients: map[string]string{DefaultClientID: "Hangar Dev CLI"}})
		status, m := e.token(url.Values{"grant_type": {"password"}, "client_id": {DefaultClientID}})
		wantOAuthError(t, status, m, 400, "unsupported_grant_type")
		status, m = e.token(url.Values{"grant_type": {"authorization_code"}, "client_id": {"stranger"}})
		wantOAuthError(t, status, m, 401, "invalid_client")
		status, m = e.token(url.Values{"grant_type": {"authorization_code"}, "client_id": {DefaultClientID}})
		wantOAuthError(t, status, m, 400, "invalid_request")
		status, m = e.token(url.Values{"grant_type": {"refresh_token"}, "client_id": {DefaultClientID}, "refresh_token": {"devrt_forged"}})
		wantOAuthError(t, status, m, 400, "invalid_grant")
		// An unregistered client never sees a login form, nor a redirect.
		resp, _ := e.get(e.authorizeURL(newPKCE(t), "s", func(q url.Values) { q.Set("client_id", "stranger") }))
		if resp.StatusCode != 400 || e.cb.calls() != 0 {
			t.Fatalf("unknown client = %d", resp.StatusCode)
		}
		// A registered client is shown by its display name.
		_, page := e.get(e.authorizeURL(newPKCE(t), "s", nil))
		if !strings.Contains(page, "Hangar Dev CLI") {
			t.Fatal("consent does not show the client's name")
		}
	})
}

func TestPastePage(t *testing.T) {
	e := newEnv(t, Options{})
	p := newPKCE(t)
	paste := e.base + "/code"
	_, page := e.get(e.authorizeURL(p, "st-paste", func(q url.Values) { q.Set("redirect_uri", paste) }))
	action, req := e.form(page)
	_, page = e.postForm(action, url.Values{"request": {req}, "username": {DemoUsername}, "password": {DemoPassword}})
	action, req = e.form(page)
	resp, page := e.postForm(action, url.Values{"request": {req}, "decision": {"allow"}})
	m := regexp.MustCompile(`id="code">(devac_[A-Za-z0-9_-]+)#st-paste<`).FindStringSubmatch(page)
	if resp.StatusCode != 200 || m == nil {
		t.Fatalf("paste page = %d:\n%s", resp.StatusCode, page)
	}
	status, tok := e.token(url.Values{"grant_type": {"authorization_code"}, "code": {m[1]}, "redirect_uri": {paste},
		"client_id": {DefaultClientID}, "code_verifier": {p.verifier}})
	if status != 200 || tok["access_token"] == nil {
		t.Fatalf("exchange of a pasted code = %d %v", status, tok)
	}
	// Another server's /code page is not a valid redirect.
	resp, _ = e.get(e.authorizeURL(p, "s", func(q url.Values) { q.Set("redirect_uri", "http://evil.example/dev-oauth/code") }))
	if resp.StatusCode != 400 {
		t.Fatalf("foreign /code redirect = %d", resp.StatusCode)
	}
}
