package vm

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestHashDirDetectsDamage: the snapshot checksum changes when a file is
// truncated, altered in place, renamed or added, and protectAndHash leaves
// the directory 0700 and its files 0600.
func TestHashDirDetectsDamage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "snap")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	if err := os.WriteFile(state, []byte("memory and devices"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "snapshot.json"), []byte(`{"driver":"qemu"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	sum, err := protectAndHash(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", fi.Mode().Perm())
	}
	for _, n := range []string{"state", "snapshot.json"} {
		if fi, _ := os.Stat(filepath.Join(dir, n)); fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v", n, fi.Mode().Perm())
		}
	}
	same := func() bool {
		s, err := hashDir(dir)
		return err == nil && s == sum
	}
	if !same() {
		t.Fatal("checksum not stable")
	}
	if err := os.Truncate(state, 6); err != nil {
		t.Fatal(err)
	}
	if same() {
		t.Fatal("truncation not detected")
	}
	_ = os.WriteFile(state, []byte("memory and devicez"), 0o600)
	if same() {
		t.Fatal("a changed byte not detected")
	}
	_ = os.WriteFile(state, []byte("memory and devices"), 0o600)
	if !same() {
		t.Fatal("restored content not accepted")
	}
	_ = os.WriteFile(filepath.Join(dir, "extra"), nil, 0o600)
	if same() {
		t.Fatal("an added file not detected")
	}
	os.Remove(filepath.Join(dir, "extra"))
	os.Remove(state)
	os.Remove(filepath.Join(dir, "snapshot.json"))
	if _, err := hashDir(dir); err == nil {
		t.Fatal("an empty snapshot dir hashed without error")
	}
}

// TestIdleBookkeeping: a VM never seen starts counting now, a call in
// flight keeps it busy (never idle) until it ends, and a claim holds for
// requeueAfter unless released.
func TestIdleBookkeeping(t *testing.T) {
	var hb hibernator
	now := time.Now()
	if d := hb.idleFor("a", now); d != 0 {
		t.Fatalf("unseen vm idle %v", d)
	}
	if d := hb.idleFor("a", now.Add(time.Hour)); d != time.Hour {
		t.Fatalf("idle %v, want 1h", d)
	}
	done := hb.begin("a")
	if d := hb.idleFor("a", time.Now().Add(time.Hour)); d != 0 {
		t.Fatalf("busy vm idle %v", d)
	}
	done()
	if d := hb.idleFor("a", time.Now().Add(time.Minute)); d < 59*time.Second {
		t.Fatalf("idle after the call ended %v, want about 1m", d)
	}
	if !hb.claim("a", now) || hb.claim("a", now.Add(time.Minute)) {
		t.Fatal("a second claim within requeueAfter was granted")
	}
	if !hb.claim("a", now.Add(requeueAfter+time.Second)) {
		t.Fatal("claim not granted after requeueAfter")
	}
	hb.unclaim("a")
	if !hb.claim("a", now.Add(requeueAfter+2*time.Second)) {
		t.Fatal("claim not granted after unclaim")
	}
}
