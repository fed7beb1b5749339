package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/httpapi"
	"github.com/hangar-vm/hangar/internal/login"
	"github.com/hangar-vm/hangar/internal/netslot"
	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// policies implements vm.Policies from the config's per-kind defaults and
// the users' own records.
type policies struct {
	defaults map[string]config.EgressPolicy
	store    store.Store
	keys     *seal.Keyring
	// providerHosts are the API hosts the providers' CLIs talk to when a
	// prompt runs (their recipes' api_hosts): a CLI VM under an allow-list
	// reaches them, or no prompt could ever run there.
	providerHosts []string
}

// withProviderHosts opens a CLI VM's allow-list to the providers' API
// hosts. Other modes are left alone: "full" reaches them already, "none"
// is an admin's explicit choice.
func (p *policies) withProviderHosts(kind string, pol netslot.Policy) netslot.Policy {
	if kind != api.KindCLI || pol.Mode != netslot.ModeAllow {
		return pol
	}
	for _, h := range p.providerHosts {
		if !slices.Contains(pol.AllowDomains, h) {
			pol.AllowDomains = append(pol.AllowDomains, h)
		}
	}
	return pol
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
	pol, err := p.policy(ctx, ownerID, kind)
	if err != nil {
		return pol, err
	}
	return p.withProviderHosts(kind, pol), nil
}

// policy is the VM's policy before the providers' hosts are added.
func (p *policies) policy(ctx context.Context, ownerID, kind string) (netslot.Policy, error) {
	np, err := p.store.GetNetworkPolicy(ctx, ownerID)
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
	pol, err := toPolicy(np.Mode, np.Allow)
	if err != nil {
		return pol, err
	}
	raw, err := openProxy(p.keys, np)
	if err != nil {
		return pol, err
	}
	if len(raw) > 0 {
		if pol.Upstream, err = url.Parse(string(raw)); err != nil {
			return pol, errors.New("the user's upstream proxy URL does not parse")
		}
	}
	return pol, pol.Validate()
}

// openProxy returns the sealed upstream proxy URL of np, nil when none.
func openProxy(keys *seal.Keyring, np store.NetworkPolicy) ([]byte, error) {
	raw, err := keys.OpenNetworkProxy(np)
	if err != nil {
		return nil, fmt.Errorf("open the user's upstream proxy: %w", err)
	}
	return raw, nil
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
	nc := netslot.Config{Prefix: n.Prefix, HostNetNS: n.HostNetNS, PoolSize: n.PoolSize, DNSUpstream: n.DNSUpstream, Logger: d.log.With("component", "netslot")}
	var err error
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
	recipes, err := login.LoadRecipes()
	if err != nil {
		return fmt.Errorf("provider recipes: %w", err)
	}
	var hosts []string
	for _, name := range recipes.Names() {
		hosts = append(hosts, recipes[name].APIHosts...)
	}
	d.policies = &policies{defaults: n.Egress, store: d.store, keys: d.netKeys, providerHosts: hosts}
	d.vms.SetNetwork(mgr, d.policies)
	d.closers = append(d.closers, closer{"network", mgr.Close})
	return nil
}

