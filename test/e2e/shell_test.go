package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/hangar-vm/hangar/pkg/api"
)

// TestVMShell runs `hangar vm shell` on a real pseudo-terminal, as a user
// in a terminal would: it gets a login shell in the VM whose size follows
// the local terminal, runs what is typed, and exits with the shell's exit
// code.
func TestVMShell(t *testing.T) {
	requireVMs(t, "base")
	h := startDaemon(t, nil)
	vm := h.createReady(h.admin, api.KindBase, 2*time.Minute) // waits on the server (GET …/wait)
	// The server-side wait: a state not reached in time is a 408 naming
	// the current state; an unknown state a 400.
	var got api.VM
	err := h.admin.Do(context.Background(), "GET", "/api/v1/vms/"+vm.ID+"/wait?state=stopped&timeout=1s", nil, &got)
	if !isStatus(err, http.StatusRequestTimeout) || !strings.Contains(err.Error(), "still ready") {
		t.Fatalf("wait for stopped on a ready VM: %v, want 408 saying it is still ready", err)
	}
	if err := h.admin.Do(context.Background(), "GET", "/api/v1/vms/"+vm.ID+"/wait?state=asleep", nil, &got); !isStatus(err, http.StatusBadRequest) {
		t.Fatalf("wait for an unknown state: %v, want 400", err)
	}
	bin := buildHangar(t)
	cmd := exec.Command(bin, "--server", h.url, "--token", h.adminKey(t), "vm", "shell", vm.ID)
	cmd.Env = append(cmd.Environ(), "TERM=xterm")
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 30, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	out := &syncBuffer{}
	go func() { _, _ = io.Copy(out, tty) }()
	waitFor := func(what string) {
		t.Helper()
		if err := eventually(30*time.Second, func() bool { return strings.Contains(out.String(), what) }); err != nil {
			t.Fatalf("no %q from the shell; it printed:\n%s", what, out.String())
		}
	}
	// The shell's own arithmetic proves the line ran remotely, not echoed.
	if _, err := tty.Write([]byte("stty size; echo size-ok-$((20+22))\r")); err != nil {
		t.Fatal(err)
	}
	waitFor("size-ok-42")
	if !strings.Contains(out.String(), "30 100") {
		t.Fatalf("the remote terminal is not 30x100:\n%s", out.String())
	}
	if err := pty.Setsize(tty, &pty.Winsize{Rows: 40, Cols: 120}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // SIGWINCH → resize message → guest
	if _, err := tty.Write([]byte("stty size; echo resized-$((1+1))\r")); err != nil {
		t.Fatal(err)
	}
	waitFor("resized-2")
	if !strings.Contains(out.String(), "40 120") {
		t.Fatalf("the remote terminal did not follow the resize to 40x120:\n%s", out.String())
	}
	if _, err := tty.Write([]byte("exit 3\r")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("hangar vm shell exited %v, want code 3\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("hangar vm shell did not exit after the remote shell did:\n%s", out.String())
	}
}
