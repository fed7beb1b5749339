package netslot

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Found is a host object of a slot prefix, as Scan reports it.
type Found struct {
	// SlotID is the slot the object belongs to, "<prefix>-<n>".
	SlotID string
	// Kind is "netns" or "link".
	Kind string
	// Name is the namespace or link name.
	Name string
}

// Scan lists, without changing anything, the slot namespaces and host
// links of prefix on this machine (hostNetNS as in Config; empty for the
// process's own namespace). `hangar doctor` compares it with the slots the
// store knows; Reclaim removes the unknown ones.
func Scan(ctx context.Context, prefix, hostNetNS string) ([]Found, error) {
	if !prefixRE.MatchString(prefix) {
		return nil, fmt.Errorf("netslot prefix %q is not valid", prefix)
	}
	nameRE := regexp.MustCompile(`^` + prefix + `-([0-9]+)(-guest)?$`)
	linkRE := regexp.MustCompile(`^` + prefix + `v([0-9]+)$`)
	var out []Found
	names, err := listNamedNS(prefix + "-")
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if g := nameRE.FindStringSubmatch(n); g != nil {
			out = append(out, Found{SlotID: prefix + "-" + g[1], Kind: "netns", Name: n})
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var h *netlink.Handle
	if hostNetNS == "" {
		h, err = netlink.NewHandle()
	} else {
		var ns netns.NsHandle
		if ns, err = netns.GetFromPath(hostNetNS); err != nil {
			return nil, fmt.Errorf("open host netns: %w", err)
		}
		defer ns.Close()
		h, err = netlink.NewHandleAt(ns)
	}
	if err != nil {
		return nil, fmt.Errorf("netlink in host netns: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list host links: %w", err)
	}
	for _, l := range links {
		if g := linkRE.FindStringSubmatch(l.Attrs().Name); g != nil {
			out = append(out, Found{SlotID: prefix + "-" + g[1], Kind: "link", Name: l.Attrs().Name})
		}
	}
	slices.SortFunc(out, func(a, b Found) int {
		return strings.Compare(a.Kind+" "+a.Name, b.Kind+" "+b.Name)
	})
	return out, nil
}

// ScanTable reports whether the host nftables table "inet <prefix>"
// exists in hostNetNS (empty: the process's own namespace).
func ScanTable(ctx context.Context, prefix, hostNetNS string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	c, closeNS, err := hostNFT(hostNetNS)
	if err != nil {
		return false, err
	}
	defer closeNS()
	_, err = c.ListTableOfFamily(prefix, nftables.TableFamilyINet)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up nftables table %s: %w", prefix, err)
	}
	return true, nil
}

// RemoveTable deletes the host nftables table "inet <prefix>" (idempotent).
// Only `hangar gc` calls it, with the daemon stopped and no slot left.
func RemoveTable(ctx context.Context, prefix, hostNetNS string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !prefixRE.MatchString(prefix) {
		return fmt.Errorf("netslot prefix %q is not valid", prefix)
	}
	c, closeNS, err := hostNFT(hostNetNS)
	if err != nil {
		return err
	}
	defer closeNS()
	return deleteTable(c, prefix)
}

// Remove deletes one object Scan found: a host link or a slot namespace
// (which takes its own links, TAP and rules with it). Missing objects are
// not an error.
func Remove(ctx context.Context, hostNetNS string, f Found) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	switch f.Kind {
	case "netns":
		return deleteNamedNS(f.Name)
	case "link":
		h, err := hostLinkHandle(hostNetNS)
		if err != nil {
			return err
		}
		defer h.Close()
		l, err := h.LinkByName(f.Name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil
			}
			return fmt.Errorf("find link %s: %w", f.Name, err)
		}
		if err := h.LinkDel(l); err != nil {
			return fmt.Errorf("delete link %s: %w", f.Name, err)
		}
		return nil
	}
	return fmt.Errorf("unknown slot object kind %q", f.Kind)
}

func hostLinkHandle(hostNetNS string) (*netlink.Handle, error) {
	if hostNetNS == "" {
		return netlink.NewHandle()
	}
	ns, err := netns.GetFromPath(hostNetNS)
	if err != nil {
		return nil, fmt.Errorf("open host netns: %w", err)
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}

func hostNFT(hostNetNS string) (*nftables.Conn, func(), error) {
	if hostNetNS == "" {
		c, err := nftables.New()
		return c, func() {}, err
	}
	ns, err := netns.GetFromPath(hostNetNS)
	if err != nil {
		return nil, nil, fmt.Errorf("open host netns: %w", err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		ns.Close()
		return nil, nil, fmt.Errorf("nftables in host netns: %w", err)
	}
	return c, func() { ns.Close() }, nil
}
