package netslot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The guest network is the same in every slot, so a snapshot taken in one
// slot resumes unchanged in any other. 169.254.0.20/30 is link-local: it is
// never routed, cannot collide with a real network of the host or of a
// user, and the /30 holds exactly the guest and its gateway. (It is the
// layout Firecracker's clone guide and E2B use.)
var (
	// GuestAddr is every guest's address.
	GuestAddr = netip.MustParseAddr("169.254.0.21")
	// GatewayAddr is the TAP side in the slot namespace: the guest's
	// default gateway, DNS server and proxy.
	GatewayAddr = netip.MustParseAddr("169.254.0.22")
	// GuestPrefix is the guest link's network.
	GuestPrefix = netip.MustParsePrefix("169.254.0.20/30")
	// GuestMAC is the MAC the hypervisor should give the guest NIC.
	GuestMAC = net.HardwareAddr{0x02, 0x68, 0x67, 0x00, 0x00, 0x15}
	// GatewayMAC is the TAP's MAC, fixed so a resumed guest's ARP cache
	// stays right.
	GatewayMAC = net.HardwareAddr{0x02, 0x68, 0x67, 0x00, 0x00, 0x16}
)

const (
	// TapName is the guest TAP device inside every slot namespace; the
	// hypervisor opens it by this name from inside the namespace.
	TapName = "tap0"
	// slotVethName is the slot's end of the veth pair.
	slotVethName = "veth0"
)

// GuestConfig is the guest side of a slot, which the host sends to the
// agent over the agent link; the agent configures eth0 from it.
type GuestConfig struct {
	// Address is the guest's address with prefix length, "169.254.0.21/30".
	Address string `json:"address"`
	// Gateway is the default route.
	Gateway string `json:"gateway"`
	// DNS are the resolvers for /etc/resolv.conf.
	DNS []string `json:"dns"`
	// MTU of eth0.
	MTU int `json:"mtu"`
	// MAC the NIC has (set by the hypervisor from GuestMAC).
	MAC string `json:"mac"`
	// ProxyURL, when set, is the credential-free forwarder to use for
	// HTTP(S)_PROXY.
	ProxyURL string `json:"proxy_url,omitempty"`
}

// Env returns the proxy environment variables for the guest's processes
// (empty without a proxy).
func (g GuestConfig) Env() []string {
	if g.ProxyURL == "" {
		return nil
	}
	noProxy := "localhost,127.0.0.1,::1"
	return []string{
		"HTTP_PROXY=" + g.ProxyURL, "HTTPS_PROXY=" + g.ProxyURL,
		"http_proxy=" + g.ProxyURL, "https_proxy=" + g.ProxyURL,
		"NO_PROXY=" + noProxy, "no_proxy=" + noProxy,
	}
}

// Slot is one VM's network: namespace, veth pair, TAP, rules, and the DNS
// filter and proxy forwarder serving its guest.
type Slot struct {
	m        *Manager
	id       string // netns name, "<prefix>-<index>"
	index    int
	hostVeth string
	hostAddr netip.Addr
	slotAddr netip.Addr
	// guestNS is the stand-in guest namespace of tests; empty in real use.
	guestNS string

	mu       sync.Mutex // guards everything below
	ns       netns.NsHandle
	owner    string
	policy   Policy
	dns      *dnsFilter
	fwd      *Forwarder
	resolved map[netip.Addr]time.Time // DNS-allowed addresses and when their set element expires
}

// ID names the slot; it is also its network namespace's name. The VM
// record stores it so reconciliation can pass it to Reclaim and Adopt.
func (s *Slot) ID() string { return s.id }

// Owner is the owner given to Acquire or Adopt.
func (s *Slot) Owner() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owner
}

// Policy is the egress policy in force.
func (s *Slot) Policy() Policy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.policy
}

// NetNSPath is the namespace's path, for `ip netns exec`-style use or a
// jailer's --netns option.
func (s *Slot) NetNSPath() string { return NetNSPath(s.id) }

// TapName is the TAP device the hypervisor must open from inside the
// namespace (QEMU: -netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vnet_hdr=on).
func (s *Slot) TapName() string { return TapName }

