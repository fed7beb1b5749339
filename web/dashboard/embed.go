// Package dashboard is hangar's web dashboard: plain HTML, CSS and JavaScript
// modules embedded in the binary and served at "/". There is no build step;
// what is in static/ is what the browser runs.
//
// Caching: index.html is never cached (no-cache, revalidated by ETag). It
// carries an import map and a stylesheet link that name every asset with
// the hash of its content (/assets/app.js?v=<hash>), so an asset requested
// with its current hash is cached for a year and a new binary is picked up
// on the next page load, modules included. An asset requested without its
// current hash is served no-cache.
package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"sort"
	"strings"
	"time"
)

// Files holds the dashboard's static files under "static/".
//
//go:embed static
var Files embed.FS

// assetPrefix is where the files other than index.html are served.
const assetPrefix = "/assets/"

// contentTypes is set explicitly rather than from the host's mime.types, so
// that a module is served as JavaScript on every host (browsers refuse a
// module with another type).
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".ico":  "image/x-icon",
}

// asset is one file ready to serve.
type asset struct {
	body  []byte
	ctype string
	hash  string // hex, first 16 characters of the SHA-256 of body
}

// handler serves index.html and the assets from memory.
type handler struct {
	index  asset
	csp    string
	assets map[string]asset // by name relative to static/, e.g. "app.js"
}

// Handler serves the dashboard: index.html at "/" and "/index.html", the
// other files under "/assets/", 404 for anything else. Only GET and HEAD
// are allowed. Mount it so that it sees the paths unchanged.
func Handler() http.Handler {
	h, err := newHandler(Files)
	if err != nil {
		// The files are embedded at build time; this only fails when
		// static/ itself is broken, which the package's tests catch.
		panic(fmt.Sprintf("dashboard: %v", err))
	}
	return h
}

func newHandler(files fs.FS) (*handler, error) {
	h := &handler{assets: map[string]asset{}}
	var indexSrc []byte
	err := fs.WalkDir(files, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(files, p)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		name := strings.TrimPrefix(p, "static/")
		if name == "index.html" {
			indexSrc = b
			return nil
		}
		ct, ok := contentTypes[path.Ext(name)]
		if !ok {
			return fmt.Errorf("no content type for %s", name)
		}
		h.assets[name] = asset{body: b, ctype: ct, hash: hashOf(b)}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load static files: %w", err)
	}
	if indexSrc == nil {
		return nil, fmt.Errorf("static/index.html is missing")
	}
	index, inline, err := h.renderIndex(indexSrc)
	if err != nil {
		return nil, err
	}
	h.index = asset{body: index, ctype: contentTypes[".html"], hash: hashOf(index)}
	// The only inline script is the import map, allowed by its hash; no
	// other inline script, no eval, nothing from another origin. The live
	// view is a same-origin iframe.
	sum := sha256.Sum256(inline)
	h.csp = strings.Join([]string{
		"default-src 'self'",
		"script-src 'self' 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'",
		"style-src 'self'",
		"img-src 'self' data:",
		"connect-src 'self'",
		"frame-src 'self'",
		"frame-ancestors 'none'",
		"base-uri 'none'",
		"form-action 'self'",
		"object-src 'none'",
	}, "; ")
	return h, nil
}

func hashOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:16]
}

// versioned is an asset's URL carrying its content hash.
func (h *handler) versioned(name string) string {
	return assetPrefix + name + "?v=" + h.assets[name].hash
}

// renderIndex replaces the placeholders of index.html: <!--importmap-->
// becomes an import map from each module's plain URL to its versioned one
// (so that `import "./api.js"` inside a module is versioned too), and
// {{asset NAME}} becomes NAME's versioned URL. It returns the page and the
// import map's script text (for the CSP hash).
func (h *handler) renderIndex(src []byte) (page, importMap []byte, err error) {
	imports := map[string]string{}
	names := make([]string, 0, len(h.assets))
	for name := range h.assets {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if path.Ext(name) == ".js" {
			imports[assetPrefix+name] = h.versioned(name)
		}
	}
	m, err := json.Marshal(map[string]any{"imports": imports})
	if err != nil {
		return nil, nil, fmt.Errorf("encode import map: %w", err)
	}
	if !bytes.Contains(src, []byte("<!--importmap-->")) {
		return nil, nil, fmt.Errorf("index.html has no <!--importmap--> placeholder")
	}
	out := bytes.Replace(src, []byte("<!--importmap-->"), []byte(`<script type="importmap">`+string(m)+`</script>`), 1)
	for {
		i := bytes.Index(out, []byte("{{asset "))
		if i < 0 {
			break
		}
		j := bytes.Index(out[i:], []byte("}}"))
		if j < 0 {
			return nil, nil, fmt.Errorf("index.html: unterminated {{asset")
		}
		name := strings.TrimSpace(string(out[i+len("{{asset ") : i+j]))
		if _, ok := h.assets[name]; !ok {
			return nil, nil, fmt.Errorf("index.html names asset %q, which does not exist", name)
		}
		out = append(out[:i:i], append([]byte(h.versioned(name)), out[i+j+2:]...)...)
	}
	return out, m, nil
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	hdr := w.Header()
	hdr.Set("X-Content-Type-Options", "nosniff")
	// The live view's URL carries a token; no page of the dashboard should
	// hand its address to anyone.
	hdr.Set("Referrer-Policy", "no-referrer")
	switch p := r.URL.Path; {
	case p == "/" || p == "/index.html":
		hdr.Set("Cache-Control", "no-cache")
		hdr.Set("Content-Security-Policy", h.csp)
		hdr.Set("X-Frame-Options", "DENY")
		h.serve(w, r, h.index)
	case strings.HasPrefix(p, assetPrefix):
		a, ok := h.assets[strings.TrimPrefix(p, assetPrefix)]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.URL.Query().Get("v") == a.hash {
			hdr.Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			hdr.Set("Cache-Control", "no-cache")
		}
		h.serve(w, r, a)
	default:
		http.NotFound(w, r)
	}
}

func (h *handler) serve(w http.ResponseWriter, r *http.Request, a asset) {
	w.Header().Set("Content-Type", a.ctype)
	w.Header().Set("ETag", `"`+a.hash+`"`)
	// ServeContent answers If-None-Match with 304, HEAD and ranges; with a
	// zero modification time it relies on the ETag alone.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}
