package seal

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// noEnv is a lookupEnv that finds nothing, so tests never pick up a
// HANGAR_SEAL_KEY from the developer's shell.
func noEnv(string) (string, bool) { return "", false }

func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func randKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// secret is a plaintext that looks like a credential file; tests assert it
// never shows up in an error.
const secret = `{"access_token":"dev_at_SUPERSECRETTOKENVALUE","refresh_token":"dev_rt_ANOTHERSECRET"}`

// assertClean fails if err's text contains any of the given secrets.
func assertClean(t *testing.T, err error, secrets ...string) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Fatalf("error text leaks a secret: %v", err)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	kr, err := FromKeys(map[int][]byte{1: randKey(t)}, 1)
	if err != nil {
		t.Fatal(err)
	}
	ad := AD{UserID: "usr_alice", Provider: "codex", Version: 1}
	s1, err := kr.Seal([]byte(secret), ad)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := kr.Seal([]byte(secret), ad)
	if err != nil {
		t.Fatal(err)
	}
	if s1.KeyVersion != 1 || len(s1.Nonce) != NonceSize {
		t.Fatalf("sealed = key v%d, nonce %d bytes", s1.KeyVersion, len(s1.Nonce))
	}
	if bytes.Equal(s1.Nonce, s2.Nonce) || bytes.Equal(s1.Ciphertext, s2.Ciphertext) {
		t.Fatal("two seals of the same plaintext share a nonce or ciphertext")
	}
	if bytes.Contains(s1.Ciphertext, []byte("SUPERSECRET")) {
		t.Fatal("ciphertext contains the plaintext")
	}
	for _, s := range []Sealed{s1, s2} {
		pt, err := kr.Open(s, ad)
		if err != nil {
			t.Fatal(err)
		}
		if string(pt) != secret {
			t.Fatal("round trip changed the plaintext")
		}
	}
	// Empty plaintext is legal and round-trips too.
	s3, err := kr.Seal(nil, ad)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := kr.Open(s3, ad); err != nil || len(pt) != 0 {
		t.Fatalf("empty round trip = %q, %v", pt, err)
	}
	if _, err := kr.Seal([]byte("x"), AD{UserID: "u", Provider: "p"}); err == nil {
		t.Fatal("sealing for record version 0 succeeded")
	}
}

func TestTamperedRecordsFailAndReturnNothing(t *testing.T) {
	kr, err := FromKeys(map[int][]byte{1: randKey(t), 2: randKey(t)}, 2)
	if err != nil {
		t.Fatal(err)
	}
	ad := AD{UserID: "usr_alice", Provider: "claude", Version: 3}
	good, err := kr.Seal([]byte(secret), ad)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(b []byte, i int) []byte {
		c := bytes.Clone(b)
		c[i] ^= 0x01
		return c
	}
	cases := []struct {
		name string
		s    Sealed
		ad   AD
		want error
	}{
		{"ciphertext first byte", Sealed{good.KeyVersion, good.Nonce, flip(good.Ciphertext, 0)}, ad, ErrAuth},
		{"ciphertext tag byte", Sealed{good.KeyVersion, good.Nonce, flip(good.Ciphertext, len(good.Ciphertext)-1)}, ad, ErrAuth},
		{"ciphertext truncated", Sealed{good.KeyVersion, good.Nonce, good.Ciphertext[:len(good.Ciphertext)-1]}, ad, ErrAuth},
		{"ciphertext empty", Sealed{good.KeyVersion, good.Nonce, nil}, ad, ErrAuth},
		{"nonce", Sealed{good.KeyVersion, flip(good.Nonce, 5), good.Ciphertext}, ad, ErrAuth},
		{"nonce short", Sealed{good.KeyVersion, good.Nonce[:8], good.Ciphertext}, ad, ErrAuth},
		{"key version of another existing key", Sealed{1, good.Nonce, good.Ciphertext}, ad, ErrAuth},
		{"key version unknown", Sealed{9, good.Nonce, good.Ciphertext}, ad, ErrUnknownKey},
		{"wrong user", good, AD{UserID: "usr_mallory", Provider: "claude", Version: 3}, ErrAuth},
		{"wrong provider", good, AD{UserID: "usr_alice", Provider: "codex", Version: 3}, ErrAuth},
		{"older record version", good, AD{UserID: "usr_alice", Provider: "claude", Version: 2}, ErrAuth},
		{"newer record version", good, AD{UserID: "usr_alice", Provider: "claude", Version: 4}, ErrAuth},
		// Length prefixes keep field boundaries: moving a character from
		// one field to the next is a different AD.
		{"shifted field boundary", good, AD{UserID: "usr_alic", Provider: "eclaude", Version: 3}, ErrAuth},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pt, err := kr.Open(c.s, c.ad)
			if pt != nil {
				t.Fatalf("tampered record returned %d bytes of plaintext", len(pt))
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if c.want == ErrAuth && !strings.Contains(err.Error(), "failed authentication") {
				t.Fatalf("error does not say it failed authentication: %v", err)
			}
			assertClean(t, err, secret, "SUPERSECRET", string(good.Ciphertext), base64.StdEncoding.EncodeToString(good.Ciphertext))
		})
	}
	// The untouched record still opens: the failures above are the tampering.
	if pt, err := kr.Open(good, ad); err != nil || string(pt) != secret {
		t.Fatalf("untampered record: %v", err)
	}
}

func TestKeyFileCreatedOnFirstStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	kr, err := Open(dir, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, KeyFileName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %04o, want 0600", fi.Mode().Perm())
	}
	var f keyFile
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("key file is not JSON: %v", err)
	}
	if f.Format != 1 || f.Current != 1 || len(f.Keys) != 1 || f.Keys[0].Version != 1 || f.Keys[0].CreatedAt.IsZero() {
		t.Fatalf("key file = format %d current %d, %d keys", f.Format, f.Current, len(f.Keys))
	}
	raw, err := base64.StdEncoding.DecodeString(f.Keys[0].Key)
	if err != nil || len(raw) != KeySize {
		t.Fatalf("key is %d bytes (%v), want %d", len(raw), err, KeySize)
	}
	if bytes.Equal(raw, make([]byte, KeySize)) {
		t.Fatal("key is all zeros")
	}
	if kr.Current() != 1 || kr.Path() != path || kr.FromEnv() {
		t.Fatalf("keyring current=%d path=%q env=%v", kr.Current(), kr.Path(), kr.FromEnv())
	}

	// A second start reuses the same key: a record sealed by the first
	// keyring opens with the second.
	ad := AD{UserID: "usr_a", Provider: "dev", Version: 1}
	s, err := kr.Seal([]byte(secret), ad)
	if err != nil {
		t.Fatal(err)
	}
	kr2, err := Open(dir, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := kr2.Open(s, ad); err != nil || string(pt) != secret {
		t.Fatalf("reopened keyring cannot open a record: %v", err)
	}
	b2, _ := os.ReadFile(path)
	if !bytes.Equal(b, b2) {
		t.Fatal("second start rewrote the key file")
	}

	// A key file others can read is refused, without quoting its contents.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir, noEnv)
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("group-readable key file: err = %v", err)
	}
	assertClean(t, err, f.Keys[0].Key)
}

func TestConcurrentFirstStartsAgreeOnOneKey(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	krs := make([]*Keyring, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { krs[i], errs[i] = Open(dir, noEnv) })
	}
	wg.Wait()
	ad := AD{UserID: "usr_a", Provider: "dev", Version: 1}
	s, err := krs[0].Seal([]byte("x"), ad)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("open %d: %v", i, errs[i])
		}
		if _, err := krs[i].Open(s, ad); err != nil {
			t.Fatalf("keyring %d holds another key: %v", i, err)
		}
	}
}

func TestBrokenKeyFilesAreRefusedWithoutLeaking(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(randKey(t))
	cases := map[string]string{
		"syntax":          `{"format":1,"current":1,"keys":[{"version":1,"key":"` + key + `"` + "\n",
		"unknown field":   `{"format":1,"current":1,"keys":[{"version":1,"key":"` + key + `","secret":"` + key + `"}]}`,
		"wrong type":      `{"format":1,"current":1,"keys":[{"version":"` + key + `","key":"` + key + `"}]}`,
		"short key":       `{"format":1,"current":1,"keys":[{"version":1,"key":"` + key[:20] + `"}]}`,
		"not base64":      `{"format":1,"current":1,"keys":[{"version":1,"key":"` + key[:40] + `!!!!"}]}`,
		"no current key":  `{"format":1,"current":2,"keys":[{"version":1,"key":"` + key + `"}]}`,
		"repeated":        `{"format":1,"current":1,"keys":[{"version":1,"key":"` + key + `"},{"version":1,"key":"` + key + `"}]}`,
		"unknown format":  `{"format":7,"current":1,"keys":[{"version":1,"key":"` + key + `"}]}`,
		"lines, not JSON": "1:" + key + "\n",
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, KeyFileName), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Open(dir, noEnv)
			if err == nil {
				t.Fatal("broken key file accepted")
			}
			assertClean(t, err, key, key[:20], key[:40], key[4:16])
		})
	}
}

