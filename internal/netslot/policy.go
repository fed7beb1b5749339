package netslot

import (
	"fmt"
	"net/netip"
	"net/url"
	"strings"
)

// Mode is a slot's egress mode.
type Mode string

// Egress modes.
const (
	// ModeNone drops every connection the guest starts; DNS answers
	// REFUSED. The agent link does not use the network, so the VM still
	// works.
	ModeNone Mode = "none"
	// ModeFull lets the guest reach any address except the always-blocked
	// ones.
	ModeFull Mode = "full"
	// ModeAllow lets the guest reach only AllowCIDRs and the addresses
	// that the slot's DNS filter answered for AllowDomains.
	ModeAllow Mode = "allow"
)

// Policy is what a slot lets its guest reach.
type Policy struct {
	Mode Mode
	// AllowCIDRs are the destinations reachable in ModeAllow.
	AllowCIDRs []netip.Prefix
	// AllowDomains are the names whose addresses are reachable in
	// ModeAllow. "example.com" matches that name only; "*.example.com"
	// matches every name below it (not example.com itself).
	AllowDomains []string
	// Upstream, when set, is the owner's upstream proxy
	// (http://user:pass@host:port or socks5://user:pass@host:port). The
	// guest is told to use a forwarder on its gateway instead, so the
	// credentials stay on the host. Ignored in ModeNone.
	Upstream *url.URL
}

// Validate reports whether p is usable.
func (p Policy) Validate() error {
	switch p.Mode {
	case ModeNone, ModeFull, ModeAllow:
	default:
		return fmt.Errorf("unknown egress mode %q (want none, full or allow)", p.Mode)
	}
	for _, c := range p.AllowCIDRs {
		if !c.IsValid() || !c.Addr().Is4() {
			return fmt.Errorf("allow-list entry %s: only IPv4 prefixes are supported (the guest has no IPv6)", c)
		}
	}
	for _, d := range p.AllowDomains {
		if _, err := normalizeDomainPattern(d); err != nil {
			return err
		}
	}
	if p.Upstream != nil {
		switch p.Upstream.Scheme {
		case "http", "socks5", "socks5h":
		default:
			return fmt.Errorf("upstream proxy scheme %q: want http, socks5 or socks5h", p.Upstream.Scheme)
		}
		if p.Upstream.Host == "" {
			return fmt.Errorf("upstream proxy has no host")
		}
	}
	return nil
}

// ParseAllowList splits allow-list entries into CIDRs (an address alone
// means /32) and domain patterns ("example.com", "*.example.com").
func ParseAllowList(entries []string) ([]netip.Prefix, []string, error) {
	var cidrs []netip.Prefix
	var domains []string
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if p, err := netip.ParsePrefix(e); err == nil {
			if !p.Addr().Is4() {
				return nil, nil, fmt.Errorf("allow-list entry %q: only IPv4 is supported", e)
			}
			cidrs = append(cidrs, p.Masked())
			continue
		}
		if a, err := netip.ParseAddr(e); err == nil {
			if !a.Is4() {
				return nil, nil, fmt.Errorf("allow-list entry %q: only IPv4 is supported", e)
			}
			cidrs = append(cidrs, netip.PrefixFrom(a, 32))
			continue
		}
		d, err := normalizeDomainPattern(e)
		if err != nil {
			return nil, nil, err
		}
		domains = append(domains, d)
	}
	return cidrs, domains, nil
}

// normalizeDomainPattern lower-cases a domain pattern and strips its final
// dot, rejecting what cannot be a DNS name.
func normalizeDomainPattern(d string) (string, error) {
	n := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
	name := strings.TrimPrefix(n, "*.")
	if name == "" || len(name) > 253 || strings.Contains(name, "*") {
		return "", fmt.Errorf("allow-list entry %q is not a domain name", d)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("allow-list entry %q is not a domain name", d)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return "", fmt.Errorf("allow-list entry %q is not a domain name", d)
			}
		}
	}
	return n, nil
}

// domainAllowed reports whether name (any case, optional final dot)
// matches one of the patterns.
func domainAllowed(patterns []string, name string) bool {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	for _, p := range patterns {
		p = strings.TrimSuffix(strings.ToLower(p), ".")
		if rest, ok := strings.CutPrefix(p, "*."); ok {
			if strings.HasSuffix(name, "."+rest) {
				return true
			}
			continue
		}
		if name == p {
			return true
		}
	}
	return false
}

// cidrsContain reports whether a is in one of the prefixes.
func cidrsContain(prefixes []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
