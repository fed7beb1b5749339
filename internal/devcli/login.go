package devcli

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

type loginOptions struct {
	port     int
	clientID string
	timeout  time.Duration
	paste    bool
}

func randomURLSafe() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (panics instead)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// listenCallback listens on 127.0.0.1:port, or on a random port when that
// one is taken (another login still running, or anything else).
func (e *env) listenCallback(port int) (net.Listener, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err == nil {
		return ln, nil
	}
	if port == 0 {
		return nil, fmt.Errorf("start the local login server: %w", err)
	}
	ln, err2 := net.Listen("tcp", "127.0.0.1:0")
	if err2 != nil {
		return nil, fmt.Errorf("start the local login server: port %d: %v; random port: %w", port, err, err2)
	}
	fmt.Fprintf(e.stderr, "Port %d is busy; using port %d instead.\n", port, ln.Addr().(*net.TCPAddr).Port)
	return ln, nil
}

// callbackResult is what the one accepted callback produced.
type callbackResult struct {
	email string
	err   error
}

// loginIssuer is the issuer a login talks to, checked.
func (e *env) loginIssuer() (string, error) {
	issuer := e.issuer
	if issuer == "" {
		issuer = defaultIssuer
	}
	if u, err := url.Parse(issuer); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%w: --issuer %q is not an http(s) URL", errUsage, issuer)
	}
	return issuer, nil
}

// authorizeURL builds the authorization request with a fresh PKCE verifier
// and state.
func authorizeURL(issuer, clientID, redirectURI string) (authURL, verifier, state string) {
	verifier, state = randomURLSafe(), randomURLSafe()
	sum := sha256.Sum256([]byte(verifier))
	q := url.Values{
		"response_type":         {"code"},
		"client_id":             {clientID},
		"redirect_uri":          {redirectURI},
		"scope":                 {defaultScope},
		"state":                 {state},
		"code_challenge":        {base64.RawURLEncoding.EncodeToString(sum[:])},
		"code_challenge_method": {"S256"},
	}
	return issuer + "/authorize?" + q.Encode(), verifier, state
}

