package image

import (
	"strings"
	"testing"
)

// TestNPMEnvHoldsNoDaemonSecrets: npm runs packages' lifecycle scripts as
// root on the host during image builds; they must not see the daemon's
// sealing key or database URL, and must find the node being installed.
func TestNPMEnvHoldsNoDaemonSecrets(t *testing.T) {
	t.Setenv("HANGAR_SEAL_KEY", "seal-key-must-not-leak")
	t.Setenv("HANGAR_DATABASE", "postgres://u:pw-must-not-leak@db/h")
	t.Setenv("PATH", "/usr/bin:/bin")
	env := npmEnv("/build/root/usr/local")
	joined := strings.Join(env, "\n")
	if strings.Contains(joined, "must-not-leak") {
		t.Fatalf("npm's environment holds daemon secrets:\n%s", joined)
	}
	if !strings.Contains(joined, "PATH=/build/root/usr/local/bin:/usr/bin:/bin") {
		t.Fatalf("npm's PATH does not lead with the installed node:\n%s", joined)
	}
}
