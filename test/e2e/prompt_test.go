package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/login"
	"github.com/hangar-vm/hangar/internal/login/devoauth"
	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// loginDevPaste connects the dev provider for c's user through a real
// login: a paste-mode session runs hangar-devcli login in a throwaway CLI
// VM, the test plays the user's browser against the dev OAuth provider
// (sign in, consent) and pastes the code back.
func loginDevPaste(t *testing.T, base string, c *client.Client) {
	t.Helper()
	s := startSession(t, c, "dev", api.ModePaste)
	s = waitSession(t, c, s.ID, 4*time.Minute, "the OAuth URL", func(s api.AuthSession) bool { return s.OAuthURL != "" && s.State == api.AuthAwaitingUser })
	code := devOAuthInBrowser(t, base, s.OAuthURL)
	if err := c.AuthInput(context.Background(), s.ID, code); err != nil {
		t.Fatal(err)
	}
	waitSession(t, c, s.ID, 2*time.Minute, "completion", func(s api.AuthSession) bool { return s.State == api.AuthCompleted })
}

// promptRun is what a prompt streamed.
type promptRun struct {
	prompt api.Prompt
	events []api.PromptEvent
	text   string
	end    api.PromptEnd
	final  string
}

// runPromptSSE creates a prompt and follows its events to the end.
func runPromptSSE(t *testing.T, c *client.Client, req api.CreatePromptRequest, within time.Duration) promptRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	p, err := c.CreatePrompt(ctx, req)
	if err != nil {
		t.Fatalf("create prompt: %v", err)
	}
	r := promptRun{prompt: p}
	err = c.FollowPrompt(ctx, p.ID, func(e api.PromptEvent) error {
		r.add(e)
		return nil
	})
	if err != nil {
		t.Fatalf("follow prompt %s: %v (events so far %d)", p.ID, err, len(r.events))
	}
	return r
}

func (r *promptRun) add(e api.PromptEvent) {
	r.events = append(r.events, e)
	switch e.Type {
	case api.PromptEventOutput:
		var o api.PromptOutput
		_ = json.Unmarshal(e.Data, &o)
		r.text += o.Text
	case api.PromptEventCompleted, api.PromptEventFailed:
		_ = json.Unmarshal(e.Data, &r.end)
		r.final = e.Type
	}
}

func (r promptRun) types() string {
	var ts []string
	for _, e := range r.events {
		if len(ts) == 0 || ts[len(ts)-1] != e.Type {
			ts = append(ts, e.Type)
		}
	}
	return strings.Join(ts, ",")
}

