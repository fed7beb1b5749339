package e2e

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// installFakeCLIs makes every login VM of h carry the fake codex, claude
// and gemini (test/fakecli) in place of the real ones, which need the
// internet to get past printing their URL.
func installFakeCLIs(t *testing.T, h *harness) {
	t.Helper()
	bin := testutil.BuildBinary(t, "../fakecli", "CGO_ENABLED=0")
	h.d.Logins().SetPrepareVM(func(ctx context.Context, link *agentlink.Client) error {
		for _, name := range []string{"fakecli", "codex", "claude", "gemini"} {
			f, err := os.Open(bin)
			if err != nil {
				return err
			}
			_, err = link.PutFile(ctx, agentlink.PutFileRequest{Path: "/usr/local/bin/" + name, Mode: 0o755}, f)
			f.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// redirect plays the provider: it sends the VM's browser-side redirect to
// the CLI's callback listener inside the VM, with the state from the URL.
func redirect(t *testing.T, h *harness, s api.AuthSession, code string) {
	t.Helper()
	u, err := url.Parse(s.OAuthURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	cb := q.Get("redirect_uri") + "?code=" + url.QueryEscape(code) + "&state=" + url.QueryEscape(q.Get("state"))
	out, err := h.admin.Exec(context.Background(), s.VMID, api.ExecRequest{Argv: []string{"/usr/local/bin/fakecli", "get", cb}, User: "hangar", TimeoutS: 30})
	if err != nil || out.ExitCode != 0 {
		t.Fatalf("callback %s: %v %+v", q.Get("redirect_uri"), err, out)
	}
}

func startSession(t *testing.T, c *client.Client, provider, mode string) api.AuthSession {
	t.Helper()
	var s api.AuthSession
	if err := c.Do(context.Background(), http.MethodPost, "/api/v1/auth/sessions", api.CreateAuthSessionRequest{Provider: provider, Mode: mode}, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestProviderRecipes runs each real provider's recipe against a fake CLI
// that reproduces that CLI's login: prompts, printed URL, local callback
// with state, the credential file at its real path and shape.
func TestProviderRecipes(t *testing.T) {
	requireVMs(t, "browser", "cli")
	// One user drives several providers' logins here, two browser VMs at a
	// time (the default per-user cap is one).
	h := startDaemon(t, func(c *config.Config) { c.MaxBrowserVMsPerUser = 2 })
	installFakeCLIs(t, h)
	ctx := context.Background()
	u, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(h.url, u.APIKey)

	check := func(t *testing.T, provider string, want func(api.Credential) bool) {
		t.Helper()
		var creds []api.Credential
		if err := c.Do(ctx, http.MethodGet, "/api/v1/credentials", nil, &creds); err != nil {
			t.Fatal(err)
		}
		for _, cr := range creds {
			if cr.Provider == provider {
				if !want(cr) {
					t.Fatalf("%s credential metadata: %+v", provider, cr)
				}
				return
			}
		}
		t.Fatalf("no %s credential in %+v", provider, creds)
	}

	t.Run("codex browser", func(t *testing.T) {
		s := startSession(t, c, "codex", "browser")
		s = waitSession(t, c, s.ID, 4*time.Minute, "the OAuth URL", func(s api.AuthSession) bool { return s.State == api.AuthAwaitingUser })
		if !strings.HasPrefix(s.OAuthURL, "https://auth.openai.com/oauth/authorize?") || s.LiveViewURL == "" {
			t.Fatalf("session %+v", s)
		}
		redirect(t, h, s, "c0dex")
		waitSession(t, c, s.ID, time.Minute, "completed", func(s api.AuthSession) bool { return s.State == api.AuthCompleted })
		check(t, "codex", func(cr api.Credential) bool {
			return cr.Account == "acct_fake123" && cr.Plan == "chatgpt" && len(cr.Files) == 1 && cr.Files[0] == "/home/hangar/.codex/auth.json"
		})
	})

	t.Run("gemini browser with consent prompt", func(t *testing.T) {
		s := startSession(t, c, "gemini", "browser")
		s = waitSession(t, c, s.ID, 4*time.Minute, "the OAuth URL", func(s api.AuthSession) bool { return s.State == api.AuthAwaitingUser })
		if !strings.HasPrefix(s.OAuthURL, "https://accounts.google.com/o/oauth2/v2/auth?") {
			t.Fatalf("oauth url %q", s.OAuthURL)
		}
		redirect(t, h, s, "g3m")
		waitSession(t, c, s.ID, time.Minute, "completed", func(s api.AuthSession) bool { return s.State == api.AuthCompleted })
		check(t, "gemini", func(cr api.Credential) bool { return cr.ExpiresAt != nil && cr.ExpiresAt.After(time.Now()) })
	})

	t.Run("claude paste mode", func(t *testing.T) {
		s := startSession(t, c, "claude", "paste")
		s = waitSession(t, c, s.ID, 4*time.Minute, "the paste prompt", func(s api.AuthSession) bool { return s.State == api.AuthAwaitingUser })
		if s.LiveViewURL != "" || !strings.HasPrefix(s.OAuthURL, "https://claude.ai/oauth/authorize?") {
			t.Fatalf("paste session %+v", s)
		}
		pu, _ := url.Parse(s.OAuthURL)
		state := pu.Query().Get("state")
		// A wrong code is refused by the CLI and the session keeps waiting.
		if err := c.Do(ctx, http.MethodPost, "/api/v1/auth/sessions/"+s.ID+"/input", api.AuthInputRequest{Text: "c1aude#wrongstate"}, nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if got, _ := getSession(c, s.ID); got.State != api.AuthAwaitingUser {
			t.Fatalf("after a wrong code the session is %s: %s", got.State, got.Error)
		}
		if err := c.Do(ctx, http.MethodPost, "/api/v1/auth/sessions/"+s.ID+"/input", api.AuthInputRequest{Text: "c1aude#" + state}, nil); err != nil {
			t.Fatal(err)
		}
		waitSession(t, c, s.ID, time.Minute, "completed", func(s api.AuthSession) bool { return s.State == api.AuthCompleted })
		check(t, "claude", func(cr api.Credential) bool { return cr.Plan == "max" && cr.ExpiresAt != nil })
	})

	t.Run("cancel and bad input", func(t *testing.T) {
		if err := c.Do(ctx, http.MethodPost, "/api/v1/auth/sessions", api.CreateAuthSessionRequest{Provider: "nope"}, nil); !client.IsStatus(err, 400) {
			t.Fatalf("unknown provider: %v", err)
		}
		if err := c.Do(ctx, http.MethodPost, "/api/v1/auth/sessions", api.CreateAuthSessionRequest{Provider: "codex", Mode: "paste"}, nil); !client.IsStatus(err, 400) {
			t.Fatalf("unsupported mode: %v", err)
		}
		s := startSession(t, c, "codex", "browser")
		var out api.AuthSession
		if err := c.Do(ctx, http.MethodPost, "/api/v1/auth/sessions/"+s.ID+"/cancel", nil, &out); err != nil {
			t.Fatal(err)
		}
		got := waitSession(t, c, s.ID, time.Minute, "cancelled", func(s api.AuthSession) bool { return s.State == api.AuthCancelled })
		if got.Error == "" || got.FinishedAt == nil {
			t.Fatalf("cancelled session %+v", got)
		}
		// Another user cannot see it.
		if _, err := getSession(h.adminAs(t, "dave"), s.ID); !client.IsStatus(err, 404) {
			t.Fatalf("another user reads the session: %v", err)
		}
	})
}

func getSession(c *client.Client, id string) (api.AuthSession, error) {
	var s api.AuthSession
	err := c.Do(context.Background(), http.MethodGet, "/api/v1/auth/sessions/"+id, nil, &s)
	return s, err
}

// adminAs creates a user and returns a client with their key.
func (h *harness) adminAs(t *testing.T, name string) *client.Client {
	t.Helper()
	u, err := h.admin.CreateUser(context.Background(), api.CreateUserRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return client.New(h.url, u.APIKey)
}

// TestLoginHeartbeat: a session nobody watches ends as timeout (its VM is
// destroyed by the queue); one that gets heartbeats lives past that.
func TestLoginHeartbeat(t *testing.T) {
	requireVMs(t, "cli")
	h := startDaemon(t, func(c *config.Config) { c.LoginHeartbeatTimeout = config.Duration(10 * time.Second) })
	ctx := context.Background()
	c := h.adminAs(t, "gina")

	watched := startSession(t, c, "dev", "paste")
	unwatched := startSession(t, c, "dev", "paste")
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Second):
				_ = c.HeartbeatAuthSession(ctx, watched.ID)
			}
		}
	}()
	defer close(stop)

	got := waitSession(t, c, unwatched.ID, 2*time.Minute, "timeout", func(s api.AuthSession) bool { return s.State == api.AuthTimeout })
	if !strings.Contains(got.Error, "heartbeat") {
		t.Fatalf("timeout error %q does not say why", got.Error)
	}
	time.Sleep(5 * time.Second)
	if s, err := getSession(c, watched.ID); err != nil || s.State != api.AuthAwaitingUser {
		t.Fatalf("the watched session is %s (%v), want awaiting_user", s.State, err)
	}
	if got.VMID != "" {
		if err := eventually(time.Minute, func() bool {
			v, err := h.d.Store().GetVM(ctx, got.VMID, "")
			return err == nil && v.State == api.VMDestroyed
		}); err != nil {
			t.Fatalf("the timed-out session's VM %s was not destroyed", got.VMID)
		}
	}
	if _, err := c.CancelAuthSession(ctx, watched.ID); err != nil {
		t.Fatal(err)
	}
}