// HostAddr is the daemon-side address of the slot's veth pair.
func (s *Slot) HostAddr() netip.Addr { return s.hostAddr }

// SlotAddr is the slot-side veth address; guest traffic leaves the slot
// SNATed to it.
func (s *Slot) SlotAddr() netip.Addr { return s.slotAddr }

// GuestConfig is the guest network to send to the agent.
func (s *Slot) GuestConfig() GuestConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := GuestConfig{
		Address: netip.PrefixFrom(GuestAddr, GuestPrefix.Bits()).String(),
		Gateway: GatewayAddr.String(),
		DNS:     []string{GatewayAddr.String()},
		MTU:     s.m.cfg.MTU,
		MAC:     GuestMAC.String(),
	}
	if s.fwd != nil {
		g.ProxyURL = (&url.URL{Scheme: "http", Host: net.JoinHostPort(GatewayAddr.String(), fmt.Sprint(ProxyPort))}).String()
	}
	return g
}

// Start starts cmd inside the slot's network namespace: the calling OS
// thread enters the namespace, forks, and returns. Use it to run the
// hypervisor, which then opens TapName itself.
func (s *Slot) Start(cmd *exec.Cmd) error {
	s.mu.Lock()
	ns := s.ns
	s.mu.Unlock()
	if !ns.IsOpen() {
		return fmt.Errorf("slot %s is released", s.id)
	}
	if err := inNS(ns, cmd.Start); err != nil {
		return fmt.Errorf("start %s in slot %s: %w", cmd.Path, s.id, err)
	}
	return nil
}

// nft returns an nftables connection bound to the slot namespace.
func (s *Slot) nft() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(s.ns)))
	if err != nil {
		return nil, fmt.Errorf("nftables in slot %s: %w", s.id, err)
	}
	return c, nil
}

// applyRules installs the slot table for policy p.
func (s *Slot) applyRules(p Policy, proxy bool) error {
	c, err := s.nft()
	if err != nil {
		return err
	}
	slotRules(c, slotRuleParams{slotAddr: s.slotAddr, pool: s.m.cfg.PoolCIDR, block: s.m.cfg.AlwaysBlock, policy: p, proxy: proxy})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables rules in slot %s: %w", s.id, err)
	}
	return nil
}

// recordDNS makes addresses answered by the DNS filter reachable for the
// DNS set timeout.
func (s *Slot) recordDNS(_ context.Context, addrs []netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	var fresh, refresh []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		if seen[a] || cidrsContain(s.blocked(), a) {
			continue // never open an always-blocked address, whatever DNS says
		}
		seen[a] = true
		if exp, ok := s.resolved[a]; ok && exp.After(now) {
			refresh = append(refresh, a)
		} else {
			fresh = append(fresh, a)
		}
	}
	if len(fresh)+len(refresh) == 0 {
		return nil
	}
	c, err := s.nft()
	if err != nil {
		return err
	}
	timeout := s.m.cfg.DNSAllowTimeout
	if err := addDNSAddrs(c, fresh, refresh, timeout); err != nil {
		if len(refresh) == 0 {
			return err
		}
		// An element may have expired in the kernel just now, failing the
		// delete: add everything plainly instead.
		if err2 := addDNSAddrs(c, append(fresh, refresh...), nil, timeout); err2 != nil {
			return errors.Join(err, err2)
		}
	}
	for _, a := range append(fresh, refresh...) {
		s.resolved[a] = now.Add(timeout)
	}
	return nil
}

// blocked lists the destinations no policy opens.
func (s *Slot) blocked() []netip.Prefix {
	return append([]netip.Prefix{s.m.cfg.PoolCIDR, linkLocal}, s.m.cfg.AlwaysBlock...)
}

// dnsVerdict applies the current policy to a question name.
func (s *Slot) dnsVerdict(name string) dnsVerdict {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.policy.Mode {
	case ModeFull:
		return dnsForward
	case ModeAllow:
		if domainAllowed(s.policy.AllowDomains, name) {
			return dnsForwardRecord
		}
	}
	return dnsRefuse
}

