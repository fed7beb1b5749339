package dashboard

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, target string, hdr map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

var (
	importMapRE = regexp.MustCompile(`<script type="importmap">([^<]*)</script>`)
	assetRefRE  = regexp.MustCompile(`(?:href|src)="(/assets/[^"]+)"`)
	importRE    = regexp.MustCompile(`(?m)^import .* from "([^"]+)";`)
)

// TestIndex: the page is HTML, never cached, carries a CSP whose script hash
// is exactly that of its inline import map, and names every asset with its
// current content hash.
func TestIndex(t *testing.T) {
	h := Handler()
	for _, p := range []string{"/", "/index.html"} {
		rec := get(t, h, "GET", p, nil)
		if rec.Code != 200 {
			t.Fatalf("GET %s: %d", p, rec.Code)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" {
			t.Errorf("GET %s: content type %q", p, ct)
		}
		if cc := rec.Header().Get("Cache-Control"); cc != "no-cache" {
			t.Errorf("GET %s: cache control %q, want no-cache", p, cc)
		}
		body := rec.Body.String()
		if strings.Contains(body, "{{asset") || strings.Contains(body, "<!--importmap-->") {
			t.Fatalf("placeholders left in the page:\n%s", body)
		}
		m := importMapRE.FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("no import map in the page:\n%s", body)
		}
		sum := sha256.Sum256([]byte(m[1]))
		csp := rec.Header().Get("Content-Security-Policy")
		if want := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, want) {
			t.Errorf("CSP %q does not allow the import map (%s)", csp, want)
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("CSP allows unsafe sources: %q", csp)
		}
		var im struct{ Imports map[string]string }
		if err := json.Unmarshal([]byte(m[1]), &im); err != nil {
			t.Fatalf("import map: %v", err)
		}
		refs := assetRefRE.FindAllStringSubmatch(body, -1)
		if len(refs) < 2 {
			t.Fatalf("the page links %d assets, want the stylesheet and the app", len(refs))
		}
		for _, r := range refs {
			if !strings.Contains(r[1], "?v=") {
				t.Errorf("asset %s is linked without its hash", r[1])
			}
		}
		for plain, versioned := range im.Imports {
			rec := get(t, h, "GET", versioned, nil)
			if rec.Code != 200 {
				t.Errorf("import map target %s: %d", versioned, rec.Code)
				continue
			}
			if !strings.HasPrefix(versioned, plain+"?v=") {
				t.Errorf("import map %s → %s", plain, versioned)
			}
			if cc := rec.Header().Get("Cache-Control"); !strings.Contains(cc, "immutable") {
				t.Errorf("%s: cache control %q, want immutable", versioned, cc)
			}
		}
	}
}

// TestModulesResolve: every module import names a file that is served and
// mapped, so no module loads unversioned or 404s in the browser.
func TestModulesResolve(t *testing.T) {
	h := Handler()
	body := get(t, h, "GET", "/", nil).Body.String()
	var im struct{ Imports map[string]string }
	if err := json.Unmarshal([]byte(importMapRE.FindStringSubmatch(body)[1]), &im); err != nil {
		t.Fatal(err)
	}
	n := 0
	err := fs.WalkDir(Files, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !strings.HasSuffix(p, ".js") {
			return err
		}
		src, err := fs.ReadFile(Files, p)
		if err != nil {
			return err
		}
		for _, m := range importRE.FindAllStringSubmatch(string(src), -1) {
			n++
			if _, ok := im.Imports[m[1]]; !ok {
				t.Errorf("%s imports %s, which the import map does not name", p, m[1])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("found no imports; the pattern no longer matches the modules")
	}
}

// TestAssets: content types are set, a stale or missing hash is served
// no-cache, ETags give 304, unknown paths and other methods are refused.
func TestAssets(t *testing.T) {
	h := Handler()
	cases := map[string]string{
		"/assets/app.js":    "text/javascript; charset=utf-8",
		"/assets/api.js":    "text/javascript; charset=utf-8",
		"/assets/style.css": "text/css; charset=utf-8",
	}
	for p, ct := range cases {
		rec := get(t, h, "GET", p+"?v=stale", nil)
		if rec.Code != 200 {
			t.Fatalf("GET %s: %d", p, rec.Code)
		}
		if got := rec.Header().Get("Content-Type"); got != ct {
			t.Errorf("%s: content type %q, want %q", p, got, ct)
		}
		if got := rec.Header().Get("Cache-Control"); got != "no-cache" {
			t.Errorf("%s with a stale hash: cache control %q, want no-cache", p, got)
		}
		if got := rec.Header().Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s: X-Content-Type-Options %q", p, got)
		}
		etag := rec.Header().Get("ETag")
		if etag == "" {
			t.Fatalf("%s: no ETag", p)
		}
		if rec := get(t, h, "GET", p, map[string]string{"If-None-Match": etag}); rec.Code != http.StatusNotModified {
			t.Errorf("%s with If-None-Match: %d, want 304", p, rec.Code)
		}
		if rec := get(t, h, "HEAD", p, nil); rec.Code != 200 || rec.Body.Len() != 0 {
			t.Errorf("HEAD %s: %d with %d bytes", p, rec.Code, rec.Body.Len())
		}
	}
	for _, p := range []string{"/assets/nope.js", "/assets/", "/elsewhere", "/assets/../embed.go", "/index.htm"} {
		if rec := get(t, h, "GET", p, nil); rec.Code != 404 {
			t.Errorf("GET %s: %d, want 404", p, rec.Code)
		}
	}
	if rec := get(t, h, "POST", "/", nil); rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") == "" {
		t.Errorf("POST /: %d (Allow %q), want 405 with Allow", rec.Code, rec.Header().Get("Allow"))
	}
}

// TestStableIDs: the ids that tests and users' scripts rely on are in the
// page.
func TestStableIDs(t *testing.T) {
	body := get(t, Handler(), "GET", "/", nil).Body.String()
	for _, id := range []string{"api-key", "sign-in", "sign-in-error", "sign-out", "connect-dev", "connect-codex", "connect-claude", "connect-gemini",
		"session-state", "session-error", "session-cancel", "providers", "vms", "new-vm-kind", "new-vm", "confirm-yes", "confirm-no"} {
		if !strings.Contains(body, `id="`+id+`"`) {
			t.Errorf("the page has no #%s", id)
		}
	}
}

// TestBrokenIndexRefused: a page that names a missing asset is an error at
// load, not a 404 in a browser later.
func TestBrokenIndexRefused(t *testing.T) {
	h := &handler{assets: map[string]asset{"app.js": {body: []byte("x"), hash: "h"}}}
	if _, _, err := h.renderIndex([]byte(`<!--importmap--><link href="{{asset nope.css}}">`)); err == nil {
		t.Error("renderIndex accepted a page naming a missing asset")
	}
	if _, _, err := h.renderIndex([]byte(`<script src="{{asset app.js}}"></script>`)); err == nil {
		t.Error("renderIndex accepted a page without the import map placeholder")
	}
	page, _, err := h.renderIndex([]byte(`<!--importmap--><script src="{{asset app.js}}"></script>`))
	if err != nil || !strings.Contains(string(page), `src="/assets/app.js?v=h"`) {
		t.Errorf("renderIndex: %v\n%s", err, page)
	}
}
