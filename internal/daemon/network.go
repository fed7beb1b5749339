package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"time"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/netslot"
	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// UserNetworkRecord is the pseudo-provider under which a user's own network
// policy is kept in the credentials table: its sealed payload is the
// upstream proxy URL (with credentials), its metadata the egress mode and
// allow-list. Sealing, versioning and key rotation are the credentials'.
const UserNetworkRecord = "hangar.network"

// UserNetwork is a user's own network policy, replacing the per-kind
// default for all their VMs. Proxy is an http:// or socks5:// URL with
// optional user:password; it is only ever used on the host side.
type UserNetwork struct {
	Mode  string   `json:"mode"`
	Allow []string `json:"allow,omitempty"`
	Proxy string   `json:"proxy,omitempty"`
}

// userNetworkMeta is the unsealed part: never the proxy's credentials.
type userNetworkMeta struct {
	Mode      string   `json:"mode"`
	Allow     []string `json:"allow,omitempty"`
	ProxyHost string   `json:"proxy_host,omitempty"`
}

// policies implements vm.Policies from the config's per-kind defaults and
// the users' own records.
type policies struct {
	defaults map[string]config.EgressPolicy
	store    store.Store
	keys     *seal.Keyring
}

func toPolicy(mode string, allow []string) (netslot.Policy, error) {
	p := netslot.Policy{Mode: netslot.Mode(mode)}
	if p.Mode == netslot.ModeAllow {
		var err error
		if p.AllowCIDRs, p.AllowDomains, err = netslot.ParseAllowList(allow); err != nil {
			return p, err
		}
	}
	return p, p.Validate()
}

// VMPolicy implements vm.Policies.
func (p *policies) VMPolicy(ctx context.Context, ownerID, kind string) (netslot.Policy, error) {
	c, err := p.store.GetCredential(ctx, ownerID, UserNetworkRecord)
	if errors.Is(err, store.ErrNotFound) {
		d, ok := p.defaults[kind]
		if !ok {
			d = config.EgressPolicy{Mode: "full"}
		}
		return toPolicy(d.Mode, d.Allow)
	}
	if err != nil {
		return netslot.Policy{}, err
	}
	var meta userNetworkMeta
	if err := json.Unmarshal(c.Metadata, &meta); err != nil {
		return netslot.Policy{}, fmt.Errorf("user network record: %w", err)
	}
	pol, err := toPolicy(meta.Mode, meta.Allow)
	if err != nil {
		return pol, err
	}
	raw, err := p.keys.OpenRecord(c)
	if err != nil {
		return pol, fmt.Errorf("open the user's upstream proxy: %w", err)
	}
	if len(raw) > 0 {
		if pol.Upstream, err = url.Parse(string(raw)); err != nil {
			return pol, errors.New("the user's upstream proxy URL does not parse")
		}
	}
	return pol, pol.Validate()
}

