package proto

// PathNetwork configures the guest's network interface (POST, a
// NetworkConfig). The host sends it once the link is up on a VM that has a
// network device; the agent answers 204 when eth0 is up with the address,
// default route and resolver.
const PathNetwork = PathPrefix + "/network"

// NetworkConfig is the guest side of a VM's network slot. It never carries
// credentials: an upstream proxy is chained on the host side, and ProxyEnv
// points at a credential-free forwarder.
type NetworkConfig struct {
	// Address is the guest address with prefix length ("169.254.0.21/30").
	Address string `json:"address"`
	// Gateway is the default route's next hop.
	Gateway string `json:"gateway"`
	// DNS are the resolvers written to /etc/resolv.conf.
	DNS []string `json:"dns,omitempty"`
	// MTU of the interface; 0 leaves it.
	MTU int `json:"mtu,omitempty"`
	// MAC selects the interface; empty means the first non-loopback one.
	MAC string `json:"mac,omitempty"`
	// ProxyEnv are KEY=value pairs (HTTP_PROXY and friends) the agent adds
	// to the environment of commands it runs from then on.
	ProxyEnv []string `json:"proxy_env,omitempty"`
}
