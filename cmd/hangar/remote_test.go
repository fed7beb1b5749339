package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRemotesAcrossTwoDaemons adds two real daemons as remotes and shows
// that --remote, remote use and the precedence of --server work, that the
// stored file is private, and that version reports both sides.
func TestRemotesAcrossTwoDaemons(t *testing.T) {
	bin := hangarBin(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	a := startServe(t, nil, "--data-dir", dirA)
	b := startServe(t, nil, "--data-dir", dirB)
	keyOf := func(dir string) string {
		k, err := os.ReadFile(filepath.Join(dir, "admin.key"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(k))
	}
	// A second user on b tells the daemons apart in `me`.
	var bob struct {
		APIKey string `json:"api_key"`
	}
	if err := json.Unmarshal([]byte(runCLI(t, dirB, b.URL, "--token", keyOf(dirB), "--json", "user", "create", "bob")), &bob); err != nil || bob.APIKey == "" {
		t.Fatalf("create bob on b: %v", err)
	}
	cfg := t.TempDir()
	// The client runs with no data dir key, no HANGAR_SERVER/TOKEN: only
	// remotes can tell it where to go.
	run := func(wantOK bool, stdin string, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"--data-dir", t.TempDir()}, args...)...)
		cmd.Env = append(os.Environ(), "HANGAR_CONFIG_DIR="+cfg, "HANGAR_SERVER=", "HANGAR_TOKEN=")
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if (err == nil) != wantOK {
			t.Fatalf("hangar %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run(false, "", "remote", "add", "bad", a.URL, "--token", "not-a-key")
	run(true, keyOf(dirA)+"\n", "remote", "add", "a", a.URL) // key typed at the prompt
	run(true, "", "remote", "add", "b", b.URL, "--token", bob.APIKey)
	st, err := os.Stat(filepath.Join(cfg, "remotes.json"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("remotes.json: %v, mode %v; want 0600", err, st.Mode())
	}
	if out := run(true, "", "me"); !strings.Contains(out, "admin") {
		t.Fatalf("me on the first remote (current): %s", out)
	}
	if out := run(true, "", "--remote", "b", "me"); !strings.Contains(out, "bob") {
		t.Fatalf("me --remote b: %s", out)
	}
	run(true, "", "remote", "use", "b")
	if out := run(true, "", "me"); !strings.Contains(out, "bob") {
		t.Fatalf("me after remote use b: %s", out)
	}
	if out := run(true, "", "--server", a.URL, "--token", keyOf(dirA), "me"); !strings.Contains(out, "admin") {
		t.Fatalf("--server/--token must beat the current remote: %s", out)
	}
	if out := run(true, "", "remote", "ls"); !strings.Contains(out, "*b") || !strings.Contains(out, a.URL) {
		t.Fatalf("remote ls: %s", out)
	}
	if out := run(true, "", "version"); !strings.Contains(out, "client  hangar") || !strings.Contains(out, "server  hangar") || !strings.Contains(out, b.URL) {
		t.Fatalf("version: %s", out)
	}
	run(false, "", "--remote", "nope", "me")
}
