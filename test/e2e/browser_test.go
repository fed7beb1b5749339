package e2e

import (
	"bufio"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// TestBrowserVM: a browser VM reaches ready with Xvfb, x11vnc and Chromium
// running under the agent's supervisor, and a raw stream to port 5900 over
// the agent link answers with an RFB greeting.
func TestBrowserVM(t *testing.T) {
	requireVMs(t, "browser")
	h := startDaemon(t, nil)
	ctx := context.Background()
	vm := h.createReady(h.admin, api.KindBrowser, 4*time.Minute)
	t.Logf("browser vm ready in %dms (spawn %dms, kernel %dms, agent %dms, services %dms)",
		vm.BootPhases.TotalMS, vm.BootPhases.SpawnMS, vm.BootPhases.KernelMS, vm.BootPhases.AgentUpMS, vm.BootPhases.ServicesReadyMS)

	got, err := h.admin.GetVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, s := range got.Services {
		states[s.Name] = s.State
	}
	for _, name := range []string{"xvfb", "x11vnc", "chromium"} {
		if states[name] != "ready" {
			t.Errorf("service %s is %q, want ready (all: %v)", name, states[name], states)
		}
	}
	ps := h.exec(h.admin, vm.ID, "ps", "-eo", "comm")
	for _, proc := range []string{"Xvfb", "x11vnc", "chromium"} {
		if !strings.Contains(ps.Stdout, proc) {
			t.Errorf("no %s process in the guest:\n%s", proc, ps.Stdout)
		}
	}

	admin, err := h.d.Store().GetUserByName(ctx, "admin")
	if err != nil {
		t.Fatal(err)
	}
	if admin.Role != store.RoleAdmin {
		t.Fatalf("admin user has role %q", admin.Role)
	}
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	conn, err := h.d.VMs().DialPort(dctx, admin, vm.ID, 5900)
	if err != nil {
		t.Fatalf("raw stream to 5900: %v", err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	greeting, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.HasPrefix(greeting, "RFB 003.") {
		t.Fatalf("port 5900 answered %q, %v; want an RFB greeting", greeting, err)
	}
	t.Logf("x11vnc greets with %q", strings.TrimSpace(greeting))
}