// devCredential opens the stored dev credential of user: its version and
// the auth.json the store holds.
func devCredential(t *testing.T, h *harness, userID string) (int64, map[string]any, []byte) {
	t.Helper()
	ctx := context.Background()
	c, err := h.d.Store().GetCredential(ctx, userID, "dev")
	if err != nil {
		t.Fatalf("stored dev credential: %v", err)
	}
	keys, err := seal.Open(h.dataDir, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	plain, err := keys.OpenRecord(c)
	if err != nil {
		t.Fatal(err)
	}
	files, err := login.OpenFiles(plain)
	if err != nil {
		t.Fatal(err)
	}
	raw := files["/home/hangar/.hangar-dev/auth.json"]
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	return c.Version, doc, raw
}

// TestPromptsEndToEnd is the CLI-VM half of the product with the dev
// provider: a real login, then prompts in a CLI VM created on first use
// stream the dev model's answer over SSE; with an access-token lifetime
// shorter than the test every prompt makes the CLI refresh, and the
// rotated tokens are synced back and re-sealed; the VM is replaced and
// prompts still work without a new login; two VMs never hold the
// credential at once; cancel ends the CLI's process group; SSE resumes
// exactly once; logout removes the files; and no token shows up anywhere.
func TestPromptsEndToEnd(t *testing.T) {
	requireVMs(t, "cli")
	h := startDaemon(t, func(c *config.Config) {
		// Shorter than the CLI's 30 s refresh margin: every prompt
		// refreshes, so rotation is exercised on each one.
		c.DevAccessTokenTTL = config.Duration(20 * time.Second)
		c.CredentialLeaseWait = config.Duration(90 * time.Second)
	})
	ctx := context.Background()
	u, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "pat"})
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(h.url, u.APIKey)
	user, _ := h.d.Store().GetUserByName(ctx, "pat")

	// Before any login: a clear refusal, not a VM boot.
	_, err = c.CreatePrompt(ctx, api.CreatePromptRequest{Provider: "dev", Prompt: "hi"})
	if !isStatus(err, http.StatusConflict) || !strings.Contains(err.Error(), "hangar auth login dev") {
		t.Fatalf("prompt before login: %v, want 409 telling to log in", err)
	}
	_, err = c.CreatePrompt(ctx, api.CreatePromptRequest{Provider: "nope", Prompt: "hi"})
	if !isStatus(err, http.StatusBadRequest) {
		t.Fatalf("prompt for an unknown provider: %v, want 400", err)
	}

	loginDevPaste(t, h.url, c)
	v1, doc1, _ := devCredential(t, h, user.ID)
	firstRefresh := doc1["refresh_token"].(string)
	secrets := map[string]bool{firstRefresh: true, doc1["access_token"].(string): true}

	// 1. The first prompt creates the CLI workspace VM and streams.
	r := runPromptSSE(t, c, api.CreatePromptRequest{Provider: "dev", Prompt: "hello world"}, 6*time.Minute)
	want := devoauth.Answer(devoauth.DemoEmail, "hello world")
	if r.final != api.PromptEventCompleted || r.text != want {
		t.Fatalf("first prompt: %s %+v, text %q, want %q\nevents: %s", r.final, r.end, r.text, want, r.types())
	}
	if got := r.types(); got != "started,output,usage,completed" {
		t.Fatalf("event types %s, want started,output,usage,completed", got)
	}
	vm1 := r.prompt.VMID
	vm, err := c.GetVM(ctx, vm1)
	if err != nil || vm.Kind != api.KindCLI || vm.Purpose != api.PurposeWorkspace || strings.Join(vm.Providers, ",") != "dev" {
		t.Fatalf("workspace vm = %+v, %v; want a cli workspace holding dev", vm, err)
	}
	v2, doc2, raw2 := devCredential(t, h, user.ID)
	if v2 <= v1 || doc2["refresh_token"] == firstRefresh {
		t.Fatalf("after a prompt whose CLI refreshed: version %d (was %d), refresh token rotated %v", v2, v1, doc2["refresh_token"] != firstRefresh)
	}
	secrets[doc2["refresh_token"].(string)], secrets[doc2["access_token"].(string)] = true, true

	// The delivered file: 0600, owned by the CLI user, parent 0700, and
	// byte for byte what the store holds now (the synced-back version).
	st := h.exec(h.admin, vm1, "stat", "-c", "%a %U %u", "/home/hangar/.hangar-dev/auth.json", "/home/hangar/.hangar-dev")
	if got := strings.Fields(st.Stdout); strings.Join(got, " ") != "600 hangar 1000 700 hangar 1000" {
		t.Fatalf("delivered file and its directory: %q, want 600 and 700, owned by hangar (exit %d %s)", st.Stdout, st.ExitCode, st.Stderr)
	}
	var inVM bytes.Buffer
	if _, err := h.admin.GetFile(ctx, vm1, "/home/hangar/.hangar-dev/auth.json", &inVM); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(inVM.Bytes(), raw2) {
		t.Fatal("the credential file in the VM differs from the sealed record after sync-back")
	}

	// The dashboard's prompt box, in a real headless Chromium: the
	// connected provider is offered, the answer streams into the page.
	b := newBrowserTab(t)
	b.do(20*time.Second, "open the dashboard", chromedp.Navigate(dashboardURL(t, h)))
	b.signIn(u.APIKey)
	b.waitJS(30*time.Second, "the prompt box offers dev", `!document.querySelector("#prompt-panel").hidden && document.querySelector("#prompt-provider").value === "dev"`)
	b.do(20*time.Second, "ask from the page",
		chromedp.SendKeys(chromedp.CSS("#prompt-text"), "from the dashboard"),
		chromedp.Click(chromedp.CSS("#prompt-run")),
	)
	b.waitJS(2*time.Minute, "the answer in the page", `document.querySelector("#prompt-state").dataset.state === "completed"`)
	if got := b.text("#prompt-output"); got != devoauth.Answer(devoauth.DemoEmail, "from the dashboard") {
		t.Fatalf("the dashboard shows %q", got)
	}

	// 2. SSE resume: read two events, drop the stream, resume from the
	// last id: every event exactly once, numbered 1..n.
	p2, err := c.CreatePrompt(ctx, api.CreatePromptRequest{Provider: "dev", Prompt: "resume me please"})
	if err != nil {
		t.Fatal(err)
	}
	var got []api.PromptEvent
	errDrop := errors.New("drop")
	err = c.PromptEvents(ctx, p2.ID, 0, func(e api.PromptEvent) error {
		got = append(got, e)
		if len(got) == 2 {
			return errDrop
		}
		return nil
	})
	if !errors.Is(err, errDrop) {
		t.Fatalf("first stream: %v", err)
	}
	if err := c.PromptEvents(ctx, p2.ID, got[len(got)-1].Seq, func(e api.PromptEvent) error { got = append(got, e); return nil }); err != nil {
		t.Fatalf("resumed stream: %v", err)
	}
	var resumed promptRun
	for i, e := range got {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d: resume lost or repeated an event", i, e.Seq)
		}
		resumed.add(e)
	}
	if resumed.final != api.PromptEventCompleted || resumed.text != devoauth.Answer(devoauth.DemoEmail, "resume me please") {
		t.Fatalf("resumed prompt: %s %q", resumed.final, resumed.text)
	}

	// 3. A tool call reaches the common events.
	r = runPromptSSE(t, c, api.CreatePromptRequest{Provider: "dev", Prompt: "use a tool now", Model: "dev-2"}, 3*time.Minute)
	if r.final != api.PromptEventCompleted || r.types() != "started,tool,output,usage,completed" {
		t.Fatalf("tool prompt: %s, events %s", r.final, r.types())
	}

	// 4. Two CLI VMs of one user: concurrent prompts serialise through the
	// lease (or one is refused naming the holder); the dev provider never
	// sees a refresh token twice.
	vm2 := h.createReady(c, api.KindCLI, 4*time.Minute).ID
	var wg sync.WaitGroup
	results := make([]promptRun, 2)
	errs := make([]error, 2)
	for i, id := range []string{vm1, vm2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
			defer cancel()
			p, err := c.CreatePrompt(cctx, api.CreatePromptRequest{Provider: "dev", Prompt: fmt.Sprintf("concurrent %d", i), VMID: id})
			if err != nil {
				errs[i] = err
				return
			}
			results[i].prompt = p
			errs[i] = c.FollowPrompt(cctx, p.ID, func(e api.PromptEvent) error { results[i].add(e); return nil })
		}()
	}
	wg.Wait()
	completed := 0
	for i, id := range []string{vm1, vm2} {
		switch {
		case errs[i] != nil && isStatus(errs[i], http.StatusConflict):
			if !strings.Contains(errs[i].Error(), "vm_") {
				t.Fatalf("409 does not name the holder: %v", errs[i])
			}
		case errs[i] != nil:
			t.Fatalf("concurrent prompt on %s: %v", id, errs[i])
		case results[i].final == api.PromptEventCompleted:
			completed++
		default:
			t.Fatalf("concurrent prompt on %s ended %s: %+v", id, results[i].final, results[i].end)
		}
	}
	if completed == 0 {
		t.Fatal("neither concurrent prompt completed")
	}
	if n := h.d.DevOAuth().RefreshReuses(); n != 0 {
		t.Fatalf("the dev provider saw %d refresh-token reuses", n)
	}
	holders := 0
	for _, id := range []string{vm1, vm2} {
		v, _ := c.GetVM(ctx, id)
		holders += len(v.Providers)
	}
	if holders != 1 {
		t.Fatalf("%d VMs hold the dev lease, want exactly 1", holders)
	}

	// 5. Cancel ends the CLI's whole process group in the VM.
	slow, err := c.CreatePrompt(ctx, api.CreatePromptRequest{Provider: "dev", Prompt: "one two three four five six seven eight nine ten " + devoauth.SlowMarker, VMID: vm1})
	if err != nil {
		t.Fatal(err)
	}
	sawOutput := make(chan struct{})
	go func() {
		var once sync.Once
		_ = c.FollowPrompt(ctx, slow.ID, func(e api.PromptEvent) error {
			if e.Type == api.PromptEventOutput {
				once.Do(func() { close(sawOutput) })
			}
			return nil
		})
	}()
	select {
	case <-sawOutput:
	case <-time.After(3 * time.Minute):
		t.Fatal("the slow prompt produced no output")
	}
	cancelled, err := c.CancelPrompt(ctx, slow.ID)
	if err != nil || cancelled.State != api.PromptCancelled || cancelled.Reason != api.ReasonCancelled {
		t.Fatalf("cancel: %+v, %v", cancelled, err)
	}
	ps := h.exec(h.admin, vm1, "sh", "-c", `for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '[h]angar-devcli prompt' || true`)
	if strings.TrimSpace(ps.Stdout) != "0" {
		t.Fatalf("after cancel, %s hangar-devcli prompt processes remain in the VM", strings.TrimSpace(ps.Stdout))
	}

	// 6. The workspace goes; a new one is created on the next prompt, the
	// credential follows without a new login.
	for _, id := range []string{vm1, vm2} {
		if err := c.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	vBefore, _, _ := devCredential(t, h, user.ID)
	r = runPromptSSE(t, c, api.CreatePromptRequest{Provider: "dev", Prompt: "after replacement"}, 6*time.Minute)
	if r.final != api.PromptEventCompleted || r.prompt.VMID == vm1 || r.prompt.VMID == vm2 {
		t.Fatalf("prompt after the VMs went: %s on %s: %+v", r.final, r.prompt.VMID, r.end)
	}
	vm3 := r.prompt.VMID
	vAfter, docAfter, _ := devCredential(t, h, user.ID)
	if vAfter <= vBefore {
		t.Fatalf("credential version %d after a refreshing prompt in a new VM (was %d)", vAfter, vBefore)
	}
	secrets[docAfter["refresh_token"].(string)], secrets[docAfter["access_token"].(string)] = true, true
	if n := h.d.DevOAuth().RefreshReuses(); n != 0 {
		t.Fatalf("the dev provider saw %d refresh-token reuses", n)
	}

	// A stop syncs back and clears the credential (the stopped disk holds
	// no token); on start it is delivered again and prompts work.
	if _, err := c.StopVM(ctx, vm3); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.GetVM(ctx, vm3); v.State != api.VMStopped || len(v.Providers) != 0 {
		t.Fatalf("stopped VM: %s holding %v", v.State, v.Providers)
	}
	if _, err := c.StartVM(ctx, vm3); err != nil {
		t.Fatal(err)
	}
	r = runPromptSSE(t, c, api.CreatePromptRequest{Provider: "dev", Prompt: "after a restart of the vm", VMID: vm3}, 4*time.Minute)
	if r.final != api.PromptEventCompleted {
		t.Fatalf("prompt after stop/start: %s %+v", r.final, r.end)
	}
	_, docAfter, _ = devCredential(t, h, user.ID)
	secrets[docAfter["refresh_token"].(string)], secrets[docAfter["access_token"].(string)] = true, true

	// 7. The first refresh token, replayed, is refused: rotation happened.
	resp, err := http.PostForm(h.url+"/dev-oauth/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {firstRefresh}, "client_id": {"hangar-devcli"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("replayed first refresh token: HTTP %d, want 400", resp.StatusCode)
	}

	// 8. Logout removes the files from the VM that holds them.
	if err := c.DeleteCredential(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	if err := eventually(time.Minute, func() bool {
		out, err := h.admin.Exec(ctx, vm3, api.ExecRequest{Argv: []string{"test", "-e", "/home/hangar/.hangar-dev/auth.json"}, TimeoutS: 30})
		return err == nil && out.ExitCode == 1
	}); err != nil {
		t.Fatal("the credential file is still in the VM after logout")
	}
	if v, _ := c.GetVM(ctx, vm3); len(v.Providers) != 0 {
		t.Fatalf("after logout the VM still holds %v", v.Providers)
	}
	_, err = c.CreatePrompt(ctx, api.CreatePromptRequest{Provider: "dev", Prompt: "hi"})
	if !isStatus(err, http.StatusConflict) {
		t.Fatalf("prompt after logout: %v, want 409", err)
	}

	// 9. No token anywhere: daemon log, console logs, events, prompt
	// records and events, raw prompt logs.
	var where []string
	var evs bytes.Buffer
	ectx, ecancel := context.WithTimeout(ctx, 5*time.Second)
	_ = h.admin.Events(ectx, 0, func(e api.Event) error { b, _ := json.Marshal(e); evs.Write(b); return nil })
	ecancel()
	var records bytes.Buffer
	l, _ := c.ListPrompts(ctx, "", 200)
	for _, p := range l.Prompts {
		b, _ := json.Marshal(p)
		records.Write(b)
		pe, _ := h.d.Store().ListPromptEvents(ctx, p.ID, 0, 0)
		for _, e := range pe {
			records.Write(e.Data)
		}
		raw, _ := os.ReadFile(filepath.Join(h.dataDir, "logs", "prompts", p.ID+".log"))
		records.Write(raw)
	}
	consoles, _ := filepath.Glob(filepath.Join(h.dataDir, "logs", "vms", "*", "console.log"))
	var consoleText bytes.Buffer
	for _, f := range consoles {
		b, _ := os.ReadFile(f)
		consoleText.Write(b)
	}
	for sec := range secrets {
		for name, hay := range map[string]string{"daemon log": h.logs.String(), "events": evs.String(), "prompts": records.String(), "consoles": consoleText.String()} {
			if strings.Contains(hay, sec) {
				where = append(where, name)
			}
		}
	}
	if len(where) > 0 {
		t.Fatalf("a token appears in: %v", where)
	}
	if len(l.Prompts) < 6 {
		t.Fatalf("prompt history has %d prompts", len(l.Prompts))
	}
}
