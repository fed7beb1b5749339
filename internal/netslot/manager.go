package netslot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Config configures a Manager. Zero fields take the documented defaults.
type Config struct {
	// Prefix names everything the manager creates: namespaces
	// "<Prefix>-<n>", host links "<Prefix>v<n>" and the host nftables
	// table "inet <Prefix>". 1–8 characters [a-z0-9], starting with a
	// letter. Default "hangar". Reclaim touches only names of this form.
	Prefix string
	// HostNetNS is the path of the daemon-side namespace the slots hang
	// off; empty means the process's own. Tests set it to a namespace
	// they made.
	HostNetNS string
	// PoolCIDR is carved into one /30 per slot (host side .1, slot side
	// .2). Default 10.200.0.0/16, 16384 slots. It must not overlap a
	// network the host uses.
	PoolCIDR netip.Prefix
	// PoolSize is how many idle slots are kept ready; 0 means 2,
	// negative means none.
	PoolSize int
	// DNSUpstream is the resolver ("ip:port") the DNS filters forward
	// to, reached from the host namespace. Default: the first nameserver
	// of /etc/resolv.conf, port 53.
	DNSUpstream string
	// DNSAllowTimeout is how long an address answered for an allowed
	// domain stays reachable after the last answer; the guest sees TTLs of
	// at most half of it. Default 10 minutes.
	DNSAllowTimeout time.Duration
	// MTU of the veth pair, TAP and guest. Default 1500.
	MTU int
	// TapUID and TapGID own the TAP, so an unprivileged hypervisor can
	// open it. Default 0 (root).
	TapUID, TapGID uint32
	// AlwaysBlock are extra destinations no policy opens (internal
	// networks of the site, for example).
	AlwaysBlock []netip.Prefix
	// Logger; default discards.
	Logger *slog.Logger

	// guestVeth replaces the TAP with a veth to a stand-in guest
	// namespace "<id>-guest" (tests only: a TAP needs a hypervisor).
	guestVeth bool
}

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,7}$`)

func (c *Config) setDefaults() error {
	if c.Prefix == "" {
		c.Prefix = "hangar"
	}
	if !prefixRE.MatchString(c.Prefix) {
		return fmt.Errorf("netslot prefix %q: want 1-8 characters [a-z0-9] starting with a letter", c.Prefix)
	}
	if !c.PoolCIDR.IsValid() {
		c.PoolCIDR = netip.MustParsePrefix("10.200.0.0/16")
	}
	c.PoolCIDR = c.PoolCIDR.Masked()
	if !c.PoolCIDR.Addr().Is4() || c.PoolCIDR.Bits() > 30 || c.PoolCIDR.Bits() < 8 {
		return fmt.Errorf("netslot pool %s: want an IPv4 prefix between /8 and /30", c.PoolCIDR)
	}
	if c.PoolCIDR.Overlaps(linkLocal) {
		return fmt.Errorf("netslot pool %s overlaps link-local 169.254.0.0/16", c.PoolCIDR)
	}
	if c.PoolSize == 0 {
		c.PoolSize = 2
	}
	if c.PoolSize < 0 {
		c.PoolSize = 0
	}
	if c.DNSAllowTimeout <= 0 {
		c.DNSAllowTimeout = 10 * time.Minute
	}
	if c.DNSAllowTimeout < 2*time.Second {
		return fmt.Errorf("netslot dns allow timeout %s is too short", c.DNSAllowTimeout)
	}
	if c.MTU == 0 {
		c.MTU = 1500
	}
	if c.MTU < 576 || c.MTU > 65535 {
		return fmt.Errorf("netslot mtu %d out of range", c.MTU)
	}
	for _, b := range c.AlwaysBlock {
		if !b.IsValid() || !b.Addr().Is4() {
			return fmt.Errorf("netslot always-block %s: only IPv4 prefixes", b)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// ErrExhausted is returned when every slot index of the pool is in use.
var ErrExhausted = errors.New("no free network slot")

// Manager creates, pools, hands out and removes slots. Its methods are
// safe for concurrent use.
type Manager struct {
	cfg        Config
	log        *slog.Logger
	hostNS     netns.NsHandle
	vethPrefix string
	capacity   int
	nameRE     *regexp.Regexp // namespace names this manager owns
	linkRE     *regexp.Regexp // host link names this manager owns

	mu       sync.Mutex // guards used, reserved, idle, slots, closed, making
	used     map[int]bool
	reserved map[int]bool // subset of used: known to Reclaim, not adopted yet
	idle     []*Slot
	slots    map[string]*Slot // handed out by Acquire or Adopt
	making   int              // pool slots being created
	closed   bool

	refill chan struct{}
	stop   chan struct{}
	wg     sync.WaitGroup
}

// NewManager installs the host table, enables IPv4 forwarding in the host
// namespace, and starts filling the pool. Slots left by an earlier run are
// not touched until Reclaim; their indexes are skipped.
func NewManager(ctx context.Context, cfg Config) (*Manager, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if cfg.DNSUpstream == "" {
		cfg.DNSUpstream = resolvConfNameserver("/etc/resolv.conf")
	}
	m := &Manager{
		cfg:        cfg,
		log:        cfg.Logger,
		vethPrefix: cfg.Prefix + "v",
		capacity:   1 << (30 - cfg.PoolCIDR.Bits()),
		nameRE:     regexp.MustCompile(`^` + cfg.Prefix + `-([0-9]+)(-guest)?$`),
		linkRE:     regexp.MustCompile(`^` + cfg.Prefix + `v([0-9]+)$`),
		used:       map[int]bool{},
		reserved:   map[int]bool{},
		slots:      map[string]*Slot{},
		refill:     make(chan struct{}, 1),
		stop:       make(chan struct{}),
	}
	if m.capacity > 65536 {
		m.capacity = 65536 // keeps "<prefix>v<n>" within 15 characters
	}
	var err error
	if cfg.HostNetNS == "" {
		m.hostNS, err = netns.Get()
	} else {
		m.hostNS, err = netns.GetFromPath(cfg.HostNetNS)
	}
	if err != nil {
		return nil, fmt.Errorf("open host netns: %w", err)
	}
	if err := inNS(m.hostNS, func() error { return writeSysctl("net.ipv4.ip_forward", "1") }); err != nil {
		m.hostNS.Close()
		return nil, fmt.Errorf("enable forwarding in host netns: %w", err)
	}
	if err := m.installHostRules(); err != nil {
		m.hostNS.Close()
		return nil, err
	}
	if cfg.DNSUpstream == "" {
		m.log.Warn("no DNS upstream configured or found in /etc/resolv.conf; guest DNS will fail")
	}
	m.wg.Add(1)
	go m.fillPool()
	m.kick()
	return m, nil
}

func (m *Manager) installHostRules() error {
	c, err := nftables.New(nftables.WithNetNSFd(int(m.hostNS)))
	if err != nil {
		return fmt.Errorf("nftables in host netns: %w", err)
	}
	hostRules(c, m.cfg.Prefix, m.vethPrefix, m.cfg.PoolCIDR, m.cfg.AlwaysBlock)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install host nftables table %s: %w", m.cfg.Prefix, err)
	}
	return nil
}

func resolvConfNameserver(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				return netip.AddrPortFrom(a, 53).String()
			}
		}
	}
	return ""
}

// names of slot index i.
func (m *Manager) nsName(i int) string   { return fmt.Sprintf("%s-%d", m.cfg.Prefix, i) }
func (m *Manager) vethName(i int) string { return fmt.Sprintf("%s%d", m.vethPrefix, i) }

// addrs returns the host-side and slot-side veth addresses of index i.
func (m *Manager) addrs(i int) (netip.Addr, netip.Addr) {
	b := m.cfg.PoolCIDR.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(i) * 4
	host := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v + 1)})
	slot := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v + 2)})
	return host, slot
}

func (m *Manager) hostHandle() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(m.hostNS)
	if err != nil {
		return nil, fmt.Errorf("netlink in host netns: %w", err)
	}
	return h, nil
}

// allocIndex reserves the lowest free index whose names are not taken on
// the host (leftovers wait for Reclaim). Call with m.mu held.
func (m *Manager) allocIndex(h *netlink.Handle) (int, error) {
	for i := 0; i < m.capacity; i++ {
		if m.used[i] {
			continue
		}
		if _, err := os.Stat(NetNSPath(m.nsName(i))); err == nil {
			continue
		}
		if _, err := h.LinkByName(m.vethName(i)); err == nil {
			continue
		}
		m.used[i] = true
		return i, nil
	}
	return 0, ErrExhausted
}

// newSlot builds slot index i on the host: namespace, veth pair, TAP,
// addresses, routes, forwarding, and locked-down rules (policy none). Each
// step is undone if a later one fails.
func (m *Manager) newSlot(i int) (_ *Slot, err error) {
	s := &Slot{m: m, id: m.nsName(i), index: i, hostVeth: m.vethName(i)}
	s.hostAddr, s.slotAddr = m.addrs(i)
	var r reverter
	defer func() {
		if err != nil {
			r.Fail()
			err = fmt.Errorf("create slot %s: %w", s.id, err)
		}
	}()

	h, err := m.hostHandle()
	if err != nil {
		return nil, err
	}
	defer h.Close()

	s.ns, err = createNamedNS(s.id)
	if err != nil {
		return nil, err
	}
	r.Add(func() { s.ns.Close(); _ = deleteNamedNS(s.id) })

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: s.hostVeth, MTU: m.cfg.MTU},
		PeerName: slotVethName, PeerNamespace: netlink.NsFd(int(s.ns))}
	if err := h.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add veth %s: %w", s.hostVeth, err)
	}
	r.Add(func() { _ = linkDel(h, s.hostVeth) })
	if err := addrUp(h, s.hostVeth, netip.PrefixFrom(s.hostAddr, 30), nil); err != nil {
		return nil, err
	}

	sh, err := netlink.NewHandleAt(s.ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in slot netns: %w", err)
	}
	defer sh.Close()
	if err := addrUp(sh, "lo", netip.Prefix{}, nil); err != nil {
		return nil, err
	}
	if err := addrUp(sh, slotVethName, netip.PrefixFrom(s.slotAddr, 30), nil); err != nil {
		return nil, err
	}
	veth0, err := sh.LinkByName(slotVethName)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", slotVethName, err)
	}
	if err := sh.RouteReplace(&netlink.Route{LinkIndex: veth0.Attrs().Index, Gw: s.hostAddr.AsSlice()}); err != nil {
		return nil, fmt.Errorf("add default route: %w", err)
	}

	err = inNS(s.ns, func() error {
		if err := writeSysctl("net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
		// The guest gets IPv4 only; no IPv6 on the TAP means no IPv6
		// path to filter. Kernels without IPv6 lack these files.
		_ = writeSysctl("net.ipv6.conf.default.disable_ipv6", "1")
		_ = writeSysctl("net.ipv6.conf.all.disable_ipv6", "1")
		if m.cfg.guestVeth {
			return nil
		}
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: TapName},
			Mode:      netlink.TUNTAP_MODE_TAP,
			// vnet_hdr for virtio-net offloads; single queue, because a
			// persistent TAP's multi-queue flag must match the opener's.
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
			Owner: m.cfg.TapUID,
			Group: m.cfg.TapGID,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("add tap: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if m.cfg.guestVeth {
		if err := m.newTestGuest(s, sh); err != nil {
			return nil, err
		}
		r.Add(func() { _ = deleteNamedNS(s.guestNS) })
	}
	if err := addrUp(sh, TapName, netip.PrefixFrom(GatewayAddr, GuestPrefix.Bits()), GatewayMAC); err != nil {
		return nil, err
	}
	if err := s.applyRules(Policy{Mode: ModeNone}, false); err != nil {
		return nil, err
	}
	return s, nil
}

// newTestGuest makes the stand-in guest: a namespace "<id>-guest" whose
// eth0 is the peer of a veth named tap0 in the slot, configured the way
// the agent configures a real guest from GuestConfig.
func (m *Manager) newTestGuest(s *Slot, sh *netlink.Handle) error {
	s.guestNS = s.id + "-guest"
	g, err := createNamedNS(s.guestNS)
	if err != nil {
		return err
	}
	defer g.Close()
	if err := sh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: TapName, MTU: m.cfg.MTU},
		PeerName: "eth0", PeerNamespace: netlink.NsFd(int(g))}); err != nil {
		_ = deleteNamedNS(s.guestNS)
		return fmt.Errorf("add guest veth: %w", err)
	}
	gh, err := netlink.NewHandleAt(g)
	if err != nil {
		_ = deleteNamedNS(s.guestNS)
		return fmt.Errorf("netlink in guest netns: %w", err)
	}
	defer gh.Close()
	err = errors.Join(
		addrUp(gh, "lo", netip.Prefix{}, nil),
		addrUp(gh, "eth0", netip.PrefixFrom(GuestAddr, GuestPrefix.Bits()), GuestMAC),
	)
	if err == nil {
		eth0, lerr := gh.LinkByName("eth0")
		if lerr != nil {
			err = lerr
		} else {
			err = gh.RouteReplace(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: GatewayAddr.AsSlice()})
		}
	}
	if err != nil {
		_ = deleteNamedNS(s.guestNS)
		return fmt.Errorf("configure guest netns: %w", err)
	}
	return nil
}

// addrUp sets mac (if given), adds addr (if valid, idempotently) and sets
// the link up.
func addrUp(h *netlink.Handle, name string, addr netip.Prefix, mac net.HardwareAddr) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up link %s: %w", name, err)
	}
	if mac != nil {
		if err := h.LinkSetHardwareAddr(l, mac); err != nil {
			return fmt.Errorf("set mac of %s: %w", name, err)
		}
	}
	if addr.IsValid() {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}}
		if err := h.AddrReplace(l, a); err != nil {
			return fmt.Errorf("add %s to %s: %w", addr, name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// destroy removes a slot from the host; every step tolerates what is
// already gone, so it can be repeated.
func (m *Manager) destroy(s *Slot) error {
	s.deactivate()
	s.mu.Lock()
	if s.ns.IsOpen() {
		s.ns.Close()
	}
	s.mu.Unlock()
	var errs []error
	if h, err := m.hostHandle(); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, linkDel(h, s.hostVeth))
		h.Close()
	}
	errs = append(errs, deleteNamedNS(s.id))
	if s.guestNS != "" {
		errs = append(errs, deleteNamedNS(s.guestNS))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove slot %s: %w", s.id, err)
	}
	return nil
}

func (m *Manager) kick() {
	select {
	case m.refill <- struct{}{}:
	default:
	}
}

// fillPool keeps PoolSize idle slots ready, so Acquire rarely waits on
// netlink.
func (m *Manager) fillPool() {
	defer m.wg.Done()
	for {
		select {
		case <-m.stop:
			return
		case <-m.refill:
		}
		for {
			m.mu.Lock()
			if m.closed || len(m.idle)+m.making >= m.cfg.PoolSize {
				m.mu.Unlock()
				break
			}
			m.making++
			m.mu.Unlock()
			s, err := m.create()
			m.mu.Lock()
			m.making--
			if err == nil && m.closed {
				m.mu.Unlock()
				m.release(s)
				return
			}
			if err == nil {
				m.idle = append(m.idle, s)
			}
			m.mu.Unlock()
			if err != nil {
				m.log.Error("fill network slot pool", "err", err)
				select {
				case <-m.stop:
					return
				case <-time.After(5 * time.Second):
				}
			}
		}
	}
}

// create allocates an index and builds a slot on it.
func (m *Manager) create() (*Slot, error) {
	h, err := m.hostHandle()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	i, err := m.allocIndex(h)
	m.mu.Unlock()
	h.Close()
	if err != nil {
		return nil, err
	}
	s, err := m.newSlot(i)
	if err != nil {
		m.mu.Lock()
		delete(m.used, i)
		m.mu.Unlock()
		return nil, err
	}
	return s, nil
}

// release destroys s and frees its index.
func (m *Manager) release(s *Slot) error {
	err := m.destroy(s)
	m.mu.Lock()
	delete(m.used, s.index)
	m.mu.Unlock()
	return err
}

// Acquire hands out a slot for owner with policy applied: from the pool
// when one is ready, else built now.
func (m *Manager) Acquire(ctx context.Context, owner string, p Policy) (*Slot, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, errors.New("netslot manager is closed")
	}
	var s *Slot
	if n := len(m.idle); n > 0 {
		s = m.idle[0]
		m.idle = m.idle[1:]
	}
	m.mu.Unlock()
	m.kick()
	if s == nil {
		var err error
		if s, err = m.create(); err != nil {
			return nil, err
		}
	}
	if err := s.activate(owner, p); err != nil {
		_ = m.release(s)
		return nil, fmt.Errorf("acquire slot: %w", err)
	}
	m.mu.Lock()
	m.slots[s.id] = s
	m.mu.Unlock()
	m.log.Info("network slot acquired", "slot", s.id, "owner", owner, "mode", string(p.Mode), "proxy", p.Upstream != nil)
	return s, nil
}

// UpdatePolicy replaces the policy of an acquired slot; established
// connections survive, new ones follow the new policy.
func (m *Manager) UpdatePolicy(ctx context.Context, s *Slot, p Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	_, ok := m.slots[s.id]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("slot %s is not acquired", s.id)
	}
	s.deactivate()
	if err := s.activate(s.Owner(), p); err != nil {
		return fmt.Errorf("update policy of slot %s: %w", s.id, err)
	}
	return nil
}

// Release removes the slot from the host. Slots are not reused: a fresh
// one carries no conntrack or neighbour state of the previous owner.
// Releasing an unknown or already released slot does nothing.
func (m *Manager) Release(ctx context.Context, s *Slot) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	if m.slots[s.id] != s {
		m.mu.Unlock()
		return nil
	}
	delete(m.slots, s.id)
	m.mu.Unlock()
	m.kick()
	if err := m.release(s); err != nil {
		return err
	}
	m.log.Info("network slot released", "slot", s.id)
	return nil
}

// Reclaim removes every namespace and host link of this manager's naming
// that is neither one of known (slot IDs the store still assigns to VMs)
// nor held by this manager, and re-installs the host table. Known slots
// that exist stay reserved for Adopt. It returns what it removed, as
// "netns:<name>" and "link:<name>". Run it at start, before Adopt, and
// periodically.
func (m *Manager) Reclaim(ctx context.Context, known []string) ([]string, error) {
	keep := map[int]bool{}
	for _, id := range known {
		if g := m.nameRE.FindStringSubmatch(id); g != nil && g[2] == "" {
			i, _ := strconv.Atoi(g[1])
			keep[i] = true
		}
	}
	var removed []string
	var errs []error
	owned := func(i int) bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		if keep[i] {
			if !m.used[i] {
				m.used[i], m.reserved[i] = true, true // for Adopt
			}
			return true
		}
		if m.reserved[i] {
			// Known at an earlier Reclaim, never adopted, and no longer
			// known: its VM is gone.
			delete(m.reserved, i)
			delete(m.used, i)
			return false
		}
		return m.used[i]
	}

	// Links first: removing a namespace takes its veth pair with it,
	// asynchronously, which would make this report depend on timing.
	h, err := m.hostHandle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list host links: %w", err)
	}
	for _, l := range links {
		name := l.Attrs().Name
		g := m.linkRE.FindStringSubmatch(name)
		if g == nil {
			continue
		}
		i, err := strconv.Atoi(g[1])
		if err != nil || i >= m.capacity || owned(i) {
			continue
		}
		if err := h.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete link %s: %w", name, err))
			continue
		}
		removed = append(removed, "link:"+name)
	}
	names, err := listNamedNS(m.cfg.Prefix + "-")
	if err != nil {
		return removed, err
	}
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		g := m.nameRE.FindStringSubmatch(name)
		if g == nil {
			continue
		}
		i, err := strconv.Atoi(g[1])
		if err != nil || i >= m.capacity || owned(i) {
			continue
		}
		if err := deleteNamedNS(name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "netns:"+name)
	}

	if err := m.installHostRules(); err != nil {
		errs = append(errs, err)
	}
	if len(removed) > 0 {
		m.log.Info("reclaimed network slot leftovers", "removed", strings.Join(removed, ","))
	}
	return removed, errors.Join(errs...)
}

// Adopt takes over an existing slot after a daemon restart: it re-applies
// the policy (addresses the DNS filter had allowed are forgotten; live
// connections survive) and restarts the DNS filter and proxy forwarder.
// Adopting a slot already held returns it.
func (m *Manager) Adopt(ctx context.Context, id, owner string, p Policy) (*Slot, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	g := m.nameRE.FindStringSubmatch(id)
	if g == nil || g[2] != "" {
		return nil, fmt.Errorf("adopt slot %q: not a slot of prefix %q", id, m.cfg.Prefix)
	}
	i, _ := strconv.Atoi(g[1])
	if i >= m.capacity {
		return nil, fmt.Errorf("adopt slot %s: outside pool %s", id, m.cfg.PoolCIDR)
	}
	m.mu.Lock()
	if s, ok := m.slots[id]; ok {
		m.mu.Unlock()
		return s, nil
	}
	if m.used[i] && !m.reserved[i] {
		m.mu.Unlock()
		return nil, fmt.Errorf("adopt slot %s: index %d is in use by this manager", id, i)
	}
	m.used[i] = true
	delete(m.reserved, i)
	m.mu.Unlock()

	s := &Slot{m: m, id: id, index: i, hostVeth: m.vethName(i)}
	s.hostAddr, s.slotAddr = m.addrs(i)
	fail := func(err error) (*Slot, error) {
		m.mu.Lock()
		delete(m.used, i) // a later Reclaim removes what is left of it
		m.mu.Unlock()
		if s.ns.IsOpen() {
			s.ns.Close()
		}
		return nil, fmt.Errorf("adopt slot %s: %w", id, err)
	}
	var err error
	if s.ns, err = netns.GetFromPath(NetNSPath(id)); err != nil {
		return fail(err)
	}
	if _, err := os.Stat(NetNSPath(id + "-guest")); err == nil && m.cfg.guestVeth {
		s.guestNS = id + "-guest"
	}
	h, err := m.hostHandle()
	if err != nil {
		return fail(err)
	}
	_, lerr := h.LinkByName(s.hostVeth)
	h.Close()
	if lerr != nil {
		return fail(fmt.Errorf("host link %s: %w", s.hostVeth, lerr))
	}
	if err := s.activate(owner, p); err != nil {
		return fail(err)
	}
	m.mu.Lock()
	m.slots[id] = s
	m.mu.Unlock()
	m.log.Info("network slot adopted", "slot", id, "owner", owner, "mode", string(p.Mode))
	return s, nil
}

// SlotInfo describes a slot for listings.
type SlotInfo struct {
	ID       string
	Owner    string // empty for idle pool slots
	Mode     Mode
	Idle     bool
	HostAddr netip.Addr
	SlotAddr netip.Addr
}

// List returns the slots this manager holds, handed out and idle, by ID.
func (m *Manager) List() []SlotInfo {
	m.mu.Lock()
	var all []*Slot
	for _, s := range m.slots {
		all = append(all, s)
	}
	idle := append([]*Slot(nil), m.idle...)
	m.mu.Unlock()
	var out []SlotInfo
	for _, s := range all {
		p := s.Policy()
		out = append(out, SlotInfo{ID: s.id, Owner: s.Owner(), Mode: p.Mode, HostAddr: s.hostAddr, SlotAddr: s.slotAddr})
	}
	for _, s := range idle {
		out = append(out, SlotInfo{ID: s.id, Idle: true, HostAddr: s.hostAddr, SlotAddr: s.slotAddr})
	}
	slices.SortFunc(out, func(a, b SlotInfo) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Close stops the pool, removes idle slots and stops the DNS filters and
// forwarders of handed-out slots. Handed-out slots stay on the host (their
// VMs may keep running, to be adopted after a restart); when none are
// left, the host table is removed too.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	close(m.stop)
	m.wg.Wait()

	m.mu.Lock()
	idle := m.idle
	m.idle = nil
	var held []*Slot
	for _, s := range m.slots {
		held = append(held, s)
	}
	m.mu.Unlock()
	var errs []error
	for _, s := range idle {
		errs = append(errs, m.release(s))
	}
	for _, s := range held {
		s.deactivate()
		s.mu.Lock()
		s.ns.Close()
		s.mu.Unlock()
	}
	m.mu.Lock()
	inUse := len(m.used)
	m.mu.Unlock()
	if inUse == 0 {
		if c, err := nftables.New(nftables.WithNetNSFd(int(m.hostNS))); err != nil {
			errs = append(errs, err)
		} else {
			errs = append(errs, deleteTable(c, m.cfg.Prefix))
		}
	}
	m.hostNS.Close()
	return errors.Join(errs...)
}

// dialHost dials from the host namespace: the daemon's side of the slots.
// Host names are resolved in the process's own namespace.
func (m *Manager) dialHost(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: proxyDialTimeout}
	if m.cfg.HostNetNS == "" {
		return d.DialContext(ctx, network, addr)
	}
	var c net.Conn
	err := inNS(m.hostNS, func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// dialUpstreamProxy dials a user's upstream proxy, refusing addresses a
// user must not point the daemon at: loopback, link-local, the slot pool
// and AlwaysBlock.
func (m *Manager) dialUpstreamProxy(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ips := []netip.Addr{}
	if a, err := netip.ParseAddr(host); err == nil {
		ips = append(ips, a)
	} else {
		found, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("resolve upstream proxy %s: %w", host, err)
		}
		ips = found
	}
	var lastErr error
	for _, a := range ips {
		a = a.Unmap()
		if a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsUnspecified() || a.IsMulticast() ||
			cidrsContain(append([]netip.Prefix{m.cfg.PoolCIDR, linkLocal}, m.cfg.AlwaysBlock...), a) {
			lastErr = fmt.Errorf("upstream proxy address %s is not allowed", a)
			continue
		}
		c, err := m.dialHost(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("upstream proxy %s has no address", host)
	}
	return nil, lastErr
}
