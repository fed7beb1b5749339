package api

import "time"

// Egress modes of a network policy.
const (
	EgressNone  = "none"  // no egress at all
	EgressFull  = "full"  // anything but the host, other VMs and metadata
	EgressAllow = "allow" // only the CIDRs and domains in Allow
)

// NetworkPolicy is an admin's egress policy for one user (GET and PUT
// /api/v1/users/{id}/network, admins only). It replaces the per-kind
// defaults for every VM the user boots afterwards. The upstream proxy's
// credentials are never returned: ProxyHost is scheme://host[:port].
type NetworkPolicy struct {
	UserID    string    `json:"user_id"`
	Mode      string    `json:"mode"`
	Allow     []string  `json:"allow,omitempty"`
	ProxyHost string    `json:"proxy_host,omitempty"`
	Version   int64     `json:"version"`
	UpdatedAt time.Time `json:"updated_at"`
}

// PutNetworkPolicyRequest is the body of PUT /api/v1/users/{id}/network.
// Proxy is an http:// or socks5:// URL, optionally with user:password; it
// is sealed at rest and only ever used on the host side.
type PutNetworkPolicyRequest struct {
	Mode  string   `json:"mode"`
	Allow []string `json:"allow,omitempty"`
	Proxy string   `json:"proxy,omitempty"`
}
