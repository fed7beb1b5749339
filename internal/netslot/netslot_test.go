package netslot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The tests below build everything inside namespaces they create:
//
//	hgtest-<r>        the daemon's namespace ("host"); the Manager's HostNetNS
//	  up0 192.0.2.1/24, default via 192.0.2.254
//	hgtest-<r>-inet   "the internet", behind up0's peer eth0:
//	  192.0.2.254 router, .10 server1, .11 server2, .53 DNS, .20 upstream proxies
//	<prefix>-<n>      slots made by the Manager, hanging off hgtest-<r>
//	<prefix>-<n>-guest stand-in guests (a veth named tap0 instead of a TAP)
//
// No packet leaves these namespaces. The real TAP path is covered by
// TestSlotTAP here (device, flags, opening it the way QEMU does) and by
// the VM tests that boot a guest on it.

var (
	server1   = netip.MustParseAddr("192.0.2.10")
	server2   = netip.MustParseAddr("192.0.2.11")
	proxyAddr = netip.MustParseAddr("192.0.2.20")
	dnsAddr   = netip.MustParseAddr("192.0.2.53")
	hostUp    = netip.MustParseAddr("192.0.2.1")
)

type testEnv struct {
	name   string // host namespace
	inet   string
	prefix string
	host   netns.NsHandle
	inetNS netns.NsHandle
	s1, s2 *targetServer
	dns    *testDNS
}

func requireRoot(t *testing.T) {
	t.Helper()
	testutil.Require(t, os.Geteuid() == 0, "network slot tests create network namespaces and need root")
	_, err := exec.LookPath("ip")
	testutil.Require(t, err == nil, "the ip command (iproute2) is needed to build the test network")
}

func run(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	requireRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	r := hex.EncodeToString(b[:])
	e := &testEnv{name: "hgtest-" + r, inet: "hgtest-" + r + "-inet", prefix: "hgt" + r[:5]}

	// Registered first, so it runs last: nothing of ours may remain on the
	// machine, in /run/netns or in the root namespace.
	t.Cleanup(func() { e.checkNothingLeft(t) })

	run(t, "ip", "netns", "add", e.name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", e.name).Run() })
	run(t, "ip", "netns", "add", e.inet)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", e.inet).Run() })
	run(t, "ip", "-n", e.name, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", e.inet)
	run(t, "ip", "-n", e.name, "link", "set", "lo", "up")
	run(t, "ip", "-n", e.name, "addr", "add", "192.0.2.1/24", "dev", "up0")
	run(t, "ip", "-n", e.name, "link", "set", "up0", "up")
	run(t, "ip", "-n", e.name, "route", "add", "default", "via", "192.0.2.254")
	run(t, "ip", "-n", e.inet, "link", "set", "lo", "up")
	run(t, "ip", "-n", e.inet, "addr", "add", "192.0.2.254/24", "dev", "eth0")
	for _, a := range []netip.Addr{server1, server2, proxyAddr, dnsAddr} {
		run(t, "ip", "-n", e.inet, "addr", "add", a.String()+"/32", "dev", "eth0")
	}
	run(t, "ip", "-n", e.inet, "link", "set", "eth0", "up")

	var err error
	if e.host, err = netns.GetFromName(e.name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.host.Close() })
	if e.inetNS, err = netns.GetFromName(e.inet); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.inetNS.Close() })

	e.s1, e.s2 = &targetServer{name: "server1"}, &targetServer{name: "server2"}
	serveHTTP(t, listenIn(t, e.inetNS, "tcp4", server1.String()+":80"), e.s1)
	serveHTTP(t, listenIn(t, e.inetNS, "tcp4", server2.String()+":80"), e.s2)
	e.dns = &testDNS{ttl: 3600, records: map[string][]netip.Addr{
		"allowed.test": {server1},
		"other.test":   {server2},
	}}
	var pc net.PacketConn
	if err := inNS(e.inetNS, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", dnsAddr.String()+":53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	e.dns.serveUDP(pc)
	e.dns.serveTCP(listenIn(t, e.inetNS, "tcp4", dnsAddr.String()+":53"))
	return e
}

