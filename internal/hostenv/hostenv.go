// Package hostenv builds the environments of processes the daemon starts
// on the host. The daemon's own environment holds its secrets
// (HANGAR_SEAL_KEY, the database URL in HANGAR_DATABASE, PGPASSWORD, API
// tokens an operator exported), and a process that inherits them can leak
// them: a hypervisor runs guest-controlled emulation, and image builds run
// third-party code as root (npm lifecycle scripts, kernel makefiles). So
// hypervisors get Minimal, and build steps that need a toolchain's
// settings get Scrubbed.
package hostenv

import (
	"os"
	"strings"
)

// minimalKeys are kept by Minimal: what a program needs to find others
// and to format text, plus the host's proxy settings for downloads.
var minimalKeys = []string{"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ",
	"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"}

// Minimal is the daemon's PATH, HOME, TMPDIR, locale and proxy settings
// (those that are set), plus extra ("KEY=value"), and nothing else.
func Minimal(extra ...string) []string {
	env := make([]string, 0, len(minimalKeys)+len(extra))
	for _, k := range minimalKeys {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return append(env, extra...)
}

// Scrubbed is the daemon's environment without anything that may be a
// secret (Secret), plus extra.
func Scrubbed(extra ...string) []string {
	var env []string
	for _, e := range os.Environ() {
		k, _, _ := strings.Cut(e, "=")
		if !Secret(k) {
			env = append(env, e)
		}
	}
	return append(env, extra...)
}

// Secret reports whether an environment variable's name says it is, or may
// be, a secret: every HANGAR_* setting (the sealing key, the database
// URL), Postgres client settings, and names that mention a secret.
func Secret(key string) bool {
	u := strings.ToUpper(key)
	if strings.HasPrefix(u, "HANGAR_") || strings.HasPrefix(u, "PG") || u == "DATABASE_URL" {
		return true
	}
	for _, w := range []string{"SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "PRIVATE_KEY", "ACCESS_KEY"} {
		if strings.Contains(u, w) {
			return true
		}
	}
	return false
}
