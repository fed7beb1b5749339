package liveview

import (
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/web/novnc"
)

func get(t *testing.T, u string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(body)
}

func TestViewerPage(t *testing.T) {
	e := newEnv(t, nil)
	res, body := get(t, e.url("http", "sess-1", "", e.token("sess-1", false, time.Minute), nil), nil)
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("page: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	for _, want := range []string{`<script type="module" src="v/` + e.lv.version + `/static/viewer.js">`, `data-view-only="false"`, `data-session="sess-1"`, `id="screen"`} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q:\n%s", want, body)
		}
	}
	// No external resources: every src/href is relative to the daemon.
	for _, m := range regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(body, -1) {
		if strings.Contains(m[1], "//") || strings.HasPrefix(m[1], "/") {
			t.Errorf("page refers to %q", m[1])
		}
	}
	if strings.Contains(body, "token=") {
		t.Errorf("page body embeds the token")
	}
	h := res.Header
	if h.Get("Referrer-Policy") != "no-referrer" || !strings.Contains(h.Get("Content-Security-Policy"), "default-src 'self'") ||
		h.Get("Cache-Control") != "no-store" || h.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("page headers %v", h)
	}

	// A view-only token makes a view-only page, whatever the query says.
	_, body = get(t, e.url("http", "sess-1", "", e.token("sess-1", true, time.Minute), url.Values{"view_only": {"0"}}), nil)
	if !strings.Contains(body, `data-view-only="true"`) {
		t.Errorf("view-only token gave an interactive page")
	}
	_, body = get(t, e.url("http", "sess-1", "", e.token("sess-1", false, time.Minute), url.Values{"view_only": {"1"}}), nil)
	if !strings.Contains(body, `data-view-only="true"`) {
		t.Errorf("view_only=1 did not make a view-only page")
	}
}

func TestStaticFiles(t *testing.T) {
	e := newEnv(t, nil)
	base := e.http.URL + Prefix
	res, body := get(t, base+"novnc/core/rfb.js", nil)
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Fatalf("rfb.js: %d %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	want, _ := fs.ReadFile(novnc.FS, "core/rfb.js")
	if body != string(want) || !strings.Contains(body, "export default class RFB") {
		t.Fatalf("rfb.js body differs from the vendored file")
	}
	etag := res.Header.Get("ETag")
	if res, _ := get(t, base+"novnc/core/rfb.js", map[string]string{"If-None-Match": etag}); etag == "" || res.StatusCode != http.StatusNotModified {
		t.Fatalf("revalidation with ETag %q: %d", etag, res.StatusCode)
	}
	// Versioned URLs (the page's) are cacheable for good; another
	// version's are served but revalidated.
	res, vbody := get(t, base+"v/"+e.lv.version+"/novnc/core/rfb.js", nil)
	if res.StatusCode != 200 || vbody != body || !strings.Contains(res.Header.Get("Cache-Control"), "immutable") {
		t.Fatalf("versioned rfb.js: %d %q", res.StatusCode, res.Header.Get("Cache-Control"))
	}
	if res, _ := get(t, base+"v/0000/novnc/core/rfb.js", nil); res.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("old version cached as %q", res.Header.Get("Cache-Control"))
	}
	res, body = get(t, base+"static/viewer.js", nil)
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/javascript; charset=utf-8" || !strings.Contains(body, "from '../novnc/core/rfb.js'") {
		t.Fatalf("viewer.js: %d %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if res, _ := get(t, base+"static/viewer.css", nil); res.Header.Get("Content-Type") != "text/css; charset=utf-8" {
		t.Fatalf("viewer.css type %q", res.Header.Get("Content-Type"))
	}
	if res, _ := get(t, base+"novnc/LICENSE.txt", nil); res.StatusCode != 200 {
		t.Fatalf("license: %d", res.StatusCode)
	}
	for _, p := range []string{"novnc/core/nope.js", "static/viewer.html", "sess-1/other", "bad%20id", "novnc/../../go.mod"} {
		if res, _ := get(t, base+p, nil); res.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, res.StatusCode)
		}
	}
	res, err := http.Post(base+"novnc/core/rfb.js", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", res.StatusCode)
	}
}

// TestVendoredModulesResolve follows every static import from the viewer
// script through noVNC and checks that each target is served, so a noVNC
// refresh that needs files left out of web/novnc fails here, not in a
// browser.
func TestVendoredModulesResolve(t *testing.T) {
	lv := newEnv(t, nil).lv
	importRE := regexp.MustCompile(`(?m)^\s*(?:import|export)\s[^;]*?from\s+["']([^"']+)["']|^\s*import\s+["']([^"']+)["']`)
	seen := map[string]bool{}
	// The walk starts where the page points, so it checks the page too.
	page := regexp.MustCompile(`src="v/[0-9a-f]+/(static/viewer.js)"`).FindStringSubmatch(pageHTML(t, lv))
	if page == nil {
		t.Fatal("page has no viewer script")
	}
	queue := []string{page[1]}
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		if seen[name] {
			continue
		}
		seen[name] = true
		f, ok := lv.files[name]
		if !ok {
			t.Errorf("module %s is imported but not served", name)
			continue
		}
		for _, m := range importRE.FindAllStringSubmatch(string(f.body), -1) {
			spec := m[1] + m[2]
			if !strings.HasPrefix(spec, ".") {
				t.Errorf("%s imports bare specifier %q, which a browser cannot resolve", name, spec)
				continue
			}
			queue = append(queue, path.Join(path.Dir(name), spec))
		}
	}
	if !seen["novnc/core/rfb.js"] || !seen["novnc/vendor/pako/lib/zlib/inflate.js"] || len(seen) < 40 {
		t.Fatalf("import walk reached only %d modules: %v", len(seen), seen)
	}
	t.Logf("%d modules reachable from the viewer", len(seen))
}

func TestPath(t *testing.T) {
	s := NewSigner()
	tok := s.Issue("ses_1", "u", false, time.Minute)
	p := Path("ses_1", tok)
	u, err := url.Parse(p)
	if err != nil {
		t.Fatal(err)
	}
	if u.Path != "/live/ses_1" || u.Query().Get("token") != tok {
		t.Fatalf("Path = %q", p)
	}
	if _, err := s.Verify(u.Query().Get("token"), "ses_1"); err != nil {
		t.Fatal(err)
	}
}

func pageHTML(t *testing.T, lv *Server) string {
	t.Helper()
	var b strings.Builder
	if err := lv.page.Execute(&b, pageData{Version: lv.version, Session: "s"}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
