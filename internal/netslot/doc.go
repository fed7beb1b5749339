// Package netslot gives each VM its own network slot: a network namespace
// with a TAP device for the guest, a veth pair to the daemon's namespace,
// NAT and a per-slot egress policy in hangar's own nftables tables, a DNS
// filter, and a host-side forwarder that chains the owner's upstream proxy
// so its credentials never enter the VM.
//
// # Layout of a slot
//
//	daemon ("host") namespace                 slot namespace <prefix>-<n>
//	  <prefix>v<n>  10.200.x.(4n+1)/30 ─veth─   veth0  10.200.x.(4n+2)/30, default via .1
//	  table inet <prefix>                       tap0   169.254.0.22/30 (gateway, DNS :53, proxy :3128)
//	                                            table inet hangar
//	                                              │ TAP (vnet_hdr, single queue, persistent)
//	                                            guest eth0 169.254.0.21/30, via 169.254.0.22
//
// Every guest has the same address, gateway, MACs and TAP name, so a VM
// snapshot resumes unchanged in any slot (Firecracker's clone pattern, as
// E2B does). 169.254.0.20/30 is link-local: never routed, it cannot collide
// with a network of the host or of a user, and the /30 holds exactly the
// guest and its gateway. The per-slot /30 on the veth comes from
// Config.PoolCIDR (default 10.200.0.0/16, 16384 slots); slot n uses the
// n-th /30. Inside the slot, guest traffic is SNATed to the slot's veth
// address; the host namespace masquerades the pool out of whatever
// interface routes it (the default route).
//
// The hypervisor runs inside the slot namespace and opens tap0 itself:
// Slot.Start starts an exec.Cmd there (the forking thread enters the
// namespace first), or pass Slot.NetNSPath to a jailer (--netns). QEMU:
// -netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vnet_hdr=on
// -device virtio-net-pci,netdev=n0,mac=<GuestMAC>. The agent configures
// eth0 from Slot.GuestConfig, sent over the agent link.
//
// # Egress policy
//
// Mode none drops every connection the guest starts and answers DNS with
// REFUSED (the agent link is vsock/virtio-serial, not the network). Mode
// full allows every public address: private and internal ranges
// (privateRanges: RFC 1918, 100.64.0.0/10 and the like, where the host's
// networks and cloud-internal services live) are closed. Mode allow
// permits AllowCIDRs (which may open a private range explicitly) plus the
// public addresses the slot's DNS filter answered for AllowDomains
// ("example.com" exactly, "*.example.com" for names below it). Only
// packets whose source is the guest's address leave a slot, and with an
// upstream proxy nothing leaves directly: the forwarder is the way out.
//
// Domains are enforced by DNS: the guest's resolver is the gateway, where
// a filter run by the daemon (a listener bound inside the slot namespace)
// forwards only questions for allowed names to Config.DNSUpstream, adds
// the A records of the answer to the slot's nftables set dns4 with a
// timeout (Config.DNSAllowTimeout, refreshed on every answer) before the
// guest sees the answer, and caps the TTLs the guest sees at half that
// timeout so a cached answer never outlives its set element. Known limit:
// an allowed name opens its IP address, so other names hosted on the same
// address are reachable too (no SNI/Host check); the guest has IPv4 only.
//
// Always blocked, whatever the policy, in two independent layers:
//
//   - slot table: forward drops destinations in PoolCIDR (other slots),
//     169.254.0.0/16 (link-local, including 169.254.169.254 metadata) and
//     Config.AlwaysBlock; input accepts from the guest only DNS (udp/tcp 53)
//     and, with an upstream proxy, tcp 3128 on the gateway, and nothing new
//     from veth0 (nothing outside can open a connection into a slot).
//   - host table: from slot links, forward drops PoolCIDR, link-local,
//     AlwaysBlock and anything not IPv4, and input drops everything not
//     established, so no slot reaches any address or port of the daemon's
//     namespace (its API included); nothing new is forwarded into a slot.
//
// The exact rules are listed on hostRules and slotRules in nft.go. Each
// table is replaced atomically (add, delete, re-create in one batch), so
// applying it is idempotent, and no other table is ever touched or
// flushed. Note that an accept in hangar's tables does not override a
// drop in another table on the same hook (a host firewall with a forward
// policy of drop must allow the slot links itself).
//
// # Upstream proxy
//
// With Policy.Upstream (http:// with Basic auth, or socks5:// with
// username/password), the guest gets HTTP(S)_PROXY=http://169.254.0.22:3128
// without credentials. A Forwarder listening there (in the slot namespace,
// run by the daemon) accepts plain-HTTP proxy requests and CONNECT, checks
// the target against the slot's policy, and chains it to the upstream from
// the daemon's namespace, adding the credentials itself. Upstream
// addresses in loopback, link-local, the pool or AlwaysBlock are refused.
//
// # Limits
//
// The guest is the client of both the DNS filter and the forwarder, and it
// may be hostile, so what it can hold of the daemon is bounded per slot:
// the forwarder takes ForwarderOptions.MaxConns connections at once
// (64; more are answered 503), a request head of 32 KiB sent within 30 s
// (431 beyond), 2 minutes of idle keep-alive, and closes a CONNECT tunnel
// in which neither side sent a byte for 10 minutes; the DNS filter answers
// at most 32 UDP questions at once and holds at most 16 TCP connections,
// each closed after 30 s without a query.
//
// # Lifecycle
//
// Manager keeps Config.PoolSize slots ready (namespace, links, TAP, rules
// of mode none) so Acquire does not wait on netlink; Acquire applies the
// policy and starts the DNS filter and forwarder. Release deletes the
// slot: slots are not reused, so no conntrack or neighbour state passes
// from one owner to the next. Multi-step creation undoes its finished
// steps when a later one fails. Close leaves acquired slots in place (VMs
// may keep running across a daemon restart) and removes the host table
// when none are left. At start the daemon calls Reclaim with the slot IDs
// its store still assigns, which deletes every other namespace and host
// link of the prefix, then Adopt for each slot it re-attaches.
//
// # Tests
//
// The tests that need root build their own "host" namespace and an
// "internet" namespace behind it and run the Manager with HostNetNS set;
// no packet leaves namespaces they created. A TAP needs a hypervisor on
// its other end, so the policy tests replace it by a veth named tap0 to a
// stand-in guest namespace configured like a real guest (same addresses,
// routes and rules); the TAP itself is checked by TestSlotTAP and carries
// traffic in the VM tests.
package netslot
