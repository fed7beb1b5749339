package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// TestCLIQuotasMetrics drives a VM with the hangar CLI the way a user does,
// and checks quotas, metrics and log retention on the way.
func TestCLIQuotasMetrics(t *testing.T) {
	requireVMs(t, "base")
	h := startDaemon(t, func(c *config.Config) {
		c.MaxVMsPerUser = 1
		c.MaxBrowserVMs = 0
		c.LogRetention = config.Duration(time.Nanosecond)
	})
	ctx := context.Background()
	alice, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	bin := buildHangar(t)
	run := func(wantCode int, stdin string, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"--server", h.url, "--token", alice.APIKey}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != wantCode {
			t.Fatalf("hangar %v exited %d, want %d:\n%s", args, code, wantCode, out)
		}
		return string(out)
	}

	out := run(0, "", "vm", "create", "base")
	var id string
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "id:"); ok {
			id = strings.TrimSpace(v)
		}
	}
	if id == "" || !strings.Contains(out, "state:       ready") || !strings.Contains(out, "boot:") {
		t.Fatalf("vm create output:\n%s", out)
	}

	ac := client.New(h.url, alice.APIKey)
	if _, err := ac.CreateVM(ctx, api.CreateVMRequest{Kind: api.KindBase}); !isStatus(err, 429) || !strings.Contains(err.Error(), "max_vms_per_user is 1") || !strings.Contains(err.Error(), "0 left") {
		t.Fatalf("second vm over the per-user quota: %v, want 429", err)
	}
	if _, err := h.admin.CreateVM(ctx, api.CreateVMRequest{Kind: api.KindBrowser}); !isStatus(err, 429) {
		t.Fatalf("browser vm over the host quota: %v, want 429", err)
	}
	if _, err := ac.CreateVM(ctx, api.CreateVMRequest{Kind: "windows"}); !isStatus(err, 400) {
		t.Fatalf("unknown kind: %v, want 400", err)
	}

	if out := run(3, "", "vm", "exec", id, "--", "sh", "-c", "echo hi; echo err >&2; exit 3"); !strings.Contains(out, "hi") || !strings.Contains(out, "err") {
		t.Fatalf("vm exec output:\n%s", out)
	}
	if out := run(0, "from stdin", "vm", "exec", "-i", id, "--", "cat"); !strings.Contains(out, "from stdin") {
		t.Fatalf("vm exec -i:\n%s", out)
	}
	if out := run(0, "", "vm", "ls"); !strings.Contains(out, id) || !strings.Contains(out, "ready") {
		t.Fatalf("vm ls:\n%s", out)
	}
	local := filepath.Join(t.TempDir(), "note.txt")
	os.WriteFile(local, []byte("hello from the host\n"), 0o640)
	run(0, "", "vm", "cp", local, id+":/root/note.txt")
	if out := run(0, "", "vm", "cp", id+":/root/note.txt", "-"); out != "hello from the host\n" {
		t.Fatalf("vm cp back: %q", out)
	}
	if out := run(0, "", "vm", "logs", id); !strings.Contains(out, "Linux version") {
		t.Fatalf("vm logs lacks the kernel banner:\n%.2000s", out)
	}
	if out := run(0, "", "vm", "show", id); !strings.Contains(out, "kernel:") || !strings.Contains(out, "tcg") && !strings.Contains(out, "kvm") {
		t.Fatalf("vm show:\n%s", out)
	}

	resp, err := http.Get(h.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`hangar_vm_boot_phase_seconds_bucket{phase="total"`, `hangar_vms{kind="base",state="ready"} 1`, "hangar_agent_link_errors_total 0"} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	run(0, "", "vm", "rm", id)
	logDir := filepath.Join(h.dataDir, "logs", "vms", id)
	if _, err := os.Stat(logDir); err != nil {
		t.Fatalf("logs gone right after delete: %v", err)
	}
	removed, err := h.d.VMs().PruneLogs(ctx)
	if err != nil || len(removed) != 1 || removed[0] != id {
		t.Fatalf("prune after retention: %v %v", removed, err)
	}
	if _, err := os.Stat(logDir); !os.IsNotExist(err) {
		t.Fatalf("logs still there after retention: %v", err)
	}
}
