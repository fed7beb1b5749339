package seal

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKeyFileOwnedByAnotherUserIsRefused: a key file the daemon's user
// does not own (planted by, or writable for, another account) is refused
// before its keys are used, without quoting it. Changing a file's owner
// needs root, so the test runs as root only (as make test does).
func TestKeyFileOwnedByAnotherUserIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	dir := t.TempDir()
	if _, err := Open(dir, noEnv); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, KeyFileName)
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir, noEnv)
	if err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("open a key file owned by another user: %v, want a refusal naming the owner", err)
	}
	b, _ := os.ReadFile(path)
	if strings.Contains(err.Error(), string(b[:20])) {
		t.Fatal("the error quotes the key file")
	}
	// Back to the daemon's user: accepted again.
	if err := os.Chown(path, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, noEnv); err != nil {
		t.Fatalf("own key file refused: %v", err)
	}
}