func (e *env) login(ctx context.Context, o loginOptions) error {
	issuer, err := e.loginIssuer()
	if err != nil {
		return err
	}
	ln, err := e.listenCallback(o.port)
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	redirectURI := fmt.Sprintf("http://127.0.0.1:%d/auth/callback", port)
	authURL, verifier, state := authorizeURL(issuer, o.clientID, redirectURI)

	results := make(chan callbackResult, 1)
	var once sync.Once // the first callback with the right state decides
	mux := http.NewServeMux()
	mux.HandleFunc("GET /auth/callback", func(w http.ResponseWriter, r *http.Request) {
		cq := r.URL.Query()
		if subtle.ConstantTimeCompare([]byte(cq.Get("state")), []byte(state)) != 1 {
			// Not the response to our request (a stale tab, or a forged
			// link): refuse it and keep waiting for the real one.
			fmt.Fprintln(e.stderr, "Ignored a login callback with a wrong state.")
			page(w, http.StatusBadRequest, "Login failed", "State mismatch: this response does not belong to the login in progress.")
			return
		}
		handled := false
		once.Do(func() {
			handled = true
			res := e.finishLogin(r.Context(), issuer, o.clientID, redirectURI, verifier, cq)
			if res.err != nil {
				page(w, http.StatusBadRequest, "Login failed", res.err.Error()+". Return to your terminal.")
			} else {
				page(w, http.StatusOK, "Login complete", "Login complete, you can close this window.")
			}
			results <- res
		})
		if !handled {
			page(w, http.StatusConflict, "Login already finished", "This login has already been completed. Return to your terminal.")
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		// Let the browser receive the final page before the process exits.
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	fmt.Fprintf(e.stderr, "Starting local login server on http://127.0.0.1:%d.\n", port)
	fmt.Fprintf(e.stderr, "Open this URL in your browser to log in:\n%s\n", authURL)

	timer := time.NewTimer(o.timeout)
	defer timer.Stop()
	select {
	case res := <-results:
		if res.err != nil {
			return res.err
		}
		fmt.Fprintf(e.stderr, "Account: %s\n", res.email)
		fmt.Fprintln(e.stderr, "Successfully logged in")
		return nil
	case <-timer.C:
		return fmt.Errorf("timed out after %s waiting for the browser login", o.timeout)
	case <-ctx.Done():
		return fmt.Errorf("login interrupted: %w", ctx.Err())
	}
}

// loginPaste runs the login without a listener: the user pastes the code
// the issuer's /code page shows.
func (e *env) loginPaste(ctx context.Context, o loginOptions) error {
	issuer, err := e.loginIssuer()
	if err != nil {
		return err
	}
	redirectURI := issuer + "/code"
	authURL, verifier, state := authorizeURL(issuer, o.clientID, redirectURI)
	fmt.Fprintf(e.stderr, "Open this URL in your browser to log in:\n%s\n", authURL)
	fmt.Fprint(e.stderr, "Paste the code here: ")
	lines := make(chan string, 1)
	go func() {
		// Left blocked on stdin if the login times out; the process exits.
		line, err := bufio.NewReader(e.stdin).ReadString('\n')
		if err != nil && line == "" {
			close(lines)
			return
		}
		lines <- strings.TrimSpace(line)
	}()
	timer := time.NewTimer(o.timeout)
	defer timer.Stop()
	var pasted string
	select {
	case line, ok := <-lines:
		if !ok || line == "" {
			return errors.New("no code was pasted")
		}
		pasted = line
	case <-timer.C:
		return fmt.Errorf("timed out after %s waiting for the code", o.timeout)
	case <-ctx.Done():
		return fmt.Errorf("login interrupted: %w", ctx.Err())
	}
	// The page shows code#state; a bare code is accepted too, since a
	// person copied it by hand from the page this login opened.
	code, gotState, hasState := strings.Cut(pasted, "#")
	if hasState && subtle.ConstantTimeCompare([]byte(gotState), []byte(state)) != 1 {
		return errors.New("the pasted code belongs to another login (state mismatch)")
	}
	res := e.finishLogin(ctx, issuer, o.clientID, redirectURI, verifier, url.Values{"code": {code}})
	if res.err != nil {
		return res.err
	}
	fmt.Fprintf(e.stderr, "Account: %s\n", res.email)
	fmt.Fprintln(e.stderr, "Successfully logged in")
	return nil
}

// finishLogin turns the callback's query into stored credentials.
func (e *env) finishLogin(ctx context.Context, issuer, clientID, redirectURI, verifier string, q url.Values) callbackResult {
	if code := q.Get("error"); code != "" {
		if code == "access_denied" {
			return callbackResult{err: errors.New("login denied in the browser (access_denied)")}
		}
		desc := q.Get("error_description")
		return callbackResult{err: fmt.Errorf("the issuer refused the login: %s %s", code, desc)}
	}
	code := q.Get("code")
	if code == "" {
		return callbackResult{err: errors.New("the callback carried neither a code nor an error")}
	}
	tr, err := postToken(ctx, issuer, url.Values{
		"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirectURI},
		"client_id": {clientID}, "code_verifier": {verifier},
	})
	if err != nil {
		return callbackResult{err: fmt.Errorf("exchange the code for tokens: %w", err)}
	}
	ui, err := getUserinfo(ctx, issuer, tr.AccessToken)
	if err != nil {
		return callbackResult{err: fmt.Errorf("read the account: %w", err)}
	}
	now := e.now().UTC()
	a := authFile{
		Issuer: issuer, ClientID: clientID,
		AccessToken: tr.AccessToken, RefreshToken: tr.RefreshToken,
		ExpiresAt:   now.Add(time.Duration(tr.ExpiresIn) * time.Second),
		Account:     account{Email: ui.Email},
		LastRefresh: now,
	}
	if err := saveAuth(e.home, a); err != nil {
		return callbackResult{err: err}
	}
	return callbackResult{email: ui.Email}
}

// page answers the browser with a minimal, large-print HTML page.
func page(w http.ResponseWriter, status int, title, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>%s</title></head>
<body style="font-family: sans-serif; font-size: 24px; margin: 80px auto; max-width: 640px">
<h1>%s</h1><p id="message">%s</p></body></html>
`, html.EscapeString(title), html.EscapeString(title), html.EscapeString(msg))
}
