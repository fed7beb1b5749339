package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
)

// runKeys runs `hangar keys <args>` in process against dataDir.
func runKeys(t *testing.T, dataDir string, json bool, args ...string) (string, string, error) {
	t.Helper()
	cmd := newKeysCmd(&rootOptions{dataDir: dataDir, json: json})
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	cmd.SilenceUsage = true
	err := cmd.ExecuteContext(t.Context())
	return out.String(), errb.String(), err
}

func TestKeysRotateCommand(t *testing.T) {
	// The command reads these; the developer's shell must not leak in.
	t.Setenv(seal.EnvKey, "")
	t.Setenv("HANGAR_DATABASE", "")
	dataDir := t.TempDir()

	if _, _, err := runKeys(t, dataDir, false, "rotate"); err == nil || !strings.Contains(err.Error(), "no store") {
		t.Fatalf("rotate without a store: %v", err)
	}

	// What the daemon leaves behind: a store and a key file with records.
	ctx := t.Context()
	st, err := store.Open(ctx, filepath.Join(dataDir, "hangar.db"), testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	kr, err := seal.Open(dataDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	u := store.User{ID: store.NewID("usr"), Name: "alice", Role: store.RoleUser}
	if err := st.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	const plain = `{"access_token":"tok_keys_cmd_test"}`
	for _, p := range []string{"codex", "claude", "dev"} {
		c, err := kr.SealRecord(store.Credential{OwnerID: u.ID, Provider: p, Version: 1}, []byte(plain+p))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.PutCredential(ctx, c); err != nil {
			t.Fatal(err)
		}
	}

	out, _, err := runKeys(t, dataDir, false, "ls")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("keys ls:\n%s", out)
	if !strings.Contains(out, "seal.keys") || !regexpLine(out, `^1\s+\*\s+.*\s3$`) {
		t.Fatalf("keys ls before rotation:\n%s", out)
	}

	out, _, err = runKeys(t, dataDir, false, "rotate")
	if err != nil {
		t.Fatalf("rotate: %v\n%s", err, out)
	}
	t.Logf("keys rotate:\n%s", out)
	if !strings.Contains(out, "added key v2") || !strings.Contains(out, "re-sealed 3 credential record(s) with key v2") {
		t.Fatalf("rotate output:\n%s", out)
	}
	// kr was opened before the rotation, like a running daemon's keyring,
	// and still opens everything.
	all, err := st.ListCredentials(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range all {
		pt, err := kr.OpenRecord(c)
		if c.KeyVersion != 2 || c.Version != 2 || err != nil || string(pt) != plain+c.Provider {
			t.Fatalf("%s after rotate: key v%d record v%d err %v", c.Provider, c.KeyVersion, c.Version, err)
		}
	}

	out, _, err = runKeys(t, dataDir, true, "ls")
	if err != nil {
		t.Fatal(err)
	}
	var ls struct {
		Source string
		Keys   []keyRow
	}
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		t.Fatalf("keys ls --json: %v\n%s", err, out)
	}
	if len(ls.Keys) != 2 || ls.Keys[0].Current || !ls.Keys[1].Current || *ls.Keys[0].Records != 0 || *ls.Keys[1].Records != 3 {
		t.Fatalf("keys ls --json = %s", out)
	}
	if strings.Contains(out, `"key"`) {
		t.Fatal("keys ls prints key material")
	}

	out, _, err = runKeys(t, dataDir, false, "rotate", "--reseal-only")
	if err != nil || !strings.Contains(out, "re-sealed 0 credential record(s) with key v2") {
		t.Fatalf("reseal-only with nothing to do: %v\n%s", err, out)
	}
}

func regexpLine(s, pattern string) bool {
	re := regexp.MustCompile(pattern)
	for _, l := range strings.Split(s, "\n") {
		if re.MatchString(strings.TrimSpace(l)) {
			return true
		}
	}
	return false
}
