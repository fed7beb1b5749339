package devoauth

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// TestPendingAuthorizationsBounded: a login VM opening /authorize over and
// over cannot grow the daemon's memory without bound: past maxPending
// waiting authorizations the server answers 503, and once they expire new
// ones are taken again.
func TestPendingAuthorizationsBounded(t *testing.T) {
	e := newEnv(t, Options{Users: []User{DemoUser()}})
	p := newPKCE(t)
	authorize := func() int {
		rec := httptest.NewRecorder()
		e.srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, e.authorizeURL(p, "st", nil), nil))
		return rec.Code
	}
	for i := range maxPending {
		if code := authorize(); code != http.StatusOK {
			t.Fatalf("authorize %d = %d, want 200", i, code)
		}
	}
	if code := authorize(); code != http.StatusServiceUnavailable {
		t.Fatalf("authorize past %d pending = %d, want 503", maxPending, code)
	}
	e.clk.Add(DefaultRequestTTL + 1)
	if code := authorize(); code != http.StatusOK {
		t.Fatalf("authorize after the pending ones expired = %d, want 200", code)
	}
}

// TestRequestSizeBounded: forms and queries over the limits are not
// parsed: a sign-in padded past maxRequestBody does not sign in, and an
// overlong query is refused.
func TestRequestSizeBounded(t *testing.T) {
	e := newEnv(t, Options{Users: []User{DemoUser()}})
	p := newPKCE(t)
	resp, page := e.get(e.authorizeURL(p, "st", nil))
	if resp.StatusCode != 200 {
		t.Fatalf("authorize = %d", resp.StatusCode)
	}
	action, req := e.form(page)
	resp, page = e.postForm(action, url.Values{"request": {req}, "username": {DemoUsername}, "password": {DemoPassword},
		"padding": {strings.Repeat("p", 2*maxRequestBody)}})
	if resp.StatusCode == http.StatusOK || strings.Contains(page, "to access your account?") {
		t.Fatalf("an oversized sign-in form was accepted (%d)", resp.StatusCode)
	}
	resp, _ = e.get(e.authorizeURL(p, strings.Repeat("s", 2*maxQueryBytes), nil))
	if resp.StatusCode != http.StatusRequestURITooLong {
		t.Fatalf("authorize with a %d-byte state = %d, want 414", 2*maxQueryBytes, resp.StatusCode)
	}
	// Within the limits, the same sign-in works.
	resp, page = e.get(e.authorizeURL(p, "st", nil))
	action, req = e.form(page)
	resp, page = e.postForm(action, url.Values{"request": {req}, "username": {DemoUsername}, "password": {DemoPassword}})
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, "to access your account?") {
		t.Fatalf("sign-in within the limits = %d", resp.StatusCode)
	}
}
