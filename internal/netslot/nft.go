package netslot

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names inside nftables. The host table is named after Config.Prefix; each
// slot namespace holds its own table, always named slotTable.
const (
	slotTable  = "hangar"
	dnsSetName = "dns4"
)

// linkLocal is 169.254.0.0/16: the guest /30 and cloud metadata services
// (169.254.169.254) live there; a guest must reach only its own gateway.
var linkLocal = netip.MustParsePrefix("169.254.0.0/16")

// privateRanges are closed to guests unless a policy names them in
// AllowCIDRs: the host's own networks (RFC 1918), carrier-grade NAT and
// cloud-internal space (100.64.0.0/10, where some clouds put metadata and
// DNS, e.g. 100.100.100.200), IETF protocol assignments (192.0.0.0/24,
// e.g. 192.0.0.192 on some clouds), benchmarking (198.18.0.0/15),
// "this network", loopback, multicast and reserved space. A name on an
// allow-list that resolves into them is not reachable either.
var privateRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("224.0.0.0/3"), // multicast and reserved (224/4, 240/4)
}

// ---- expression helpers (each returns a rule fragment using register 1) ----

func ifname(name string) []byte { return append([]byte(name), 0) }

func matchIif(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
	}
}

func matchOif(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
	}
}

// matchIifPrefix is nft's `iifname "prefix*"`: compare only the prefix
// bytes, without the terminating NUL.
func matchIifPrefix(prefix string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(prefix)},
	}
}

func matchOifPrefix(prefix string, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: []byte(prefix)},
	}
}

func matchIPv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// matchIPv4Addr matches the IPv4 source (offset 12) or destination (16)
// address against p. It includes the nfproto check an inet table needs.
func matchIPv4Addr(offset uint32, p netip.Prefix) []expr.Any {
	out := matchIPv4()
	out = append(out, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4})
	if p.Bits() < 32 {
		mask := netip.PrefixFrom(netip.IPv4Unspecified(), 0).Addr().As4()
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: []byte{0, 0, 0, 0}})
	}
	a := p.Masked().Addr().As4()
	out = append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]})
	return out
}

func matchDaddr(p netip.Prefix) []expr.Any { return matchIPv4Addr(16, p) }
func matchSaddr(p netip.Prefix) []expr.Any { return matchIPv4Addr(12, p) }

func matchDaddrInSet(s *nftables.Set) []expr.Any {
	out := matchIPv4()
	return append(out,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	)
}

// matchL4Dport matches `<proto> dport <port>`.
func matchL4Dport(proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

func matchEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

func accept() expr.Any { return &expr.Verdict{Kind: expr.VerdictAccept} }
func drop() expr.Any   { return &expr.Verdict{Kind: expr.VerdictDrop} }

func join(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func one(e expr.Any) []expr.Any { return []expr.Any{e} }

// ---- host table ----

// hostRules writes, into the batch of c, the host namespace's table: it is
// deleted and re-created atomically, so applying it is idempotent and
// never touches any other table.
//
//	table inet <prefix> {
//	  chain forward { type filter hook forward priority 0; policy accept;
//	    iifname "<prefix>v*" ip daddr <pool> drop            # other slots
//	    iifname "<prefix>v*" ip daddr 169.254.0.0/16 drop    # link-local, metadata
//	    iifname "<prefix>v*" ip daddr <AlwaysBlock...> drop
//	    iifname "<prefix>v*" meta nfproto != ipv4 drop
//	    iifname "<prefix>v*" accept
//	    oifname "<prefix>v*" ct state established,related accept
//	    oifname "<prefix>v*" drop                            # nothing new into a slot
//	  }
//	  chain input { type filter hook input priority 0; policy accept;
//	    iifname "<prefix>v*" ct state established,related accept
//	    iifname "<prefix>v*" drop                            # the daemon and every host address
//	  }
//	  chain postrouting { type nat hook postrouting priority 100; policy accept;
//	    oifname != "<prefix>v*" ip saddr <pool> masquerade
//	  }
//	}
func hostRules(c *nftables.Conn, name, vethPrefix string, pool netip.Prefix, block []netip.Prefix) {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	accPol := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accPol})
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accPol})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accPol})
	add := func(ch *nftables.Chain, e []expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e}) }

	fromSlot := matchIifPrefix(vethPrefix)
	for _, p := range append([]netip.Prefix{pool, linkLocal}, block...) {
		add(fwd, join(fromSlot, matchDaddr(p), one(drop())))
	}
	add(fwd, join(fromSlot, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}, one(drop())))
	add(fwd, join(fromSlot, one(accept())))
	add(fwd, join(matchOifPrefix(vethPrefix, expr.CmpOpEq), matchEstablished(), one(accept())))
	add(fwd, join(matchOifPrefix(vethPrefix, expr.CmpOpEq), one(drop())))

	add(in, join(fromSlot, matchEstablished(), one(accept())))
	add(in, join(fromSlot, one(drop())))

	add(post, join(matchOifPrefix(vethPrefix, expr.CmpOpNeq), matchSaddr(pool), one(&expr.Masq{})))
}