// proxyAllows applies the current policy to a proxy request's target.
func (s *Slot) proxyAllows(host string, _ int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		a = a.Unmap()
		if !a.Is4() || a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() || cidrsContain(s.blocked(), a) {
			return false
		}
		switch s.policy.Mode {
		case ModeFull:
			return true
		case ModeAllow:
			exp, ok := s.resolved[a]
			return cidrsContain(s.policy.AllowCIDRs, a) || ok && exp.After(time.Now())
		}
		return false
	}
	switch s.policy.Mode {
	case ModeFull:
		return true
	case ModeAllow:
		return domainAllowed(s.policy.AllowDomains, host)
	}
	return false
}

// activate installs policy p and starts the slot's DNS filter and, with an
// upstream proxy, its forwarder. On error nothing stays started.
func (s *Slot) activate(owner string, p Policy) error {
	proxy := p.Upstream != nil && p.Mode != ModeNone
	if err := s.applyRules(p, proxy); err != nil {
		return err
	}
	s.mu.Lock()
	s.owner, s.policy = owner, p
	s.resolved = map[netip.Addr]time.Time{}
	s.mu.Unlock()

	var r reverter
	defer r.Fail()
	gw := GatewayAddr.String()
	var udp net.PacketConn
	var tcp, proxyLn net.Listener
	err := inNS(s.ns, func() error {
		// IP_FREEBIND: the TAP has no carrier until the hypervisor opens
		// it; the listeners must not depend on that.
		lc := net.ListenConfig{Control: freebind}
		var err error
		if udp, err = lc.ListenPacket(context.Background(), "udp4", net.JoinHostPort(gw, "53")); err != nil {
			return fmt.Errorf("listen dns udp: %w", err)
		}
		r.Add(func() { udp.Close() })
		if tcp, err = lc.Listen(context.Background(), "tcp4", net.JoinHostPort(gw, "53")); err != nil {
			return fmt.Errorf("listen dns tcp: %w", err)
		}
		r.Add(func() { tcp.Close() })
		if proxy {
			if proxyLn, err = lc.Listen(context.Background(), "tcp4", net.JoinHostPort(gw, fmt.Sprint(ProxyPort))); err != nil {
				return fmt.Errorf("listen proxy: %w", err)
			}
			r.Add(func() { proxyLn.Close() })
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("slot %s: %w", s.id, err)
	}
	var fwd *Forwarder
	if proxy {
		fwd, err = NewForwarder(p.Upstream, ForwarderOptions{
			Dial:   s.m.dialUpstreamProxy,
			Allow:  s.proxyAllows,
			Logger: s.m.log.With("slot", s.id, "owner", owner),
		})
		if err != nil {
			return fmt.Errorf("slot %s: %w", s.id, err)
		}
	}
	r.Success()

	dns := &dnsFilter{
		upstream: s.m.cfg.DNSUpstream,
		dial:     s.m.dialHost,
		decide:   s.dnsVerdict,
		record:   s.recordDNS,
		ttlCap:   s.m.cfg.DNSAllowTimeout / 2,
		log:      s.m.log.With("slot", s.id),
	}
	dns.serveUDP(udp)
	dns.serveTCP(tcp)
	if fwd != nil {
		go func() {
			if err := fwd.Serve(proxyLn); err != nil {
				s.m.log.Warn("proxy forwarder stopped", "slot", s.id, "err", err)
			}
		}()
	}
	s.mu.Lock()
	s.dns, s.fwd = dns, fwd
	s.mu.Unlock()
	return nil
}

// deactivate stops the slot's DNS filter and forwarder; rules stay.
func (s *Slot) deactivate() {
	s.mu.Lock()
	dns, fwd := s.dns, s.fwd
	s.dns, s.fwd = nil, nil
	s.mu.Unlock()
	if dns != nil {
		dns.Close()
	}
	if fwd != nil {
		fwd.Close()
	}
}

func freebind(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
	}); err != nil {
		return err
	}
	return serr
}

// linkDel removes a link by name in the handle's namespace; a missing link
// is not an error.
func linkDel(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up link %s: %w", name, err)
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}