// checkNothingLeft fails the test if a namespace, link or table of the
// test's prefix exists outside the namespaces it deletes itself.
func (e *testEnv) checkNothingLeft(t *testing.T) {
	names, err := listNamedNS(e.prefix)
	if err != nil {
		t.Error(err)
	}
	if len(names) > 0 {
		t.Errorf("namespaces left behind: %v", names)
		for _, n := range names {
			_ = deleteNamedNS(n)
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Error(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, e.prefix) {
			t.Errorf("link %s left in the root namespace", l.Attrs().Name)
		}
	}
	c, err := nftables.New()
	if err != nil {
		t.Error(err)
		return
	}
	if _, err := c.ListTableOfFamily(e.prefix, nftables.TableFamilyINet); !errors.Is(err, unix.ENOENT) {
		t.Errorf("nftables table %s in the root namespace: %v", e.prefix, err)
	}
}

// checkHostClean fails if the host namespace still holds links or the
// table of the prefix (after Close with no slots in use).
func (e *testEnv) checkHostClean(t *testing.T) {
	t.Helper()
	h, err := netlink.NewHandleAt(e.host)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, e.prefix) {
			t.Errorf("link %s left in the host namespace", l.Attrs().Name)
		}
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(e.host)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListTableOfFamily(e.prefix, nftables.TableFamilyINet); !errors.Is(err, unix.ENOENT) {
		t.Errorf("host table %s left: %v", e.prefix, err)
	}
	names, _ := listNamedNS(e.prefix)
	for _, n := range names {
		if regexp.MustCompile(`^` + e.prefix + `-[0-9]+`).MatchString(n) {
			t.Errorf("slot namespace %s left", n)
		}
	}
}

func (e *testEnv) config(t *testing.T) Config {
	return Config{
		Prefix:      e.prefix,
		HostNetNS:   NetNSPath(e.name),
		DNSUpstream: dnsAddr.String() + ":53",
		Logger:      testLogger(t),
		guestVeth:   true,
	}
}

func newTestManager(t *testing.T, e *testEnv, cfg Config) *Manager {
	t.Helper()
	m, err := NewManager(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		m.mu.Lock()
		var held []*Slot
		for _, s := range m.slots {
			held = append(held, s)
		}
		m.mu.Unlock()
		for _, s := range held {
			if err := m.Release(ctx, s); err != nil {
				t.Errorf("release %s: %v", s.ID(), err)
			}
		}
		if err := m.Close(ctx); err != nil {
			t.Errorf("close manager: %v", err)
		}
		e.checkHostClean(t)
	})
	return m
}

func listenIn(t *testing.T, ns netns.NsHandle, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := inNS(ns, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s in netns: %v", addr, err)
	}
	// Connections complete in the backlog without Accept, so a dial
	// succeeds whenever the path is open.
	t.Cleanup(func() { ln.Close() })
	return ln
}

