package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// TestRealCodexURLRecognised runs the real pinned codex CLI from the image
// in a browser VM: without internet it still starts its callback listener
// and prints its authorization URL, and the codex recipe must recognise it
// and open it in the VM's browser (the page itself cannot load here).
func TestRealCodexURLRecognised(t *testing.T) {
	requireVMs(t, "browser")
	h := startDaemon(t, nil)
	ctx := context.Background()
	u, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "frank"})
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(h.url, u.APIKey)
	s, err := c.CreateAuthSession(ctx, api.CreateAuthSessionRequest{Provider: "codex", Mode: "browser"})
	if err != nil {
		t.Fatal(err)
	}
	s = waitSession(t, c, s.ID, 4*time.Minute, "the real codex's URL", func(s api.AuthSession) bool { return s.State == api.AuthAwaitingUser })
	// codex 0.169.0 (pinned) redirects to 127.0.0.1; older versions used
	// localhost.
	if !strings.HasPrefix(s.OAuthURL, "https://auth.openai.com/oauth/authorize?") || !strings.Contains(s.OAuthURL, "redirect_uri=http%3A%2F%2F127.0.0.1%3A1455%2Fauth%2Fcallback") {
		t.Fatalf("real codex URL not as the recipe expects: %q", s.OAuthURL)
	}
	t.Logf("real codex printed %s…", s.OAuthURL[:60])
	if _, err := c.CancelAuthSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}
