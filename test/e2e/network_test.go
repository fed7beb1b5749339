package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
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
	ipCmd(t, "-n", l.host, "addr", "add", "198.51.100.1/24", "dev", "up0")
	ipCmd(t, "-n", l.host, "link", "set", "up0", "up")
	ipCmd(t, "-n", l.host, "link", "set", "lo", "up")
	ipCmd(t, "-n", l.host, "route", "add", "default", "via", "198.51.100.2")
	ipCmd(t, "-n", l.inet, "addr", "add", "198.51.100.2/24", "dev", "dn0")
	ipCmd(t, "-n", l.inet, "link", "set", "dn0", "up")
	ipCmd(t, "-n", l.inet, "link", "set", "lo", "up")
	srv := exec.Command("ip", "netns", "exec", l.inet, "python3", "-m", "http.server", "8080", "--bind", "198.51.100.2", "--directory", t.TempDir())
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	l.serverURL = "198.51.100.2/8080"
	time.Sleep(time.Second)
	return l
}

// reach reports whether the VM can open an HTTP connection to host/port
// (bash's /dev/tcp, present in every image).
func reach(h *harness, id, hostPort string) bool {
	h.t.Helper()
	out := h.exec(h.admin, id, "timeout", "5", "bash", "-c",
		`exec 3<>/dev/tcp/`+hostPort+` && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && head -c 12 <&3`)
	return out.ExitCode == 0 && strings.HasPrefix(out.Stdout, "HTTP/1.") && strings.HasSuffix(out.Stdout, " 200")
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
		c.Network.DNSUpstream = "198.51.100.2:53"
		c.Network.Egress = map[string]config.EgressPolicy{"base": {Mode: "full"}}
	})
	ctx := context.Background()
	full := h.createReady(h.admin, api.KindBase, 3*time.Minute)
	if !reach(h, full.ID, lab.serverURL) {
		t.Fatal("egress full: the VM cannot reach the test server")
	}
	// A real service in the daemon's namespace (stands for its API): the
	// "internet" side reaches it, so only the slot rules keep the VM out.
	stub := exec.Command("ip", "netns", "exec", lab.host, "python3", "-m", "http.server", "8080", "--bind", "198.51.100.1", "--directory", t.TempDir())
	if err := stub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stub.Process.Kill(); _ = stub.Wait() })
	var probe []byte
	if err := eventually(20*time.Second, func() bool {
		var err error
		probe, err = exec.Command("ip", "netns", "exec", lab.inet, "python3", "-c",
			"import urllib.request; urllib.request.urlopen('http://198.51.100.1:8080/', timeout=2)").CombinedOutput()
		return err == nil
	}); err != nil {
		t.Fatalf("the stand-in API in the daemon's namespace does not answer from outside: %s", probe)
	}
	if reach(h, full.ID, "198.51.100.1/8080") {
		t.Error("the VM reached a listening service in the daemon's namespace")
	}

	bob, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin.SetUserNetwork(ctx, bob.ID, api.PutNetworkPolicyRequest{Mode: api.EgressNone}); err != nil {
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

// netDaemon starts a daemon whose slots hang off the lab's host namespace.
func netDaemon(t *testing.T, lab *netLab) *harness {
	return startDaemon(t, func(c *config.Config) {
		c.Network.Enabled = true
		c.Network.Prefix = "e2en"
		c.Network.HostNetNS = "/run/netns/" + lab.host
		c.Network.PoolSize = 1
		c.Network.DNSUpstream = "198.51.100.2:53"
		c.Network.Egress = map[string]config.EgressPolicy{"base": {Mode: "full"}}
	})
}

// TestNetworkAllowList gives a user the policy allow [server 1's address,
// one domain] and checks from a real VM: server 1 answers, server 2 (same
// "internet") does not, the allowed name resolves through the slot's DNS
// filter and only then becomes reachable, and a name not on the list is
// refused by the filter without reaching the upstream resolver.
func TestNetworkAllowList(t *testing.T) {
	requireVMs(t, "base")
	lab := newNetLab(t)
	for _, a := range []string{"198.51.100.3/24", "198.51.100.4/24"} {
		ipCmd(t, "-n", lab.inet, "addr", "add", a, "dev", "dn0")
	}
	two := serveHTTPIn(t, lab.inet, "198.51.100.3:8080", "server two\n")
	three := serveHTTPIn(t, lab.inet, "198.51.100.4:8080", "server three\n")
	dns := serveDNSIn(t, lab.inet, "198.51.100.2:53", map[string]netip.Addr{
		"allowed.test": netip.MustParseAddr("198.51.100.4"),
		"denied.test":  netip.MustParseAddr("198.51.100.3"),
	})
	h := netDaemon(t, lab)
	ctx := context.Background()
	carol, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin.SetUserNetwork(ctx, carol.ID, api.PutNetworkPolicyRequest{Mode: api.EgressAllow, Allow: []string{"198.51.100.2", "allowed.test"}}); err != nil {
		t.Fatal(err)
	}
	cc := client.New(h.url, carol.APIKey)
	v := h.createReady(cc, api.KindBase, 3*time.Minute)

	if !reach(h, v.ID, lab.serverURL) {
		t.Error("allow-list: the VM cannot reach the allowed test server 198.51.100.2")
	}
	if reach(h, v.ID, "198.51.100.3/8080") {
		t.Error("allow-list: the VM reached test server 2 (198.51.100.3), which is not on the list")
	}
	if reach(h, v.ID, "198.51.100.4/8080") {
		t.Error("allow-list: 198.51.100.4 was reachable before its allowed name was resolved")
	}
	out := h.exec(h.admin, v.ID, "getent", "hosts", "denied.test")
	if out.ExitCode == 0 {
		t.Errorf("allow-list: denied.test resolved in the VM: %q", out.Stdout)
	}
	out = h.exec(h.admin, v.ID, "getent", "hosts", "allowed.test")
	if out.ExitCode != 0 || !strings.HasPrefix(out.Stdout, "198.51.100.4 ") {
		t.Fatalf("allow-list: allowed.test did not resolve to 198.51.100.4 in the VM: exit %d %q %q", out.ExitCode, out.Stdout, out.Stderr)
	}
	if !reach(h, v.ID, "198.51.100.4/8080") {
		t.Error("allow-list: the address answered for allowed.test is not reachable")
	}
	if reach(h, v.ID, "198.51.100.3/8080") {
		t.Error("allow-list: resolving allowed.test opened server 2 as well")
	}
	for _, q := range dns.all() {
		if q == "denied.test" {
			t.Error("the slot's DNS filter forwarded denied.test to the upstream resolver")
		}
	}
	if got := two.all(); len(got) != 0 {
		t.Errorf("server 2 saw requests from the VM: %v", got)
	}
	if got := three.all(); len(got) != 1 {
		t.Errorf("server 3 saw %d requests, want exactly the one after resolving: %v", len(got), got)
	}
	t.Logf("dns upstream saw %v", dns.all())
}

// TestNetworkUpstreamProxy sets a user's upstream proxy through the admin
// API; a VM of that user fetches a test server through the proxy
// environment the agent configured; the proxy (run by the test, Basic auth)
// sees the request with the right credentials, the server sees it arrive,
// and the proxy password is nowhere in the guest: not in any process's
// environment or command line, not in ps, not in any file under /etc,
// /home, /root, /tmp or /run.
func TestNetworkUpstreamProxy(t *testing.T) {
	requireVMs(t, "base")
	lab := newNetLab(t)
	ipCmd(t, "-n", lab.inet, "addr", "add", "198.51.100.3/24", "dev", "dn0")
	pass := "pw-" + hex.EncodeToString(randBytes(t, 12))
	proxy := serveProxyIn(t, lab.inet, "198.51.100.2:3128", "vmuser", pass)
	target := serveHTTPIn(t, lab.inet, "198.51.100.3:8080", "through the proxy\n")
	h := netDaemon(t, lab)
	ctx := context.Background()
	dave, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "dave"})
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(h.dataDir, daemon.AdminKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	adminKey := strings.TrimSpace(string(key))
	body := `{"mode":"full","proxy":"http://vmuser:` + pass + `@198.51.100.2:3128"}`
	// Only admins may set it, and no answer echoes the password.
	if st, resp := putJSON(t, h.url+"/api/v1/users/"+dave.ID+"/network", dave.APIKey, body); st != 403 {
		t.Errorf("a user set their own network policy: %d %s", st, resp)
	} else if strings.Contains(resp, pass) {
		t.Error("the refusal echoes the proxy password")
	}
	if st, resp := putJSON(t, h.url+"/api/v1/users/"+dave.ID+"/network", adminKey, `{"mode":"full","proxy":"ftp://vmuser:`+pass+`@x:1"}`); st != 400 || strings.Contains(resp, pass) {
		t.Errorf("bad proxy scheme: %d %s (want 400 without the password)", st, resp)
	}
	if st, resp := putJSON(t, h.url+"/api/v1/users/"+dave.ID+"/network", adminKey, body); st != 200 || strings.Contains(resp, pass) {
		t.Fatalf("admin PUT network: %d %s (want 200, the policy without the password)", st, resp)
	}
	dc := client.New(h.url, dave.APIKey)
	v := h.createReady(dc, api.KindBase, 3*time.Minute)

	// A client that honours HTTP_PROXY: bash sends the absolute-URI request
	// to whatever proxy the environment names (the base image has neither
	// curl nor wget).
	get := `p=${HTTP_PROXY#http://}; p=${p%/}; [ -n "$p" ] || { echo "no HTTP_PROXY" >&2; exit 3; }
exec 3<>/dev/tcp/${p%:*}/${p##*:} || exit 4
printf 'GET http://198.51.100.3:8080/via-proxy HTTP/1.0\r\nHost: 198.51.100.3:8080\r\n\r\n' >&3
cat <&3`
	out := h.exec(dc, v.ID, "timeout", "20", "bash", "-c", get)
	if out.ExitCode != 0 || !strings.Contains(out.Stdout, " 200 ") || !strings.Contains(out.Stdout, "through the proxy") {
		t.Fatalf("fetch through HTTP_PROXY: exit %d\nstdout: %s\nstderr: %s", out.ExitCode, out.Stdout, out.Stderr)
	}
	if got := proxy.all(); len(got) != 1 || got[0] != "auth-ok GET http://198.51.100.3:8080/via-proxy" {
		t.Errorf("the upstream proxy saw %v, want one authenticated GET of the target", got)
	}
	if got := target.all(); len(got) != 1 || got[0] != "GET /via-proxy" {
		t.Errorf("the target saw %v, want the request through the proxy", got)
	}
	envOut := h.exec(dc, v.ID, "sh", "-c", "echo $HTTP_PROXY")
	if strings.Contains(envOut.Stdout, "@") || !strings.Contains(envOut.Stdout, "169.254.0.22:3128") {
		t.Errorf("guest HTTP_PROXY is %q, want the slot's forwarder without credentials", envOut.Stdout)
	}

	// The search gets the secret in two halves, joined inside bash and fed
	// to grep through a pipe, so no command line of the search holds it.
	search := `pat="$1$2"
pf() { printf '%s\n' "$pat"; }
grep -laF -f <(pf) /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | sed 's/^/proc: /'
ps auxeww | grep -aF -f <(pf) >/dev/null && echo "ps: match"
grep -rlaF -f <(pf) /etc /home /root /tmp /run 2>/dev/null | sed 's/^/file: /'
true`
	find := func(secret string) string {
		half := len(secret) / 2
		out := h.exec(h.admin, v.ID, "bash", "-c", search, "search", secret[:half], secret[half:])
		if out.ExitCode != 0 {
			t.Fatalf("search in the guest: exit %d %s", out.ExitCode, out.Stderr)
		}
		return strings.TrimSpace(out.Stdout)
	}
	// The search must find what is there: a canary file, and the forwarder's
	// address in the environment of the exec'd processes.
	canary := "canary-" + hex.EncodeToString(randBytes(t, 8))
	if err := h.admin.PutFile(ctx, v.ID, "/tmp/canary.txt", 0o600, strings.NewReader("x "+canary+" y\n")); err != nil {
		t.Fatal(err)
	}
	if got := find(canary); !strings.Contains(got, "file: /tmp/canary.txt") {
		t.Fatalf("the search does not find a canary file: %q", got)
	}
	if got := find("169.254.0.22:3128"); !strings.Contains(got, "proc: ") || !strings.Contains(got, "ps: match") {
		t.Fatalf("the search does not find the proxy address in process environments: %q", got)
	}
	if got := find(pass); got != "" {
		t.Errorf("the proxy password is in the guest:\n%s", got)
	}
	if strings.Contains(h.logs.String(), pass) {
		t.Error("the proxy password is in the daemon's log")
	}
}

func randBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// putJSON sends PUT with a bearer key and returns the status and body.
func putJSON(t *testing.T, url, key, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
