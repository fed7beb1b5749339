package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/daemon"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// netLab is a daemon-side namespace and an "internet" namespace behind it
// with an HTTP server, all made (and removed) by the test.
type netLab struct {
	host, inet string
	serverURL  string
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func newNetLab(t *testing.T) *netLab {
	t.Helper()
	sfx := fmt.Sprint(os.Getpid() % 100000)
	l := &netLab{host: "e2eh" + sfx, inet: "e2ei" + sfx}
	ipCmd(t, "netns", "add", l.host)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", l.host).Run() })
	ipCmd(t, "netns", "add", l.inet)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", l.inet).Run() })
	ipCmd(t, "-n", l.host, "link", "add", "up0", "type", "veth", "peer", "name", "dn0", "netns", l.inet)
	ipCmd(t, "-n", l.host, "addr", "add", "10.99.0.1/24", "dev", "up0")
	ipCmd(t, "-n", l.host, "link", "set", "up0", "up")
	ipCmd(t, "-n", l.host, "link", "set", "lo", "up")
	ipCmd(t, "-n", l.host, "route", "add", "default", "via", "10.99.0.2")
	ipCmd(t, "-n", l.inet, "addr", "add", "10.99.0.2/24", "dev", "dn0")
	ipCmd(t, "-n", l.inet, "link", "set", "dn0", "up")
	ipCmd(t, "-n", l.inet, "link", "set", "lo", "up")
	srv := exec.Command("ip", "netns", "exec", l.inet, "python3", "-m", "http.server", "8080", "--bind", "10.99.0.2", "--directory", t.TempDir())
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	l.serverURL = "10.99.0.2/8080"
	time.Sleep(time.Second)
	return l
}

// reach reports whether the VM can open an HTTP connection to host/port
// (bash's /dev/tcp, present in every image).
func reach(h *harness, id, hostPort string) bool {
	h.t.Helper()
	out := h.exec(h.admin, id, "timeout", "5", "bash", "-c",
		`exec 3<>/dev/tcp/`+hostPort+` && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && head -c 12 <&3`)
	return out.ExitCode == 0 && strings.HasPrefix(out.Stdout, "HTTP/1.0 200")
}

// TestNetworkEgress boots base VMs with egress none and full against a
// server in a test namespace, and checks that no VM reaches the daemon's
// namespace or another VM.
func TestNetworkEgress(t *testing.T) {
	requireVMs(t, "base")
	lab := newNetLab(t)
	h := startDaemon(t, func(c *config.Config) {
		c.Network.Enabled = true
		c.Network.Prefix = "e2en"
		c.Network.HostNetNS = "/run/netns/" + lab.host
		c.Network.PoolSize = 1
		c.Network.DNSUpstream = "10.99.0.2:53"
		c.Network.Egress = map[string]config.EgressPolicy{"base": {Mode: "full"}}
	})
	ctx := context.Background()
	full := h.createReady(h.admin, api.KindBase, 3*time.Minute)
	if !reach(h, full.ID, lab.serverURL) {
		t.Fatal("egress full: the VM cannot reach the test server")
	}
	// A service in the daemon's namespace (stands for its API).
	if reach(h, full.ID, "10.99.0.1/8080") {
		t.Error("the VM reached the daemon's namespace")
	}

	bob, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.d.SetUserNetwork(ctx, bob.ID, &daemon.UserNetwork{Mode: "none"}); err != nil {
		t.Fatal(err)
	}
	bobc := client.New(h.url, bob.APIKey)
	none := h.createReady(bobc, api.KindBase, 3*time.Minute)
	out := h.exec(bobc, none.ID, "timeout", "5", "bash", "-c", `exec 3<>/dev/tcp/`+lab.serverURL)
	if out.ExitCode == 0 {
		t.Error("egress none: the VM reached the test server")
	}
	// Every guest has the same address; other slots sit in the pool.
	out = h.exec(h.admin, full.ID, "timeout", "5", "bash", "-c", `exec 3<>/dev/tcp/10.200.0.2/22`)
	if out.ExitCode == 0 {
		t.Error("a VM reached another slot's address")
	}
	for _, id := range []string{full.ID, none.ID} {
		if err := h.admin.DeleteVM(ctx, id); err != nil {
			t.Error(err)
		}
	}
	h.stop()
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "e2en-") {
		t.Errorf("slot namespaces left after destroy and shutdown:\n%s", out)
	}
}
