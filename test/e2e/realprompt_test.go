package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/login"
	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// fakeJWT is an unsigned JWT with claims: the shape codex reads its
// account from (it does not verify the signature of its own stored token).
func fakeJWT(claims map[string]any) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(map[string]string{"alg": "RS256", "typ": "JWT"}) + "." + enc(claims) + "." + base64.RawURLEncoding.EncodeToString([]byte("not-a-signature"))
}

// sealCredential stores files as userID's provider credential, as a login
// would have captured them.
func sealCredential(t *testing.T, h *harness, userID, provider string, files map[string][]byte) {
	t.Helper()
	recipes, err := login.LoadRecipes()
	if err != nil {
		t.Fatal(err)
	}
	r := recipes[provider]
	if err := r.CheckFiles(files); err != nil {
		t.Fatalf("test credential for %s: %v", provider, err)
	}
	keys, err := seal.Open(h.dataDir, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	plain, err := login.SealFiles(r, files)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := keys.SealRecord(store.Credential{OwnerID: userID, Provider: provider, Version: 1, Metadata: login.MetadataJSON(r, files)}, plain)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.d.Store().PutCredential(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
}

// TestRealCLIsWithDeliveredCredentials puts credentials shaped like real
// codex and Claude Code logins into the store, lets hangar deliver them to
// a CLI VM, and asks the real pinned CLIs (offline: the VM has no network)
// whether they are logged in; then a real codex prompt must fail as
// "unreachable" within its timeout instead of hanging.
func TestRealCLIsWithDeliveredCredentials(t *testing.T) {
	requireVMs(t, "cli")
	h := startDaemon(t, nil)
	ctx := context.Background()
	u, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "rita"})
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(h.url, u.APIKey)
	exp := time.Now().Add(24 * time.Hour)
	idToken := fakeJWT(map[string]any{
		"iss": "https://auth.openai.com", "aud": "app_EMoamEEZ73f0CkXaXp7hrann", "email": "rita@example.com", "email_verified": true,
		"exp": exp.Unix(), "iat": time.Now().Unix(),
		"https://api.openai.com/auth": map[string]any{"chatgpt_plan_type": "plus", "chatgpt_account_id": "acct-rita", "chatgpt_user_id": "user-rita"},
	})
	codexAuth, _ := json.Marshal(map[string]any{
		"auth_mode": "chatgpt", "OPENAI_API_KEY": nil,
		"tokens":       map[string]any{"id_token": idToken, "access_token": fakeJWT(map[string]any{"exp": exp.Unix(), "email": "rita@example.com"}), "refresh_token": "rt-codex-offline-test-token", "account_id": "acct-rita"},
		"last_refresh": time.Now().UTC().Format(time.RFC3339Nano),
	})
	sealCredential(t, h, u.ID, "codex", map[string][]byte{"/home/hangar/.codex/auth.json": codexAuth})
	claudeCreds, _ := json.Marshal(map[string]any{"claudeAiOauth": map[string]any{
		"accessToken": "sk-ant-oat01-offline-test-access", "refreshToken": "sk-ant-ort01-offline-test-refresh",
		"expiresAt": exp.UnixMilli(), "scopes": []string{"user:inference", "user:profile"}, "subscriptionType": "pro",
	}})
	sealCredential(t, h, u.ID, "claude", map[string][]byte{"/home/hangar/.claude/.credentials.json": claudeCreds})

	// A CLI VM gets both on ready (their leases are free).
	vm := h.createReady(c, api.KindCLI, 4*time.Minute)
	if err := eventually(time.Minute, func() bool {
		v, err := c.GetVM(ctx, vm.ID)
		return err == nil && len(v.Providers) == 2
	}); err != nil {
		v, _ := c.GetVM(ctx, vm.ID)
		t.Fatalf("the VM holds %v, want claude and codex", v.Providers)
	}
	run := func(argv ...string) api.ExecResponse {
		out, err := c.Exec(ctx, vm.ID, api.ExecRequest{Argv: argv, User: "hangar", Env: map[string]string{"HOME": "/home/hangar"}, Cwd: "/home/hangar", TimeoutS: 90})
		if err != nil {
			t.Fatalf("exec %v: %v", argv, err)
		}
		return out
	}
	st := run("codex", "login", "status")
	t.Logf("codex login status: exit %d\n%s%s", st.ExitCode, st.Stdout, st.Stderr)
	if st.ExitCode != 0 || !strings.Contains(st.Stdout+st.Stderr, "Logged in using ChatGPT") {
		t.Fatalf("the real codex does not recognise the delivered auth.json: exit %d %q %q", st.ExitCode, st.Stdout, st.Stderr)
	}
	st = run("claude", "auth", "status")
	t.Logf("claude auth status (offline): exit %d\n%s%s", st.ExitCode, st.Stdout, st.Stderr)

	// A real codex prompt without any network: a failure naming the
	// provider as unreachable, well within its timeout.
	start := time.Now()
	r := runPromptSSE(t, c, api.CreatePromptRequest{Provider: "codex", Prompt: "say hi", VMID: vm.ID, TimeoutS: 60}, 4*time.Minute)
	took := time.Since(start)
	var raw strings.Builder
	_ = c.PromptLog(ctx, r.prompt.ID, &raw)
	t.Logf("real codex prompt: %s after %s: %+v (events %s); its raw output:\n%s", r.final, took, r.end, r.types(), raw.String())
	if r.final != api.PromptEventFailed || r.end.Reason != api.ReasonUnreachable || !strings.Contains(r.end.Message, "unreachable") {
		t.Fatalf("real codex prompt offline: %s %+v, want failed as unreachable", r.final, r.end)
	}

	// The fake claude and gemini (test/fakecli) print those CLIs' stream
	// formats; through the agent and the runner they become the common
	// events: output, a tool call and its result, usage, the end.
	bin := testutil.BuildBinary(t, "../fakecli", "CGO_ENABLED=0")
	for _, name := range []string{"claude", "gemini"} {
		f, err := os.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		err = h.admin.PutFile(ctx, vm.ID, "/usr/local/bin/"+name, 0o755, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	geminiCreds, _ := json.Marshal(map[string]any{"access_token": "ya29.offline-test-access-token", "refresh_token": "1//offline-test-refresh-token", "scope": "https://www.googleapis.com/auth/cloud-platform", "token_type": "Bearer", "expiry_date": exp.UnixMilli()})
	sealCredential(t, h, u.ID, "gemini", map[string][]byte{"/home/hangar/.gemini/oauth_creds.json": geminiCreds})
	for _, tc := range []struct{ provider, answer string }{
		{"claude", "fake-claude answer: "},
		{"gemini", "fake-gemini answer: "},
	} {
		r := runPromptSSE(t, c, api.CreatePromptRequest{Provider: tc.provider, Prompt: "list the files", VMID: vm.ID, TimeoutS: 60}, 2*time.Minute)
		var tools []string
		for _, e := range r.events {
			if e.Type == api.PromptEventTool {
				var tl api.PromptTool
				_ = json.Unmarshal(e.Data, &tl)
				tools = append(tools, tl.Phase+":"+tl.Name)
			}
		}
		p, _ := c.GetPrompt(ctx, r.prompt.ID)
		if r.final != api.PromptEventCompleted || !strings.Contains(r.text, tc.answer+"selif eht tsil") ||
			len(tools) != 2 || !strings.HasPrefix(tools[0], "call:") || !strings.HasPrefix(tools[1], "result:") ||
			p.Usage == nil || p.Usage.OutputTokens == 0 {
			t.Fatalf("fake %s prompt: %s %+v, text %q, tools %v, usage %+v, events %s", tc.provider, r.final, r.end, r.text, tools, p.Usage, r.types())
		}
		t.Logf("fake %s: events %s, tools %v, usage %+v", tc.provider, r.types(), tools, *p.Usage)
	}

	// A CLI (code in the guest) that floods its output cannot make the
	// daemon store it all: past the bound the stream says it was cut.
	flood := "#!/bin/sh\nhead -c 12000000 /dev/zero | tr '\\000' a | fold -w 1000\n"
	if err := h.admin.PutFile(ctx, vm.ID, "/usr/local/bin/claude", 0o755, strings.NewReader(flood)); err != nil {
		t.Fatal(err)
	}
	r = runPromptSSE(t, c, api.CreatePromptRequest{Provider: "claude", Prompt: "flood", VMID: vm.ID, TimeoutS: 120}, 4*time.Minute)
	if r.final != api.PromptEventCompleted || !strings.Contains(r.text, "[hangar: output cut after 8 MiB") || len(r.text) > 8<<20+4096 {
		t.Fatalf("flooding CLI: %s %+v, %d bytes of output stored (cut marker present: %v)", r.final, r.end, len(r.text), strings.Contains(r.text, "output cut"))
	}
	t.Logf("flooding CLI: %d bytes stored of 12 MB printed, in %d events", len(r.text), len(r.events))
}
