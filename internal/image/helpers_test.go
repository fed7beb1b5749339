package image

import (
	"os"
	"testing"
)

// skipOrFail skips with a reason, except under CI=true where a missing
// prerequisite must fail the run instead of silently testing nothing.
func skipOrFail(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true and prerequisite missing: " + reason)
	}
	t.Skip(reason)
}