// mountNetworkPolicies serves the admin's per-user network policies. They
// are kept (and can be set) even while VM networking is off, so turning it
// on never boots a restricted user's VM with the default policy.
func (d *Daemon) mountNetworkPolicies() error {
	keys, err := seal.Open(d.cfg.DataDir, os.LookupEnv)
	if err != nil {
		return fmt.Errorf("keyring for upstream proxies: %w", err)
	}
	d.netKeys = keys
	d.api.MountAdminFunc("GET /api/v1/users/{id}/network", func(w http.ResponseWriter, r *http.Request) error {
		p, err := d.UserNetwork(r.Context(), r.PathValue("id"))
		if err != nil {
			return err
		}
		httpapi.WriteJSON(w, http.StatusOK, p)
		return nil
	})
	d.api.MountAdminFunc("PUT /api/v1/users/{id}/network", func(w http.ResponseWriter, r *http.Request) error {
		var req api.PutNetworkPolicyRequest
		if err := httpapi.DecodeJSON(r, &req); err != nil {
			return err
		}
		p, err := d.SetUserNetwork(r.Context(), r.PathValue("id"), req)
		if err != nil {
			return err
		}
		httpapi.WriteJSON(w, http.StatusOK, p)
		return nil
	})
	d.api.MountAdminFunc("DELETE /api/v1/users/{id}/network", func(w http.ResponseWriter, r *http.Request) error {
		if err := d.DeleteUserNetwork(r.Context(), r.PathValue("id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	return nil
}

func toAPINetwork(p store.NetworkPolicy) api.NetworkPolicy {
	return api.NetworkPolicy{UserID: p.UserID, Mode: p.Mode, Allow: p.Allow, ProxyHost: p.ProxyHost, Version: p.Version, UpdatedAt: p.UpdatedAt}
}

// UserNetwork returns a user's own network policy.
func (d *Daemon) UserNetwork(ctx context.Context, userID string) (api.NetworkPolicy, error) {
	p, err := d.store.GetNetworkPolicy(ctx, userID)
	if errors.Is(err, store.ErrNotFound) {
		return api.NetworkPolicy{}, errs.E(errs.NotFound, "user %s has no network policy of their own (the per-kind defaults apply)", userID)
	}
	if err != nil {
		return api.NetworkPolicy{}, err
	}
	return toAPINetwork(p), nil
}

// netPutAttempts bounds retries of a policy write that keeps losing the
// version compare-and-swap to another admin's write.
const netPutAttempts = 5

// SetUserNetwork stores a user's own network policy, replacing the per-kind
// defaults for their VMs booted afterwards. Errors never echo the proxy
// URL: it may hold a password.
func (d *Daemon) SetUserNetwork(ctx context.Context, userID string, req api.PutNetworkPolicyRequest) (api.NetworkPolicy, error) {
	if _, err := d.store.GetUser(ctx, userID); errors.Is(err, store.ErrNotFound) {
		return api.NetworkPolicy{}, errs.E(errs.NotFound, "user %s not found", userID)
	} else if err != nil {
		return api.NetworkPolicy{}, err
	}
	pol, err := toPolicy(req.Mode, req.Allow)
	if err != nil {
		return api.NetworkPolicy{}, errs.E(errs.Invalid, "%v", err)
	}
	np := store.NetworkPolicy{UserID: userID, Mode: req.Mode, Allow: req.Allow}
	if req.Proxy != "" {
		u, err := url.Parse(req.Proxy)
		if err != nil {
			return api.NetworkPolicy{}, errs.E(errs.Invalid, "proxy: not a URL")
		}
		pol.Upstream = u
		if err := pol.Validate(); err != nil {
			return api.NetworkPolicy{}, errs.E(errs.Invalid, "proxy: must be http:// or socks5:// with a host")
		}
		np.ProxyHost = u.Scheme + "://" + u.Host
	}
	for attempt := 1; ; attempt++ {
		old, err := d.store.GetNetworkPolicy(ctx, userID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return api.NetworkPolicy{}, err
		}
		np.Version = old.Version + 1
		np.KeyVersion, np.Nonce, np.Ciphertext = 0, nil, nil
		if req.Proxy != "" {
			if np, err = d.netKeys.SealNetworkProxy(np, []byte(req.Proxy)); err != nil {
				return api.NetworkPolicy{}, err
			}
		}
		out, err := d.store.PutNetworkPolicy(ctx, np)
		if err == nil {
			d.log.Info("user network policy set", "user_id", userID, "mode", np.Mode, "proxy_host", np.ProxyHost, "version", out.Version)
			return toAPINetwork(out), nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt >= netPutAttempts {
			return api.NetworkPolicy{}, err
		}
	}
}

// DeleteUserNetwork removes a user's own policy: the per-kind defaults
// apply to their VMs booted afterwards.
func (d *Daemon) DeleteUserNetwork(ctx context.Context, userID string) error {
	err := d.store.DeleteNetworkPolicy(ctx, userID)
	if errors.Is(err, store.ErrNotFound) {
		return errs.E(errs.NotFound, "user %s has no network policy of their own", userID)
	}
	if err == nil {
		d.log.Info("user network policy removed", "user_id", userID)
	}
	return err
}