// deleteTable removes a table if it exists (idempotent).
func deleteTable(c *nftables.Conn, name string) error {
	t, err := c.ListTableOfFamily(name, nftables.TableFamilyINet)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("look up nftables table %s: %w", name, err)
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete nftables table %s: %w", name, err)
	}
	return nil
}

// ---- slot table ----

// slotRuleParams are the inputs of a slot namespace's table.
type slotRuleParams struct {
	slotAddr netip.Addr // SNAT source on veth0
	pool     netip.Prefix
	block    []netip.Prefix
	policy   Policy
	proxy    bool // the upstream-proxy forwarder listens on the gateway
}

// slotRules writes the slot namespace's table into the batch of c, again by
// delete-and-recreate so it is idempotent; it returns the DNS set so
// answers can be added to it later.
//
//	table inet hangar {
//	  set dns4 { type ipv4_addr; flags timeout; }
//	  chain input { type filter hook input priority 0; policy accept;
//	    iifname "tap0" ct state established,related accept
//	    iifname "tap0" ip daddr 169.254.0.22 udp dport 53 accept
//	    iifname "tap0" ip daddr 169.254.0.22 tcp dport 53 accept
//	    iifname "tap0" ip daddr 169.254.0.22 tcp dport 3128 accept   # only with an upstream proxy
//	    iifname "tap0" drop
//	    iifname "veth0" ct state established,related accept
//	    iifname "veth0" drop
//	  }
//	  chain forward { type filter hook forward priority 0; policy drop;
//	    ct state established,related accept
//	    ip daddr <pool> drop
//	    ip daddr 169.254.0.0/16 drop
//	    ip daddr <AlwaysBlock...> drop
//	    # only the guest's own source address leaves (no spoofing):
//	    # out = iifname "tap0" oifname "veth0" ip saddr 169.254.0.21
//	    # allow: out ip daddr <cidr> accept   (each; may open a private range)
//	    # full, allow: ip daddr <private ranges> drop
//	    # full:  out meta nfproto ipv4 accept
//	    # allow: out ip daddr @dns4 accept
//	    # none, or an upstream proxy: nothing (the proxy is the only way out)
//	  }
//	  chain postrouting { type nat hook postrouting priority 100; policy accept;
//	    oifname "veth0" ip saddr 169.254.0.21 snat ip to <slot address>
//	  }
//	}
func slotRules(c *nftables.Conn, p slotRuleParams) *nftables.Set {
	t := &nftables.Table{Name: slotTable, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	// A fixed set ID: nftables' own allocator is a package global that
	// concurrent batches would race on, and IDs only need to be unique
	// within one batch.
	set := &nftables.Set{ID: 1, Name: dnsSetName, Table: t, KeyType: nftables.TypeIPAddr, HasTimeout: true}
	_ = c.AddSet(set, nil)

	accPol, dropPol := nftables.ChainPolicyAccept, nftables.ChainPolicyDrop
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accPol})
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &dropPol})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accPol})
	add := func(ch *nftables.Chain, e []expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e}) }

	gw := netip.PrefixFrom(GatewayAddr, 32)
	tap := matchIif(TapName)
	add(in, join(tap, matchEstablished(), one(accept())))
	add(in, join(tap, matchDaddr(gw), matchL4Dport(unix.IPPROTO_UDP, 53), one(accept())))
	add(in, join(tap, matchDaddr(gw), matchL4Dport(unix.IPPROTO_TCP, 53), one(accept())))
	if p.proxy {
		add(in, join(tap, matchDaddr(gw), matchL4Dport(unix.IPPROTO_TCP, ProxyPort), one(accept())))
	}
	add(in, join(tap, one(drop())))
	add(in, join(matchIif(slotVethName), matchEstablished(), one(accept())))
	add(in, join(matchIif(slotVethName), one(drop())))

	add(fwd, join(matchEstablished(), one(accept())))
	for _, b := range append([]netip.Prefix{p.pool, linkLocal}, p.block...) {
		add(fwd, join(matchDaddr(b), one(drop())))
	}
	// Only packets with the guest's own source address leave: a guest
	// forging another source gets nothing through (the chain drops).
	out := join(tap, matchOif(slotVethName), matchIPv4(), matchSaddr(netip.PrefixFrom(GuestAddr, 32)))
	mode := p.policy.Mode
	if p.proxy {
		// With an upstream proxy the forwarder (which applies the same
		// policy) is the only way out; direct egress would make the
		// proxy advisory.
		mode = ModeNone
	}
	privateDrop := func() {
		for _, r := range privateRanges {
			add(fwd, join(matchDaddr(r), one(drop())))
		}
	}
	switch mode {
	case ModeFull:
		privateDrop()
		add(fwd, join(out, one(accept())))
	case ModeAllow:
		for _, cidr := range p.policy.AllowCIDRs {
			add(fwd, join(out, matchDaddr(cidr), one(accept())))
		}
		privateDrop()
		add(fwd, join(out, matchDaddrInSet(set), one(accept())))
	}

	add(post, join(matchOif(slotVethName), matchSaddr(netip.PrefixFrom(GuestAddr, 32)),
		[]expr.Any{
			&expr.Immediate{Register: 1, Data: p.slotAddr.AsSlice()},
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
		}))
	return set
}

// addDNSAddrs adds resolved addresses to a slot's DNS set. Addresses
// already there are deleted and re-added in the same batch so their
// timeout restarts; nftables on Linux 6.1 cannot update an element's
// timeout in place.
func addDNSAddrs(c *nftables.Conn, addrs []netip.Addr, refresh []netip.Addr, timeout time.Duration) error {
	t := &nftables.Table{Name: slotTable, Family: nftables.TableFamilyINet}
	set := &nftables.Set{Name: dnsSetName, Table: t, KeyType: nftables.TypeIPAddr, HasTimeout: true}
	elems := func(as []netip.Addr) []nftables.SetElement {
		var out []nftables.SetElement
		for _, a := range as {
			out = append(out, nftables.SetElement{Key: a.AsSlice(), Timeout: timeout})
		}
		return out
	}
	if len(refresh) > 0 {
		if err := c.SetDeleteElements(set, elems(refresh)); err != nil {
			return fmt.Errorf("queue dns set refresh: %w", err)
		}
	}
	if err := c.SetAddElements(set, elems(append(append([]netip.Addr(nil), refresh...), addrs...))); err != nil {
		return fmt.Errorf("queue dns set add: %w", err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("add to dns set: %w", err)
	}
	return nil
}
