package netslot

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
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
