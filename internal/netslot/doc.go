// Package netslot gives each VM its own network slot: a network namespace
// with a TAP device for the guest, a veth pair to the daemon's namespace,
// NAT and a per-slot egress policy in hangar's own nftables tables, and a
// host-side forwarder that chains the owner's upstream proxy.
package netslot