// guest opens the stand-in guest namespace of s.
func guest(t *testing.T, s *Slot) netns.NsHandle {
	t.Helper()
	h, err := netns.GetFromPath(NetNSPath(s.guestNS))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func dialFrom(ns netns.NsHandle, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNS(ns, func() error {
		var err error
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// httpGetFrom fetches url from inside ns, through proxy if given. Names
// are resolved only through the slot's DNS (never the machine's).
func httpGetFrom(ns netns.NsHandle, target, proxy string) (string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if _, err := netip.ParseAddr(host); err != nil {
			addrs, err := lookupFrom(ns, host)
			if err != nil {
				return nil, err
			}
			addr = net.JoinHostPort(addrs[0].String(), port)
		}
		return dialFrom(ns, network, addr, 2*time.Second)
	}}
	if proxy != "" {
		u, err := url.Parse(proxy)
		if err != nil {
			return "", err
		}
		tr.Proxy = http.ProxyURL(u)
	}
	c := &http.Client{Transport: tr, Timeout: 4 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get(target)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

// lookupFrom resolves name with the guest's DNS server (GuestConfig.DNS).
func lookupFrom(ns netns.NsHandle, name string) ([]netip.Addr, error) {
	dnsServer := net.JoinHostPort(GatewayAddr.String(), "53")
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dialFrom(ns, network, dnsServer, 2*time.Second)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return r.LookupNetIP(ctx, "ip4", name)
}

func mustGet(t *testing.T, ns netns.NsHandle, target, want string) {
	t.Helper()
	body, err := httpGetFrom(ns, target, "")
	if err != nil || body != want {
		t.Fatalf("GET %s from guest: %q, %v; want %q", target, body, err, want)
	}
}

func mustNotConnect(t *testing.T, ns netns.NsHandle, addr string) {
	t.Helper()
	c, err := dialFrom(ns, "tcp4", addr, 1500*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatalf("guest connected to %s; the policy must block it", addr)
	}
}

func TestSlots(t *testing.T) {
	e := newTestEnv(t)
	m := newTestManager(t, e, e.config(t))
	ctx := context.Background()
	url1 := "http://" + server1.String() + "/p"

	t.Run("pool", func(t *testing.T) {
		deadline := time.Now().Add(20 * time.Second)
		for idle := 0; idle < 2; {
			if time.Now().After(deadline) {
				t.Fatalf("pool did not fill: %+v", m.List())
			}
			time.Sleep(50 * time.Millisecond)
			idle = 0
			for _, si := range m.List() {
				if si.Idle {
					idle++
				}
			}
		}
		start := time.Now()
		s, err := m.Acquire(ctx, "pool-user", Policy{Mode: ModeFull})
		if err != nil {
			t.Fatal(err)
		}
		fromPool := time.Since(start)
		if err := m.Release(ctx, s); err != nil {
			t.Fatal(err)
		}
		t.Logf("Acquire from a ready pool took %s", fromPool)
	})

	t.Run("none", func(t *testing.T) {
		s, err := m.Acquire(ctx, "u-none", Policy{Mode: ModeNone})
		if err != nil {
			t.Fatal(err)
		}
		g := guest(t, s)
		mustNotConnect(t, g, server1.String()+":80")
		if _, err := lookupFrom(g, "allowed.test"); err == nil {
			t.Fatal("DNS answered under policy none")
		}
		if err := m.Release(ctx, s); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("full", func(t *testing.T) {
		s, err := m.Acquire(ctx, "u-full", Policy{Mode: ModeFull})
		if err != nil {
			t.Fatal(err)
		}
		g := guest(t, s)
		mustGet(t, g, url1, "server1 /p")
		mustGet(t, g, "http://"+server2.String()+"/q", "server2 /q")
		if gc := s.GuestConfig(); gc.Address != "169.254.0.21/30" || gc.Gateway != "169.254.0.22" ||
			!slices.Equal(gc.DNS, []string{"169.254.0.22"}) || gc.ProxyURL != "" || gc.MTU != 1500 {
			t.Fatalf("guest config %+v", gc)
		}
		addrs, err := lookupFrom(g, "other.test")
		if err != nil || len(addrs) != 1 || addrs[0] != server2 {
			t.Fatalf("DNS under full: %v %v", addrs, err)
		}
	})

	t.Run("allow_cidr", func(t *testing.T) {
		s, err := m.Acquire(ctx, "u-cidr", Policy{Mode: ModeAllow, AllowCIDRs: []netip.Prefix{netip.PrefixFrom(server1, 32)}})
		if err != nil {
			t.Fatal(err)
		}
		g := guest(t, s)
		mustGet(t, g, url1, "server1 /p")
		mustNotConnect(t, g, server2.String()+":80")
	})

	t.Run("allow_domain", func(t *testing.T) {
		s, err := m.Acquire(ctx, "u-dom", Policy{Mode: ModeAllow, AllowDomains: []string{"allowed.test"}})
		if err != nil {
			t.Fatal(err)
		}
		g := guest(t, s)
		asked := len(e.dns.questions())
		// Before the guest resolved the name, the address is closed.
		mustNotConnect(t, g, server1.String()+":80")
		addrs, err := lookupFrom(g, "allowed.test")
		if err != nil || len(addrs) != 1 || addrs[0] != server1 {
			t.Fatalf("resolve allowed.test through the slot: %v %v", addrs, err)
		}
		mustGet(t, g, "http://allowed.test/d", "server1 /d")
		if _, err := lookupFrom(g, "other.test"); err == nil {
			t.Fatal("other.test resolved; only allowed.test may")
		}
		mustNotConnect(t, g, server2.String()+":80")
		if q := e.dns.questions()[asked:]; !slices.Contains(q, "allowed.test") || slices.Contains(q, "other.test") {
			t.Fatalf("upstream resolver was asked %q; a refused name must not leave the host", q)
		}
	})

	t.Run("slots_isolated", func(t *testing.T) {
		a, err := m.Acquire(ctx, "u-a", Policy{Mode: ModeFull})
		if err != nil {
			t.Fatal(err)
		}
		b, err := m.Acquire(ctx, "u-b", Policy{Mode: ModeFull})
		if err != nil {
			t.Fatal(err)
		}
		ga, gb := guest(t, a), guest(t, b)
		bNS, err := netns.GetFromPath(b.NetNSPath())
		if err != nil {
			t.Fatal(err)
		}
		defer bNS.Close()
		// Services in B's slot namespace and in B's guest.
		listenIn(t, bNS, "tcp4", "0.0.0.0:7000")
		listenIn(t, gb, "tcp4", "0.0.0.0:7001")
		// They are real: B's guest reaches its own.
		if c, err := dialFrom(gb, "tcp4", "127.0.0.1:7001", time.Second); err != nil {
			t.Fatalf("control: %v", err)
		} else {
			c.Close()
		}
		mustGet(t, ga, url1, "server1 /p") // A itself has egress
		for _, addr := range []string{
			b.SlotAddr().String() + ":7000", b.SlotAddr().String() + ":7001",
			b.HostAddr().String() + ":7000", a.HostAddr().String() + ":7000",
		} {
			mustNotConnect(t, ga, addr)
		}
	})

	t.Run("private_ranges_and_spoofing", func(t *testing.T) {
		// Private and carrier-grade NAT servers in "the internet".
		private, cgnat := netip.MustParseAddr("10.99.7.10"), netip.MustParseAddr("100.64.7.10")
		for _, a := range []netip.Addr{private, cgnat} {
			run(t, "ip", "-n", e.inet, "addr", "add", a.String()+"/32", "dev", "eth0")
			serveHTTP(t, listenIn(t, e.inetNS, "tcp4", a.String()+":80"), &targetServer{name: "private"})
		}
		s, err := m.Acquire(ctx, "u-priv", Policy{Mode: ModeFull})
		if err != nil {
			t.Fatal(err)
		}
		g := guest(t, s)
		mustGet(t, g, url1, "server1 /p")
		mustNotConnect(t, g, private.String()+":80")
		mustNotConnect(t, g, cgnat.String()+":80")
		// An explicit policy opens a private range.
		if err := m.UpdatePolicy(ctx, s, Policy{Mode: ModeAllow, AllowCIDRs: []netip.Prefix{netip.PrefixFrom(private, 32)}}); err != nil {
			t.Fatal(err)
		}
		mustGet(t, g, "http://"+private.String()+"/x", "private /x")
		mustNotConnect(t, g, cgnat.String()+":80")

		// A guest forging another source address gets nothing through.
		if err := m.UpdatePolicy(ctx, s, Policy{Mode: ModeFull}); err != nil {
			t.Fatal(err)
		}
		spoofed := netip.MustParseAddr("169.254.0.99")
		run(t, "nsenter", "--net="+NetNSPath(s.guestNS), "ip", "addr", "add", spoofed.String()+"/32", "dev", "eth0")
		// Give the forged address a way back, so only the slot's rules can
		// stop the connection: the internet routes it to the host, the
		// host to the slot, the slot to the guest.
		run(t, "ip", "-n", e.inet, "route", "add", spoofed.String()+"/32", "via", hostUp.String())
		run(t, "ip", "-n", e.name, "route", "add", spoofed.String()+"/32", "via", s.slotAddr.String())
		run(t, "nsenter", "--net="+NetNSPath(s.id), "ip", "route", "add", spoofed.String()+"/32", "dev", TapName)
		var c net.Conn
		err = inNS(g, func() error {
			d := net.Dialer{Timeout: 1500 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: spoofed.AsSlice()}}
			var err error
			c, err = d.Dial("tcp4", server1.String()+":80")
			return err
		})
		if err == nil {
			c.Close()
			t.Fatal("a guest with a forged source address reached the internet")
		}
		mustGet(t, g, url1, "server1 /p")
	})

	t.Run("daemon_and_metadata_blocked", func(t *testing.T) {
		s, err := m.Acquire(ctx, "u-d", Policy{Mode: ModeFull})
		if err != nil {
			t.Fatal(err)
		}
		g := guest(t, s)
		// The daemon's API port, on every host-namespace address.
		api := listenIn(t, e.host, "tcp4", "0.0.0.0:0")
		port := api.Addr().(*net.TCPAddr).Port
		if c, err := dialFrom(e.inetNS, "tcp4", fmt.Sprintf("%s:%d", hostUp, port), time.Second); err != nil {
			t.Fatalf("control: the API port is not reachable from outside: %v", err)
		} else {
			c.Close()
		}
		// A metadata service on the host side.
		run(t, "ip", "-n", e.name, "addr", "add", "169.254.169.254/32", "dev", "lo")
		listenIn(t, e.host, "tcp4", "169.254.169.254:80")
		mustGet(t, g, url1, "server1 /p")
		for _, addr := range []string{
			fmt.Sprintf("%s:%d", hostUp, port),
			fmt.Sprintf("%s:%d", s.HostAddr(), port),
			"169.254.169.254:80",
			fmt.Sprintf("%s:%d", GatewayAddr, port),
		} {
			mustNotConnect(t, g, addr)
		}
	})

	t.Run("upstream_proxy", func(t *testing.T) {
		const secret = "pr0xy-Secret-77"
		// The upstream proxies live in "the internet" and dial from there.
		inetDial := func(_ context.Context, network, addr string) (net.Conn, error) {
			return dialFrom(e.inetNS, network, addr, 2*time.Second)
		}
		hup := &testUpstreamHTTP{user: "carol", pass: secret, dial: inetDial}
		serveHTTP(t, listenIn(t, e.inetNS, "tcp4", proxyAddr.String()+":3128"), hup)
		sup := &testUpstreamSOCKS{user: "carol", pass: secret, dial: inetDial}
		sup.serve(listenIn(t, e.inetNS, "tcp4", proxyAddr.String()+":1080"))

		up := &url.URL{Scheme: "http", User: url.UserPassword("carol", secret), Host: proxyAddr.String() + ":3128"}
		s, err := m.Acquire(ctx, "u-proxy", Policy{Mode: ModeFull, Upstream: up})
		if err != nil {
			t.Fatal(err)
		}
		gc := s.GuestConfig()
		if gc.ProxyURL != "http://169.254.0.22:3128" {
			t.Fatalf("guest proxy URL %q", gc.ProxyURL)
		}
		if strings.Contains(fmt.Sprint(gc, gc.Env()), secret) || strings.Contains(fmt.Sprint(gc, gc.Env()), "carol") {
			t.Fatal("guest config carries the upstream credentials")
		}
		g := guest(t, s)
		// With an upstream proxy, the proxy is the only way out.
		mustNotConnect(t, g, server1.String()+":80")
		body, err := httpGetFrom(g, "http://"+server1.String()+"/via-http-proxy", gc.ProxyURL)
		if err != nil || body != "server1 /via-http-proxy" {
			t.Fatalf("GET through the slot's forwarder: %q %v", body, err)
		}
		if seen, refused := hup.log(); refused != 0 || len(seen) != 1 || !strings.HasSuffix(seen[0], "/via-http-proxy") {
			t.Fatalf("upstream proxy saw %q refused %d", seen, refused)
		}
		if !e.s1.saw("/via-http-proxy") {
			t.Fatal("server1 did not see the proxied request")
		}

		// The same slot switched to a socks5 upstream and an allow-list:
		// the forwarder enforces the policy too.
		up2 := &url.URL{Scheme: "socks5", User: url.UserPassword("carol", secret), Host: proxyAddr.String() + ":1080"}
		if err := m.UpdatePolicy(ctx, s, Policy{Mode: ModeAllow, AllowCIDRs: []netip.Prefix{netip.PrefixFrom(server1, 32)}, Upstream: up2}); err != nil {
			t.Fatal(err)
		}
		body, err = httpGetFrom(g, "http://"+server1.String()+"/via-socks", gc.ProxyURL)
		if err != nil || body != "server1 /via-socks" {
			t.Fatalf("GET through socks upstream: %q %v", body, err)
		}
		if _, err := httpGetFrom(g, "http://"+server2.String()+"/refused", gc.ProxyURL); err == nil {
			t.Fatal("forwarder let the guest reach a server outside its allow-list")
		}
		if seen, refused := sup.log(); refused != 0 || len(seen) != 1 || seen[0] != server1.String()+":80" || e.s2.saw("/refused") {
			t.Fatalf("socks upstream saw %q refused %d", seen, refused)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		const n = 4
		errs := make(chan error, n)
		ids := make(chan string, n)
		for i := 0; i < n; i++ {
			go func() {
				s, err := m.Acquire(ctx, fmt.Sprintf("u-c%d", i), Policy{Mode: ModeFull})
				if err != nil {
					errs <- err
					return
				}
				ids <- s.ID()
				g, err := netns.GetFromPath(NetNSPath(s.guestNS))
				if err == nil {
					_, err = httpGetFrom(g, url1, "")
					g.Close()
				}
				errs <- errors.Join(err, m.Release(ctx, s))
			}()
		}
		seen := map[string]bool{}
		for i := 0; i < n; i++ {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		close(ids)
		for id := range ids {
			if seen[id] {
				t.Errorf("slot %s handed out twice", id)
			}
			seen[id] = true
		}
	})

	t.Run("start_in_netns", func(t *testing.T) {
		s, err := m.Acquire(ctx, "u-exec", Policy{Mode: ModeNone})
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("cat", "/proc/net/dev")
		var out strings.Builder
		cmd.Stdout = &out
		if err := s.Start(cmd); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), TapName+":") || !strings.Contains(out.String(), slotVethName+":") || strings.Contains(out.String(), "up0:") {
			t.Fatalf("process did not run in the slot namespace:\n%s", out.String())
		}
		if err := m.Release(ctx, s); err != nil {
			t.Fatal(err)
		}
		if err := s.Start(exec.Command("true")); err == nil {
			t.Fatal("Start on a released slot succeeded")
		}
		if _, err := os.Stat(s.NetNSPath()); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("namespace of a released slot: %v", err)
		}
	})
}
