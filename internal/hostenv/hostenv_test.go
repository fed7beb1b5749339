package hostenv

import (
	"slices"
	"strings"
	"testing"
)

func has(env []string, key string) bool {
	return slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, key+"=") })
}

func TestMinimalAndScrubbedDropSecrets(t *testing.T) {
	t.Setenv("HANGAR_SEAL_KEY", "k")
	t.Setenv("HANGAR_DATABASE", "postgres://u:p@db/h")
	t.Setenv("PGPASSWORD", "p")
	t.Setenv("GITHUB_TOKEN", "t")
	t.Setenv("GOFLAGS", "-mod=mod")
	t.Setenv("PATH", "/usr/bin:/bin")
	for name, env := range map[string][]string{"Minimal": Minimal("X=1"), "Scrubbed": Scrubbed("X=1")} {
		for _, k := range []string{"HANGAR_SEAL_KEY", "HANGAR_DATABASE", "PGPASSWORD", "GITHUB_TOKEN"} {
			if has(env, k) {
				t.Errorf("%s keeps %s", name, k)
			}
		}
		if !has(env, "PATH") || !has(env, "X") {
			t.Errorf("%s lacks PATH or the extra variable: %q", name, env)
		}
	}
	if has(Minimal(), "GOFLAGS") || !has(Scrubbed(), "GOFLAGS") {
		t.Error("Minimal must drop and Scrubbed keep a toolchain setting")
	}
}
