package netslot

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsFixture runs a stand-in upstream resolver on loopback (UDP and TCP)
// and a dnsFilter in front of it.
type dnsFixture struct {
	up       *testDNS
	filter   *dnsFilter
	addr     string // the filter's address
	mu       sync.Mutex
	recorded []netip.Addr
	fail     bool
}

func newDNSFixture(t *testing.T, decide func(string) dnsVerdict) *dnsFixture {
	t.Helper()
	fx := &dnsFixture{up: &testDNS{ttl: 3600, records: map[string][]netip.Addr{
		"allowed.test": {netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.12")},
		"other.test":   {netip.MustParseAddr("192.0.2.11")},
	}}}
	upc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { upc.Close() })
	upl, err := net.Listen("tcp4", upc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { upl.Close() })
	fx.up.serveUDP(upc)
	fx.up.serveTCP(upl)

	d := &net.Dialer{}
	fx.filter = &dnsFilter{
		upstream: upc.LocalAddr().String(),
		dial:     d.DialContext,
		decide:   decide,
		record: func(_ context.Context, addrs []netip.Addr) error {
			fx.mu.Lock()
			defer fx.mu.Unlock()
			if fx.fail {
				return errors.New("nft failed")
			}
			fx.recorded = append(fx.recorded, addrs...)
			return nil
		},
		ttlCap: 300 * time.Second,
		log:    testLogger(t),
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	fx.filter.serveUDP(pc)
	fx.filter.serveTCP(ln)
	t.Cleanup(fx.filter.Close)
	fx.addr = pc.LocalAddr().String()
	return fx
}

func exchangeWith(t *testing.T, network, addr string, q []byte) []byte {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if network == "tcp" {
		if err := writeTCPMsg(c, q); err != nil {
			t.Fatal(err)
		}
		resp, err := readTCPMsg(c)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if _, err := c.Write(q); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

func rcode(resp []byte) int { return int(resp[3] & 0x0f) }

func TestDNSFilter(t *testing.T) {
	fx := newDNSFixture(t, func(name string) dnsVerdict {
		if domainAllowed([]string{"allowed.test", "*.wild.test"}, name) {
			return dnsForwardRecord
		}
		return dnsRefuse
	})

	for _, network := range []string{"udp", "tcp"} {
		resp := exchangeWith(t, network, fx.addr, buildQuery(0x1234, "Allowed.Test", 1))
		if binary.BigEndian.Uint16(resp) != 0x1234 || rcode(resp) != 0 || binary.BigEndian.Uint16(resp[6:]) != 2 {
			t.Fatalf("%s: allowed name: id %x rcode %d answers %d", network, binary.BigEndian.Uint16(resp), rcode(resp), binary.BigEndian.Uint16(resp[6:]))
		}
		// TTLs are capped at the filter's limit (the fake upstream says 3600).
		_, addrs, err := capTTLs(resp, 1<<31)
		if err != nil || len(addrs) != 2 {
			t.Fatalf("%s: parse answer: %v %v", network, addrs, err)
		}
		ttlOff := len(resp) - 4 - 2 - 4 // last record: ttl, rdlength, rdata
		if ttl := binary.BigEndian.Uint32(resp[ttlOff:]); ttl != 300 {
			t.Fatalf("%s: guest sees TTL %d, want 300", network, ttl)
		}

		resp = exchangeWith(t, network, fx.addr, buildQuery(0x4321, "other.test", 1))
		if rcode(resp) != int(dnsmessage.RCodeRefused) || binary.BigEndian.Uint16(resp[6:]) != 0 {
			t.Fatalf("%s: refused name: rcode %d", network, rcode(resp))
		}
	}
	fx.mu.Lock()
	got := slices.Clone(fx.recorded)
	fx.mu.Unlock()
	want := []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.12")}
	if !slices.Equal(got, append(slices.Clone(want), want...)) {
		t.Fatalf("recorded %v", got)
	}
	if asked := fx.up.questions(); slices.Contains(asked, "other.test") || len(asked) != 2 {
		t.Fatalf("upstream was asked %q; refused names must not leave the host", asked)
	}

	// A subdomain pattern, and an allowed name the upstream does not know.
	resp := exchangeWith(t, "udp", fx.addr, buildQuery(7, "x.wild.test", 1))
	if rcode(resp) != 3 {
		t.Fatalf("unknown allowed name: rcode %d, want NXDOMAIN passed through", rcode(resp))
	}
	resp = exchangeWith(t, "udp", fx.addr, buildQuery(8, "wild.test", 1))
	if rcode(resp) != int(dnsmessage.RCodeRefused) {
		t.Fatalf("*.wild.test must not match wild.test: rcode %d", rcode(resp))
	}

	// When the firewall cannot be opened, the guest gets no usable answer.
	fx.mu.Lock()
	fx.fail = true
	fx.mu.Unlock()
	resp = exchangeWith(t, "udp", fx.addr, buildQuery(9, "allowed.test", 1))
	if rcode(resp) != int(dnsmessage.RCodeServerFailure) || binary.BigEndian.Uint16(resp[6:]) != 0 {
		t.Fatalf("record failure: rcode %d", rcode(resp))
	}
}

// TestParseQueryRejectsAmbiguousNames: a question whose label holds a dot
// ("evil.allowed" + "test") reads as an allowed name but is another name
// on the wire; a compression loop or a truncated label is no name at all.
// None of them is judged, let alone forwarded.
func TestParseQueryRejectsAmbiguousNames(t *testing.T) {
	fx := newDNSFixture(t, func(name string) dnsVerdict {
		if domainAllowed([]string{"*.allowed.test"}, name) {
			return dnsForward
		}
		return dnsRefuse
	})
	dotted := buildQuery(0x55, "x.allowed.test", 1)
	// Rewrite the wire name as two labels: "x.allowed" and "test".
	copy(dotted[12:], []byte("\x09x.allowed\x04test\x00"))
	if _, _, err := parseQuery(dotted); err == nil {
		t.Fatal("a label with a dot was accepted")
	}
	if resp := fx.filter.handle(context.Background(), dotted, "udp"); resp != nil {
		t.Fatalf("a query with a dotted label was answered: % x", resp)
	}
	if asked := fx.up.questions(); len(asked) != 0 {
		t.Fatalf("upstream was asked %q", asked)
	}
	loop := buildQuery(0x56, "a", 1)
	loop[12], loop[13] = 0xc0, 12 // the name points at itself
	if _, _, err := parseQuery(loop); err == nil {
		t.Fatal("compression loop accepted")
	}
	if _, _, err := parseQuery(append(buildQuery(0x57, "a", 1)[:12], 5, 'a')); err == nil {
		t.Fatal("truncated label accepted")
	}
	if _, q, err := parseQuery(buildQuery(0x58, "X.Allowed.Test", 1)); err != nil || questionName(q) != "x.allowed.test" {
		t.Fatalf("plain query: %q, %v", questionName(q), err)
	}
}

func TestPolicyParsing(t *testing.T) {
	cidrs, domains, err := ParseAllowList([]string{"192.0.2.10", "10.0.0.0/8", "Example.COM.", "*.github.com"})
	if err != nil {
		t.Fatal(err)
	}
	if len(cidrs) != 2 || cidrs[0].String() != "192.0.2.10/32" || cidrs[1].String() != "10.0.0.0/8" {
		t.Fatalf("cidrs %v", cidrs)
	}
	if !slices.Equal(domains, []string{"example.com", "*.github.com"}) {
		t.Fatalf("domains %v", domains)
	}
	for _, bad := range []string{"2001:db8::/32", "exa mple.com", "*.", "a.*.com"} {
		if _, _, err := ParseAllowList([]string{bad}); err == nil {
			t.Errorf("ParseAllowList(%q) accepted", bad)
		}
	}
	cases := []struct {
		name string
		ok   bool
	}{{"example.com", true}, {"www.example.com", false}, {"api.github.com", true}, {"github.com", false}, {"evilgithub.com", false}, {"EXAMPLE.com.", true}}
	for _, c := range cases {
		if got := domainAllowed(domains, c.name); got != c.ok {
			t.Errorf("domainAllowed(%q) = %v", c.name, got)
		}
	}
	if err := (Policy{Mode: "some"}).Validate(); err == nil {
		t.Error("unknown mode accepted")
	}
}

// TestDNSTCPConnectionsBounded: a guest holding TCP connections to its
// slot's DNS server gets at most dnsMaxTCPConns; the next is closed at
// once, and closed connections are forgotten (not kept until the slot
// goes).
func TestDNSTCPConnectionsBounded(t *testing.T) {
	fx := newDNSFixture(t, func(string) dnsVerdict { return dnsForward })
	tracked := func() int {
		fx.filter.mu.Lock()
		defer fx.filter.mu.Unlock()
		return len(fx.filter.closers)
	}
	base := tracked() // the listeners
	var held []net.Conn
	for range dnsMaxTCPConns {
		c, err := net.DialTimeout("tcp", fx.addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	deadline := time.Now().Add(5 * time.Second)
	for tracked() != base+dnsMaxTCPConns {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections tracked, want %d", tracked()-base, dnsMaxTCPConns)
		}
		time.Sleep(10 * time.Millisecond)
	}
	extra, err := net.DialTimeout("tcp", fx.addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("connection past the cap: read = %v, want it closed", err)
	}
	for _, c := range held {
		c.Close()
	}
	deadline = time.Now().Add(5 * time.Second)
	for tracked() != base {
		if time.Now().After(deadline) {
			t.Fatalf("%d closed connections still tracked", tracked()-base)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
