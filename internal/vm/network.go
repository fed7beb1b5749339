package vm

import (
	"context"
	"errors"
	"fmt"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
	"github.com/hangar-vm/hangar/internal/netslot"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/vmm"
)

// Policies decides what a VM's network may reach: the default of its kind,
// or its owner's own policy and upstream proxy. The daemon implements it
// (the owner's proxy credentials are sealed in the store).
type Policies interface {
	VMPolicy(ctx context.Context, ownerID, kind string) (netslot.Policy, error)
}

// SetNetwork gives every VM booted from now on a network slot from slots
// with the policy pol decides. Call it before Recover, which adopts the
// slots of re-attached VMs and reclaims the rest.
func (m *Manager) SetNetwork(slots *netslot.Manager, pol Policies) {
	m.slots, m.policies = slots, pol
}

// acquireSlot hands the VM a slot with its policy; the caller records the
// slot id before the hypervisor starts in it.
func (m *Manager) acquireSlot(ctx context.Context, v store.VM) (*netslot.Slot, error) {
	m.releaseSlot(ctx, v.ID) // a slot of an earlier run is never reused
	p, err := m.policies.VMPolicy(ctx, v.OwnerID, v.Kind)
	if err != nil {
		return nil, fmt.Errorf("network policy: %w", err)
	}
	s, err := m.slots.Acquire(ctx, v.ID, p)
	if err != nil {
		return nil, fmt.Errorf("network slot: %w", err)
	}
	in := m.inst(v.ID)
	in.mu.Lock()
	in.slot = s
	in.mu.Unlock()
	return s, nil
}

// netSpec is the hypervisor's view of a slot.
func netSpec(s *netslot.Slot) *vmm.NetSpec {
	return &vmm.NetSpec{TapName: s.TapName(), MAC: netslot.GuestMAC.String(), NetnsPath: s.NetNSPath()}
}

// guestNetwork is what the agent gets to configure eth0: no credentials,
// only the forwarder's address when the owner has an upstream proxy.
func guestNetwork(s *netslot.Slot) proto.NetworkConfig {
	g := s.GuestConfig()
	return proto.NetworkConfig{Address: g.Address, Gateway: g.Gateway, DNS: g.DNS, MTU: g.MTU, MAC: g.MAC, ProxyEnv: g.Env()}
}

// adoptSlot takes over the slot of a VM re-attached after a restart.
func (m *Manager) adoptSlot(ctx context.Context, v store.VM, slotID string) {
	if m.slots == nil || slotID == "" {
		return
	}
	p, err := m.policies.VMPolicy(ctx, v.OwnerID, v.Kind)
	if err == nil {
		var s *netslot.Slot
		if s, err = m.slots.Adopt(ctx, slotID, v.ID, p); err == nil {
			in := m.inst(v.ID)
			in.mu.Lock()
			in.slot = s
			in.mu.Unlock()
			return
		}
	}
	// The slot's rules stay in force inside its namespace; only its DNS
	// filter and proxy forwarder are missing.
	m.log.Warn("could not adopt the network slot of a re-attached vm; its DNS and proxy will not answer", "vm_id", v.ID, "slot", slotID, "err", err)
}

// releaseSlot removes the VM's slot, if it has one, and forgets it in the
// record.
func (m *Manager) releaseSlot(ctx context.Context, id string) {
	in := m.inst(id)
	in.mu.Lock()
	s := in.slot
	in.slot = nil
	in.mu.Unlock()
	if m.slots == nil {
		return
	}
	if s != nil {
		if err := m.slots.Release(context.WithoutCancel(ctx), s); err != nil {
			m.log.Warn("release network slot", "vm_id", id, "slot", s.ID(), "err", err)
		}
	}
	// Also when this daemon never held it (not adopted after a restart):
	// reconciliation then reclaims the slot as no record's.
	if _, err := m.update(context.WithoutCancel(ctx), id, func(_ *store.VM, rt *runtimeDoc) {
		rt.SlotID = ""
	}); err != nil && !errors.Is(err, store.ErrNotFound) {
		m.log.Warn("forget network slot", "vm_id", id, "err", err)
	}
}
