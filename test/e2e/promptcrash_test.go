package e2e

import (
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/login/devoauth"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// TestPromptCLIAndDaemonKill runs a prompt the way a user does, with
// `hangar prompt dev …` (the answer on stdout, exit 0), then kills the
// daemon with SIGKILL while a slow prompt streams: after the restart no
// prompt is left running (it failed saying why, its output so far kept),
// its CLI is gone from the VM, and — the dev provider keeping its tokens in
// memory — the next prompt fails as "log in again" instead of hanging.
func TestPromptCLIAndDaemonKill(t *testing.T) {
	requireVMs(t, "cli")
	dataDir := newCrashDataDir(t)
	cleanupVMs(t, dataDir)
	p := startServeProc(t, dataDir)
	admin := adminClient(t, dataDir, p.URL)
	ctx := context.Background()
	u, err := admin.CreateUser(ctx, api.CreateUserRequest{Name: "kim"})
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(p.URL, u.APIKey)
	loginDevPaste(t, p.URL, c)

	// The CLI: the answer streams to stdout; exit 0.
	bin := buildHangar(t)
	cmd := exec.Command(bin, "--server", p.URL, "--token", u.APIKey, "prompt", "dev", "hello", "from", "the", "cli")
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("hangar prompt dev: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	if want := devoauth.Answer(devoauth.DemoEmail, "hello from the cli"); strings.TrimSpace(stdout.String()) != want {
		t.Fatalf("hangar prompt printed %q, want %q (stderr %s)", stdout.String(), want, stderr.String())
	}
	l, err := c.ListPrompts(ctx, "", 1)
	if err != nil || len(l.Prompts) != 1 {
		t.Fatalf("prompt history: %+v, %v", l, err)
	}
	vmID := l.Prompts[0].VMID

	// A slow prompt, and the daemon dies under it.
	slow, err := c.CreatePrompt(ctx, api.CreatePromptRequest{Provider: "dev", Prompt: "a b c d e f g h i j k l m n o p " + devoauth.SlowMarker})
	if err != nil {
		t.Fatal(err)
	}
	sawOutput := make(chan struct{})
	go func() {
		closed := false
		_ = c.FollowPrompt(ctx, slow.ID, func(e api.PromptEvent) error {
			if e.Type == api.PromptEventOutput && !closed {
				closed = true
				close(sawOutput)
			}
			return nil
		})
	}()
	select {
	case <-sawOutput:
	case <-time.After(3 * time.Minute):
		t.Fatal("the slow prompt produced no output")
	}
	p.Stop(t, syscall.SIGKILL, 30*time.Second)

	p = startServeProc(t, dataDir)
	c = client.New(p.URL, u.APIKey)
	got, err := c.GetPrompt(ctx, slow.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != api.PromptFailed || got.Reason != api.ReasonRestart {
		t.Fatalf("after kill -9 and restart the prompt is %s (%s): %s", got.State, got.Reason, got.Error)
	}
	var r promptRun
	if err := c.FollowPrompt(ctx, slow.ID, func(e api.PromptEvent) error { r.add(e); return nil }); err != nil {
		t.Fatal(err)
	}
	if r.final != api.PromptEventFailed || r.text == "" || !strings.HasPrefix(r.events[0].Type, api.PromptEventStarted) {
		t.Fatalf("after restart the stream is %s with output %q: want the output so far and a final failed", r.types(), r.text)
	}
	admin = adminClient(t, dataDir, p.URL)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	if _, err := admin.WaitVM(wctx, vmID, api.VMReady); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := eventually(30*time.Second, func() bool {
		out, err := admin.Exec(ctx, vmID, api.ExecRequest{Argv: []string{"sh", "-c", `for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '[h]angar-devcli prompt' || true`}, TimeoutS: 30})
		return err == nil && strings.TrimSpace(out.Stdout) == "0"
	}); err != nil {
		t.Fatal("the killed daemon's prompt still runs in the VM")
	}

	// The dev provider forgot its grants with the daemon: a clear "log in
	// again", not a hang.
	r = runPromptSSE(t, c, api.CreatePromptRequest{Provider: "dev", Prompt: "are you there"}, 3*time.Minute)
	if r.final != api.PromptEventFailed || r.end.Reason != api.ReasonAuth || !strings.Contains(r.end.Message, "hangar auth login dev") {
		t.Fatalf("prompt after the dev provider lost its grants: %s %+v", r.final, r.end)
	}
	if err := admin.DeleteVM(ctx, vmID); err != nil {
		t.Fatal(err)
	}
}
