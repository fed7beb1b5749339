package netslot

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestSlotTAP checks the real guest device: a persistent TAP with vnet_hdr,
// single queue, owned as configured, that a hypervisor can open by name
// from inside the namespace the way QEMU (vnet_hdr=on) and Firecracker do.
func TestSlotTAP(t *testing.T) {
	e := newTestEnv(t)
	cfg := e.config(t)
	cfg.guestVeth = false
	cfg.PoolSize = -1
	cfg.TapUID, cfg.TapGID = 4242, 4343
	m := newTestManager(t, e, cfg)
	ctx := context.Background()
	start := time.Now()
	s, err := m.Acquire(ctx, "u-tap", Policy{Mode: ModeFull})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Acquire without a pool (namespace, veth, TAP, rules, listeners) took %s", time.Since(start))
	ns, err := netns.GetFromPath(s.NetNSPath())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(TapName)
	if err != nil {
		t.Fatal(err)
	}
	tap, ok := l.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("%s is a %s, want tuntap", TapName, l.Type())
	}
	if tap.Mode != netlink.TUNTAP_MODE_TAP || tap.NonPersist || tap.Owner != 4242 || tap.Group != 4343 ||
		tap.Flags&netlink.TUNTAP_VNET_HDR == 0 || tap.Flags&netlink.TUNTAP_NO_PI == 0 || tap.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		t.Fatalf("tap attributes: mode %v persist %v owner %d group %d flags %#x", tap.Mode, !tap.NonPersist, tap.Owner, tap.Group, tap.Flags)
	}
	if l.Attrs().HardwareAddr.String() != GatewayMAC.String() {
		t.Fatalf("tap mac %s, want %s", l.Attrs().HardwareAddr, GatewayMAC)
	}
	addrs, err := h.AddrList(l, unix.AF_INET)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "169.254.0.22/30" {
		t.Fatalf("tap addresses %v %v", addrs, err)
	}

	// Open it as a hypervisor does.
	err = inNS(ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		var req [unix.IFNAMSIZ + 24]byte
		copy(req[:], TapName)
		*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); errno != 0 {
			return errno
		}
		return nil
	})
	if err != nil {
		t.Fatalf("open %s like QEMU: %v", TapName, err)
	}
	// Opening it put the carrier up: the device is attached.
	if err := m.Release(ctx, s); err != nil {
		t.Fatal(err)
	}
}