func TestEnvironmentKeys(t *testing.T) {
	k1, k2 := randKey(t), randKey(t)
	b1, b2 := base64.StdEncoding.EncodeToString(k1), base64.StdEncoding.EncodeToString(k2)
	dir := t.TempDir()

	old, err := Open(dir+"/unused", envMap(map[string]string{EnvKey: b1}))
	if err != nil {
		t.Fatal(err)
	}
	if old.Current() != 1 || !old.FromEnv() || old.Path() != "" {
		t.Fatalf("env keyring current=%d env=%v path=%q", old.Current(), old.FromEnv(), old.Path())
	}
	if _, err := os.Stat(dir + "/unused"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("an environment keyring created the data dir or key file")
	}
	ad := AD{UserID: "usr_a", Provider: "gemini", Version: 1}
	s1, err := old.Seal([]byte(secret), ad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Rotate(t.Context()); !errors.Is(err, ErrEnvKeyring) {
		t.Fatalf("rotate with env keys: %v", err)
	}

	// The rotated deployment: v2 current, v1 kept as an old key.
	kr, err := Open("", envMap(map[string]string{EnvKey: b2, EnvKeyVersion: "2", EnvOldKeys: "1:" + b1}))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := kr.Open(s1, ad); err != nil || string(pt) != secret {
		t.Fatalf("old record with old env key: %v", err)
	}
	s2, err := kr.Seal([]byte(secret), ad)
	if err != nil || s2.KeyVersion != 2 {
		t.Fatalf("seal with env v2: key v%d, %v", s2.KeyVersion, err)
	}
	if ks := kr.Keys(); len(ks) != 2 || ks[0].Version != 1 || ks[0].Current || ks[1].Version != 2 || !ks[1].Current {
		t.Fatalf("keys = %+v", ks)
	}

	bad := []map[string]string{
		{EnvKey: b1[:20]},
		{EnvKey: "not base64 at all " + b1},
		{EnvKey: b1, EnvKeyVersion: "zero"},
		{EnvKey: b1, EnvKeyVersion: "0"},
		{EnvKey: b2, EnvKeyVersion: "2", EnvOldKeys: b1},
		{EnvKey: b2, EnvKeyVersion: "2", EnvOldKeys: "1:" + b1[:30]},
		{EnvKey: b2, EnvKeyVersion: "2", EnvOldKeys: "2:" + b1},
	}
	for i, env := range bad {
		_, err := Open(dir, envMap(env))
		if err == nil {
			t.Fatalf("bad env %d accepted", i)
		}
		assertClean(t, err, b1, b2, b1[:20], b1[:30], b1[8:24])
	}
}

func readKeys(t *testing.T, dir string) keyFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	var f keyFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestRotateKeepsOldKeysAndOtherProcessesFollow(t *testing.T) {
	dir := t.TempDir()
	kr, err := Open(dir, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	// daemon stands for a long-running process holding its own keyring
	// while `hangar keys rotate` (kr) rotates the file.
	daemon, err := Open(dir, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	ad := AD{UserID: "usr_a", Provider: "codex", Version: 1}
	s1, err := kr.Seal([]byte(secret), ad)
	if err != nil {
		t.Fatal(err)
	}
	before := readKeys(t, dir)
	// Make sure the rewrite is visible even on coarse mtime clocks: the
	// rename gives a new inode anyway, this only removes doubt.
	time.Sleep(10 * time.Millisecond)
	v, err := kr.Rotate(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if v != 2 || kr.Current() != 2 {
		t.Fatalf("rotate = v%d, current %d", v, kr.Current())
	}
	after := readKeys(t, dir)
	if after.Current != 2 || len(after.Keys) != 2 || after.Keys[0].Key != before.Keys[0].Key || after.Keys[1].Key == before.Keys[0].Key {
		t.Fatalf("key file after rotate: current %d, %d keys", after.Current, len(after.Keys))
	}
	if fi, _ := os.Stat(filepath.Join(dir, KeyFileName)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode after rotate = %04o", fi.Mode().Perm())
	}
	if pt, err := kr.Open(s1, ad); err != nil || string(pt) != secret {
		t.Fatalf("v1 record after rotate: %v", err)
	}
	s2, err := daemon.Seal([]byte(secret), ad)
	if err != nil {
		t.Fatal(err)
	}
	if s2.KeyVersion != 2 {
		t.Fatalf("a keyring loaded before the rotation still seals with v%d", s2.KeyVersion)
	}
	if ks := kr.Keys(); len(ks) != 2 || !ks[1].Current || ks[0].Current {
		t.Fatalf("keys = %+v", ks)
	}
	if v, err := kr.Rotate(t.Context()); err != nil || v != 3 {
		t.Fatalf("second rotate = v%d, %v", v, err)
	}
	if pt, err := daemon.Open(s1, ad); err != nil || string(pt) != secret {
		t.Fatalf("v1 record after two rotations: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	unlock, err := lockFile(t.Context(), filepath.Join(dir, KeyFileName+".lock"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = kr.Rotate(ctx)
	unlock()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("rotate while another holds the lock, cancelled: %v", err)
	}
}