// setupNetwork starts the network slot manager when networking is enabled
// and hands it to the VM manager (before Recover, which adopts and
// reclaims slots).
func (d *Daemon) setupNetwork(ctx context.Context) error {
	n := d.cfg.Network
	if !n.Enabled {
		d.log.Info("vm networking is off (network.enabled=false): VMs get no network device")
		return nil
	}
	if os.Geteuid() != 0 {
		// Namespaces, links and nftables need root; a developer's
		// unprivileged daemon still runs VMs, without a network.
		d.log.Warn("vm networking needs root; VMs get no network device (set network.enabled=false to silence this)")
		return nil
	}
	keys, err := seal.Open(d.cfg.DataDir, os.LookupEnv)
	if err != nil {
		return fmt.Errorf("keyring for upstream proxies: %w", err)
	}
	nc := netslot.Config{Prefix: n.Prefix, HostNetNS: n.HostNetNS, PoolSize: n.PoolSize, DNSUpstream: n.DNSUpstream, Logger: d.log.With("component", "netslot")}
	if n.PoolCIDR != "" {
		if nc.PoolCIDR, err = netip.ParsePrefix(n.PoolCIDR); err != nil {
			return fmt.Errorf("network.pool_cidr: %w", err)
		}
	}
	for _, b := range n.AlwaysBlock {
		p, err := netip.ParsePrefix(b)
		if err != nil {
			a, aerr := netip.ParseAddr(b)
			if aerr != nil {
				return fmt.Errorf("network.always_block %q: %w", b, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		nc.AlwaysBlock = append(nc.AlwaysBlock, p)
	}
	for kind, p := range n.Egress {
		if _, err := toPolicy(p.Mode, p.Allow); err != nil {
			return fmt.Errorf("network.egress.%s: %w", kind, err)
		}
	}
	mgr, err := netslot.NewManager(ctx, nc)
	if err != nil {
		return fmt.Errorf("network slots: %w", err)
	}
	d.slots = mgr
	d.policies = &policies{defaults: n.Egress, store: d.store, keys: keys}
	d.vms.SetNetwork(mgr, d.policies)
	d.closers = append(d.closers, closer{"network", mgr.Close})
	d.api.MountAdmin("PUT /api/v1/users/{id}/network", d.handleUserNetwork)
	d.api.MountAdmin("DELETE /api/v1/users/{id}/network", d.handleUserNetwork)
	return nil
}

// SetUserNetwork stores a user's own network policy (nil removes it, back
// to the per-kind defaults). It applies to VMs booted afterwards.
func (d *Daemon) SetUserNetwork(ctx context.Context, userID string, un *UserNetwork) error {
	if d.policies == nil {
		return errors.New("vm networking is off")
	}
	if _, err := d.store.GetUser(ctx, userID); err != nil {
		return err
	}
	old, err := d.store.GetCredential(ctx, userID, UserNetworkRecord)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if un == nil {
		if err == nil {
			return d.store.DeleteCredential(ctx, userID, UserNetworkRecord)
		}
		return nil
	}
	pol, err := toPolicy(un.Mode, un.Allow)
	if err != nil {
		return err
	}
	meta := userNetworkMeta{Mode: un.Mode, Allow: un.Allow}
	if un.Proxy != "" {
		u, err := url.Parse(un.Proxy)
		if err != nil {
			return errors.New("proxy: not a URL") // never echo it: it may hold a password
		}
		pol.Upstream = u
		if err := pol.Validate(); err != nil {
			return err
		}
		meta.ProxyHost = u.Scheme + "://" + u.Host
	}
	metaJSON, _ := json.Marshal(meta)
	now := time.Now().UTC()
	c := store.Credential{ID: old.ID, OwnerID: userID, Provider: UserNetworkRecord, Version: old.Version + 1, Metadata: metaJSON, CapturedAt: now, UpdatedAt: now}
	if c.ID == "" {
		c.ID = store.NewID("cred")
	}
	if c, err = d.policies.keys.SealRecord(c, []byte(un.Proxy)); err != nil {
		return err
	}
	_, err = d.store.PutCredential(ctx, c)
	return err
}

// handleUserNetwork serves PUT and DELETE /api/v1/users/{id}/network; the
// API server lets only admin keys through. Errors never echo the body: the
// proxy URL may hold a password.
func (d *Daemon) handleUserNetwork(w http.ResponseWriter, r *http.Request) {
	var un *UserNetwork
	if r.Method == http.MethodPut {
		un = &UserNetwork{}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(un); err != nil {
			writeErr(w, http.StatusBadRequest, "body must be {mode, allow, proxy}")
			return
		}
	}
	if err := d.SetUserNetwork(r.Context(), r.PathValue("id"), un); err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, store.ErrNotFound) {
			status = http.StatusNotFound
		}
		writeErr(w, status, err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// writeErr writes the API's JSON error shape.
func writeErr(w http.ResponseWriter, status int, msg string) {
	code := api.CodeBadRequest
	if status == http.StatusNotFound {
		code = api.CodeNotFound
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(api.ErrorResponse{Error: api.ErrorBody{Code: code, Message: msg}})
}