// TestReclaim plays a daemon restart: the first manager exits leaving two
// slots in use, plus leftovers of a crash; the second reclaims everything
// no VM record owns, adopts the slot a VM still owns, and in the end leaves
// nothing behind.
func TestReclaim(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()

	cfg := e.config(t)
	cfg.PoolSize = -1
	m1, err := NewManager(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	keep, err := m1.Acquire(ctx, "u-keep", Policy{Mode: ModeFull})
	if err != nil {
		t.Fatal(err)
	}
	lost, err := m1.Acquire(ctx, "u-lost", Policy{Mode: ModeFull})
	if err != nil {
		t.Fatal(err)
	}
	forgotten, err := m1.Acquire(ctx, "u-forgotten", Policy{Mode: ModeNone})
	if err != nil {
		t.Fatal(err)
	}
	if err := m1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// Leftovers of a crash half way through creating slots, and a name
	// that only looks like ours.
	run(t, "ip", "netns", "add", e.prefix+"-90")
	run(t, "ip", "-n", e.name, "link", "add", e.prefix+"v91", "type", "veth", "peer", "name", "leftover91")
	run(t, "ip", "netns", "add", e.prefix+"-notaslot")
	t.Cleanup(func() { _ = deleteNamedNS(e.prefix + "-notaslot") })

	// The slots stayed on the host after m1 closed.
	for _, id := range []string{keep.ID(), lost.ID()} {
		if _, err := os.Stat(NetNSPath(id)); err != nil {
			t.Fatalf("slot %s did not survive the manager: %v", id, err)
		}
	}

	found, err := Scan(ctx, e.prefix, NetNSPath(e.name))
	if err != nil {
		t.Fatal(err)
	}
	var scanned []string
	for _, f := range found {
		scanned = append(scanned, f.Kind+":"+f.Name+"@"+f.SlotID)
	}
	wantScan := []string{
		"link:" + keep.hostVeth + "@" + keep.ID(), "link:" + lost.hostVeth + "@" + lost.ID(),
		"link:" + forgotten.hostVeth + "@" + forgotten.ID(), "link:" + e.prefix + "v91@" + e.prefix + "-91",
		"netns:" + keep.ID() + "@" + keep.ID(), "netns:" + keep.guestNS + "@" + keep.ID(),
		"netns:" + lost.ID() + "@" + lost.ID(), "netns:" + lost.guestNS + "@" + lost.ID(),
		"netns:" + forgotten.ID() + "@" + forgotten.ID(), "netns:" + forgotten.guestNS + "@" + forgotten.ID(),
		"netns:" + e.prefix + "-90@" + e.prefix + "-90",
	}
	slices.Sort(scanned)
	slices.Sort(wantScan)
	if !slices.Equal(scanned, wantScan) {
		t.Fatalf("Scan found %q, want %q", scanned, wantScan)
	}

	cfg2 := e.config(t)
	cfg2.PoolSize = 1
	m2 := newTestManager(t, e, cfg2)
	removed, err := m2.Reclaim(ctx, []string{keep.ID(), forgotten.ID()})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	want := []string{
		"link:" + e.prefix + "v91", "link:" + lost.hostVeth,
		"netns:" + e.prefix + "-90", "netns:" + lost.ID(), "netns:" + lost.guestNS,
	}
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Fatalf("Reclaim removed %q, want %q", removed, want)
	}
	if _, err := os.Stat(NetNSPath(e.prefix + "-notaslot")); err != nil {
		t.Fatalf("Reclaim removed a namespace that is not a slot: %v", err)
	}
	// Idempotent: nothing more to do.
	if again, err := m2.Reclaim(ctx, []string{keep.ID(), forgotten.ID()}); err != nil || len(again) != 0 {
		t.Fatalf("second Reclaim: %q %v", again, err)
	}
	// The VM of "forgotten" went away before it was adopted: the next
	// periodic Reclaim removes its slot.
	again, err := m2.Reclaim(ctx, []string{keep.ID()})
	slices.Sort(again)
	if err != nil || !slices.Equal(again, []string{"link:" + forgotten.hostVeth, "netns:" + forgotten.ID(), "netns:" + forgotten.guestNS}) {
		t.Fatalf("Reclaim of a no longer known slot: %q %v", again, err)
	}

	// The VM that kept its slot gets it back with a working network (its
	// DNS filter was restarted by Adopt).
	adopted, err := m2.Adopt(ctx, keep.ID(), "u-keep", Policy{Mode: ModeAllow, AllowDomains: []string{"allowed.test"}})
	if err != nil {
		t.Fatal(err)
	}
	g := guest(t, adopted)
	body, err := httpGetFrom(g, "http://allowed.test/adopted", "")
	if err != nil || body != "server1 /adopted" {
		t.Fatalf("adopted slot: %q %v", body, err)
	}
	var ids []string
	for _, si := range m2.List() {
		ids = append(ids, si.ID)
	}
	if !slices.Contains(ids, keep.ID()) {
		t.Fatalf("List %v lacks the adopted slot", ids)
	}
	if err := m2.Release(ctx, adopted); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{keep.ID(), keep.guestNS} {
		if _, err := os.Stat(NetNSPath(name)); !os.IsNotExist(err) {
			t.Fatalf("%s still exists after Release: %v", name, err)
		}
	}
	// newTestManager's cleanup closes m2 and checks that the host
	// namespace holds no link or table of ours; newTestEnv's checks
	// /run/netns and the root namespace.
}
