package proto

// PathRekey re-keys a VM restored from a template (POST, RekeyRequest).
const PathRekey = PathPrefix + "/rekey"

// RekeyRequest gives a clone its own identity. A template snapshot is
// restored into many VMs, each starting with the template's memory: the
// same agent token, the same kernel random state and hostname, a clock
// from the template's past. The host sends this first over the link it
// opened with the template's token; the agent applies it in order (random
// pool, clock, hostname, token) and answers, and from then on refuses the
// template's token.
type RekeyRequest struct {
	// Token is the clone's own agent token.
	Token string `json:"token"`
	// Seed is at least 32 bytes from the host's random source, mixed into
	// the guest kernel's pool, which is then forced to reseed.
	Seed []byte `json:"seed"`
	// UnixNano is the host's time.
	UnixNano int64 `json:"unix_nano"`
	// Hostname is the clone's hostname ("" keeps it).
	Hostname string `json:"hostname,omitempty"`
}

// Bounds of a RekeyRequest the agent accepts.
const (
	MinRekeySeed = 32
	MaxRekeySeed = 4096
	MinTokenLen  = 32
)
