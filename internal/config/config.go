// Package config holds hangar's one Config struct and the order it is built
// in: defaults → optional JSON file → HANGAR_* environment → flags. Validate
// runs once at start and names the setting that is wrong.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is everything `hangar serve` can be told.
type Config struct {
	// Listen is the API's TCP address.
	Listen string `json:"listen"`
	// DataDir holds the SQLite store, admin.key, images, VM disks and logs.
	DataDir string `json:"data_dir"`
	// Database is empty for the embedded SQLite store in DataDir, or a
	// postgres:// URL.
	Database string `json:"database"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"log_level"`
	// LogFormat is text or json.
	LogFormat string `json:"log_format"`
	// RateLimit is "<requests>/<window>", e.g. "1000/15m", applied per API
	// key and, for unauthenticated calls, per client address.
	RateLimit string `json:"rate_limit"`
	// MaxBodyBytes caps request bodies (file uploads have their own cap).
	MaxBodyBytes int64 `json:"max_body_bytes"`
	// MaxFileBytes caps a file uploaded to or downloaded from a VM; the
	// host enforces it on downloads whatever the guest sends.
	MaxFileBytes int64 `json:"max_file_bytes"`
	// ConsoleMaxBytes caps a VM's console log file. Guest root can write
	// to the serial port directly, so the file is rotated at this size
	// (one older file is kept beside it).
	ConsoleMaxBytes int64 `json:"console_max_bytes"`
	// ShutdownTimeout bounds how long in-flight requests may take to finish
	// after SIGTERM.
	ShutdownTimeout Duration `json:"shutdown_timeout"`
	// TaskLease is how long a claimed durable task is held before another
	// worker may take it (when the holder died).
	TaskLease Duration `json:"task_lease"`

	// Hypervisor is auto, qemu or firecracker. auto picks Firecracker
	// when its binary is present and KVM is usable, else QEMU.
	Hypervisor string `json:"hypervisor"`
	// Accel is QEMU's acceleration: auto (KVM when usable), kvm or tcg.
	Accel string `json:"accel"`
	// MaxVMsPerUser caps the VMs (not destroyed) one user may have.
	MaxVMsPerUser int `json:"max_vms_per_user"`
	// MaxBrowserVMs caps running browser VMs on this host.
	MaxBrowserVMs int `json:"max_browser_vms"`
	// MaxBrowserVMsPerUser caps one user's running browser VMs (each
	// login holds one), so one user cannot take every MaxBrowserVMs slot
	// and block everyone else's logins.
	MaxBrowserVMsPerUser int `json:"max_browser_vms_per_user"`
	// MaxVCPUsPerUser, MaxMemoryMiBPerUser and MaxDiskMiBPerUser cap the
	// totals of one user's VMs that are not destroyed (a stopped VM keeps
	// its share, so starting it again never fails on a quota). Disk counts
	// each persistent VM's upper disk; browser VMs keep theirs in memory.
	MaxVCPUsPerUser     int `json:"max_vcpus_per_user"`
	MaxMemoryMiBPerUser int `json:"max_memory_mib_per_user"`
	MaxDiskMiBPerUser   int `json:"max_disk_mib_per_user"`
	// BrowserPoolSize is how many browser VMs, cloned from a template,
	// are kept ready for logins (counted within MaxBrowserVMs).
	BrowserPoolSize int `json:"browser_pool_size"`
	// BootTimeout bounds a VM's boot, from spawn to ready.
	BootTimeout Duration `json:"boot_timeout"`
	// LogRetention is how long the console logs of destroyed VMs are kept.
	LogRetention Duration `json:"log_retention"`
	// EventRetention is how long events are kept; older ones are pruned
	// every few minutes (an SSE client that far behind misses them).
	EventRetention Duration `json:"event_retention"`
	// LoginHeartbeatTimeout ends a login session nobody watches.
	LoginHeartbeatTimeout Duration `json:"login_heartbeat_timeout"`
	// IdleHibernate hibernates a ready cli or base workspace VM after this
	// long without exec, files, prompt or logs; 0 never does.
	IdleHibernate Duration `json:"idle_hibernate"`
	// IdleDestroy destroys a VM hibernated or stopped for this long, and a
	// browser VM outside a login unused for this long; 0 never does.
	IdleDestroy Duration `json:"idle_destroy"`
	// BuildImages makes the daemon build missing guest images in the
	// background at start.
	BuildImages bool `json:"build_images"`

	// VMShutdownPolicy is what `hangar serve` does with running VMs when
	// it stops: leave (they keep running and the next daemon re-attaches
	// them, no reboot) or stop (each is shut down and recorded stopped).
	VMShutdownPolicy string `json:"vm_shutdown_policy"`
	// ReconcileInterval is how often the store is compared with the
	// hypervisor processes, run directories and network slots on the host
	// (also done once at start).
	ReconcileInterval Duration `json:"reconcile_interval"`
	// Network configures the per-VM network slots.
	Network Network `json:"network"`
	// WebRTC configures the live view's second transport.
	WebRTC WebRTC `json:"webrtc"`

	// PublicURL is the daemon's address as users reach it (the dev
	// provider's URL shown in paste mode names it); empty means
	// http://<listen address>.
	PublicURL string `json:"public_url"`
	// PromptTimeout is a prompt's default bound when the request names
	// none (at most 1h is allowed per prompt).
	PromptTimeout Duration `json:"prompt_timeout"`
	// CredentialLeaseTTL is how long a VM's credential lease lasts without
	// renewal (the daemon renews every third of it while the VM runs).
	CredentialLeaseTTL Duration `json:"credential_lease_ttl"`
	// CredentialLeaseWait bounds how long a prompt for one VM waits while a
	// prompt of the same provider runs on another VM of the user; after it
	// the API answers 409 naming the holder.
	CredentialLeaseWait Duration `json:"credential_lease_wait"`
	// CredentialSyncInterval is how often credential files held by idle
	// VMs are read back (besides after every prompt and before a stop).
	CredentialSyncInterval Duration `json:"credential_sync_interval"`
	// DevAccessTokenTTL is the dev provider's access-token lifetime (short
	// in tests, to make the CLI refresh).
	DevAccessTokenTTL Duration `json:"dev_access_token_ttl"`
}

// Network configures VM networking (internal/netslot).
type Network struct {
	// Enabled gives every VM a network slot (namespace, veth, TAP,
	// nftables egress policy). Off, VMs have no network device at all
	// (the agent link does not need one). Needs root.
	//
	// Default on: CLI VMs exist to reach their provider's API and a
	// browser login needs the identity provider, so a VM without a network
	// is not the product. The daemon then creates its slots, host links
	// and "inet <prefix>" table in its own namespace (host_netns empty),
	// which on a real host is the machine's. Tests never use that default:
	// each test either turns networking off because it is not about the
	// network, or runs the daemon in (or hangs the slots off) a namespace
	// the test created.
	Enabled bool `json:"enabled"`
	// Prefix names the namespaces ("<prefix>-<n>"), host links and the
	// nftables table hangar owns; two daemons on one host need different
	// prefixes. Default "hangar".
	Prefix string `json:"prefix"`
	// HostNetNS is the namespace the slots hang off (a path such as
	// /run/netns/x); empty is the daemon's own. Tests set it.
	HostNetNS string `json:"host_netns"`
	// PoolCIDR is carved into one /30 per slot. Default 10.200.0.0/16.
	PoolCIDR string `json:"pool_cidr"`
	// PoolSize is how many idle slots are kept ready. Default 2.
	PoolSize int `json:"pool_size"`
	// DNSUpstream is the resolver ("ip:port") the slots' DNS filters ask;
	// default: the host's first nameserver.
	DNSUpstream string `json:"dns_upstream"`
	// AlwaysBlock are extra CIDRs no policy opens (site networks).
	AlwaysBlock []string `json:"always_block"`
	// Egress is the default egress policy per VM kind (base, cli,
	// browser); a user's own policy (PUT /api/v1/users/{id}/network)
	// overrides it for their VMs.
	Egress map[string]EgressPolicy `json:"egress"`
}

// EgressPolicy is what a VM may reach: mode none, full, or allow with a
// list of CIDRs/addresses and domain names ("example.com",
// "*.example.com"). The host, the daemon's API, other VMs and link-local
// metadata addresses are blocked whatever the policy.
type EgressPolicy struct {
	Mode  string   `json:"mode"`
	Allow []string `json:"allow,omitempty"`
}

// Default returns the embedded defaults.
func Default() Config {
	return Config{
		Listen:                 "127.0.0.1:4000",
		DataDir:                DefaultDataDir(),
		LogLevel:               "info",
		LogFormat:              "text",
		RateLimit:              "1000/15m",
		MaxBodyBytes:           1 << 20,
		ShutdownTimeout:        Duration(15 * time.Second),
		TaskLease:              Duration(30 * time.Second),
		Hypervisor:             "auto",
		Accel:                  "auto",
		MaxVMsPerUser:          180,
		MaxBrowserVMs:          2,
		BrowserPoolSize:        1,
		BootTimeout:            Duration(3 * time.Minute),
		PromptTimeout:          Duration(10 * time.Minute),
		CredentialLeaseTTL:     Duration(2 * time.Minute),
		CredentialLeaseWait:    Duration(10 * time.Second),
		CredentialSyncInterval: Duration(time.Minute),
		DevAccessTokenTTL:      Duration(time.Hour),
		LogRetention:           Duration(7 * 24 * time.Hour),
		LoginHeartbeatTimeout:  Duration(5 * time.Minute),
		IdleHibernate:          Duration(15 * time.Minute),
		IdleDestroy:            Duration(7 * 24 * time.Hour),
		BuildImages:            true,
		MaxBrowserVMsPerUser:   1,
		MaxVCPUsPerUser:        16,
		MaxMemoryMiBPerUser:    32768,
		MaxDiskMiBPerUser:      65536,
		EventRetention:         Duration(7 * 24 * time.Hour),
		MaxFileBytes:           256 << 20,
		ConsoleMaxBytes:        8 << 20,

		VMShutdownPolicy:  "leave",
		ReconcileInterval: Duration(time.Minute),
		Network: Network{
			Enabled:  true,
			Prefix:   "hangar",
			PoolCIDR: "10.200.0.0/16",
			PoolSize: 2,
			// Every kind gets the internet by default: CLI VMs talk to
			// their provider's API, and a browser login goes through
			// whatever identity providers the account uses (Google,
			// GitHub, SSO), which no static allow-list covers. Operators
			// narrow it per kind here or per user.
			Egress: map[string]EgressPolicy{
				"base":    {Mode: "full"},
				"cli":     {Mode: "full"},
				"browser": {Mode: "full"},
			},
		},
		WebRTC: WebRTC{
			Enabled: true,
			Bitrate: 1_500_000,
			MaxFPS:  25,
			TURN:    TURN{Mode: "auto", TCP: true, MaxAllocationsPerSession: 4},
		},
	}
}

// WebRTC configures the live view's WebRTC transport: the daemon encodes
// the login VM's screen itself (ffmpeg) and streams it with pion/webrtc,
// with an embedded TURN server for viewers that cannot reach the daemon's
// UDP ports directly.
type WebRTC struct {
	// Enabled offers WebRTC on the viewer page (noVNC stays the fallback).
	Enabled bool `json:"enabled"`
	// FFmpeg is the encoder binary; empty means ffmpeg in PATH.
	FFmpeg string `json:"ffmpeg"`
	// Bitrate is the video target in bits per second.
	Bitrate int `json:"bitrate"`
	// MaxFPS caps frames a second while the screen changes.
	MaxFPS int `json:"max_fps"`
	// TURN configures the embedded TURN/STUN server.
	TURN TURN `json:"turn"`
}

// TURN configures the embedded TURN/STUN server.
type TURN struct {
	// Mode is auto (on unless the daemon listens on loopback, where every
	// viewer is local and needs no relay), on or off.
	Mode string `json:"mode"`
	// Listen is the UDP (and TCP) address; empty means the daemon's
	// listen host, port 3478.
	Listen string `json:"listen"`
	// TCP adds a TURN-over-TCP listener on the same address.
	TCP bool `json:"tcp"`
	// PublicIP is the relay address browsers are told; empty means the
	// listen host, which must then be a specific address.
	PublicIP string `json:"public_ip"`
	// RelayPorts is the relay port range "min-max"; empty means any.
	RelayPorts string `json:"relay_ports"`
	// MaxAllocationsPerSession caps relays per live-view session.
	MaxAllocationsPerSession int `json:"max_allocations_per_session"`
}

// Duration is a time.Duration written as "15s" in JSON and the environment.
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string such as "30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// LoadFile overlays the JSON file at path onto c. Unknown keys are errors,
// so a misspelt setting is never silently ignored.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// envVars maps each HANGAR_* variable to the setting it overrides.
var envVars = []struct {
	name string
	set  func(c *Config, v string) error
}{
	{"HANGAR_LISTEN", func(c *Config, v string) error { c.Listen = v; return nil }},
	{"HANGAR_DATA_DIR", func(c *Config, v string) error { c.DataDir = v; return nil }},
	{"HANGAR_DATABASE", func(c *Config, v string) error { c.Database = v; return nil }},
	{"HANGAR_LOG_LEVEL", func(c *Config, v string) error { c.LogLevel = v; return nil }},
	{"HANGAR_LOG_FORMAT", func(c *Config, v string) error { c.LogFormat = v; return nil }},
	{"HANGAR_RATE_LIMIT", func(c *Config, v string) error { c.RateLimit = v; return nil }},
	{"HANGAR_MAX_BODY_BYTES", func(c *Config, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		c.MaxBodyBytes = n
		return err
	}},
	{"HANGAR_MAX_FILE_BYTES", func(c *Config, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		c.MaxFileBytes = n
		return err
	}},
	{"HANGAR_CONSOLE_MAX_BYTES", func(c *Config, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		c.ConsoleMaxBytes = n
		return err
	}},
	{"HANGAR_SHUTDOWN_TIMEOUT", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		c.ShutdownTimeout = Duration(d)
		return err
	}},
	{"HANGAR_TASK_LEASE", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		c.TaskLease = Duration(d)
		return err
	}},
	{"HANGAR_HYPERVISOR", func(c *Config, v string) error { c.Hypervisor = v; return nil }},
	{"HANGAR_ACCEL", func(c *Config, v string) error { c.Accel = v; return nil }},
	{"HANGAR_MAX_VMS_PER_USER", func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		c.MaxVMsPerUser = n
		return err
	}},
	{"HANGAR_MAX_BROWSER_VMS", func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		c.MaxBrowserVMs = n
		return err
	}},
	{"HANGAR_MAX_BROWSER_VMS_PER_USER", func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		c.MaxBrowserVMsPerUser = n
		return err
	}},
	{"HANGAR_MAX_VCPUS_PER_USER", func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		c.MaxVCPUsPerUser = n
		return err
	}},
	{"HANGAR_MAX_MEMORY_MIB_PER_USER", func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		c.MaxMemoryMiBPerUser = n
		return err
	}},
	{"HANGAR_MAX_DISK_MIB_PER_USER", func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		c.MaxDiskMiBPerUser = n
		return err
	}},
	{"HANGAR_BROWSER_POOL_SIZE", func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		c.BrowserPoolSize = n
		return err
	}},
	{"HANGAR_BOOT_TIMEOUT", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		c.BootTimeout = Duration(d)
		return err
	}},
	{"HANGAR_LOGIN_HEARTBEAT_TIMEOUT", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		c.LoginHeartbeatTimeout = Duration(d)
		return err
	}},
	{"HANGAR_EVENT_RETENTION", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		c.EventRetention = Duration(d)
		return err
	}},
	{"HANGAR_IDLE_HIBERNATE", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		c.IdleHibernate = Duration(d)
		return err
	}},
	{"HANGAR_IDLE_DESTROY", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		c.IdleDestroy = Duration(d)
		return err
	}},
	{"HANGAR_LOG_RETENTION", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		c.LogRetention = Duration(d)
		return err
	}},
	{"HANGAR_BUILD_IMAGES", func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		c.BuildImages = b
		return err
	}},
	{"HANGAR_VM_SHUTDOWN_POLICY", func(c *Config, v string) error { c.VMShutdownPolicy = v; return nil }},
	{"HANGAR_PUBLIC_URL", func(c *Config, v string) error { c.PublicURL = v; return nil }},
	{"HANGAR_PROMPT_TIMEOUT", durationEnv(func(c *Config) *Duration { return &c.PromptTimeout })},
	{"HANGAR_CREDENTIAL_LEASE_TTL", durationEnv(func(c *Config) *Duration { return &c.CredentialLeaseTTL })},
	{"HANGAR_CREDENTIAL_LEASE_WAIT", durationEnv(func(c *Config) *Duration { return &c.CredentialLeaseWait })},
	{"HANGAR_CREDENTIAL_SYNC_INTERVAL", durationEnv(func(c *Config) *Duration { return &c.CredentialSyncInterval })},
	{"HANGAR_DEV_ACCESS_TOKEN_TTL", durationEnv(func(c *Config) *Duration { return &c.DevAccessTokenTTL })},
	{"HANGAR_RECONCILE_INTERVAL", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		c.ReconcileInterval = Duration(d)
		return err
	}},
	{"HANGAR_NETWORK", func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		c.Network.Enabled = b
		return err
	}},
	{"HANGAR_NETWORK_PREFIX", func(c *Config, v string) error { c.Network.Prefix = v; return nil }},
	{"HANGAR_NETWORK_HOST_NETNS", func(c *Config, v string) error { c.Network.HostNetNS = v; return nil }},
	{"HANGAR_WEBRTC", func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		c.WebRTC.Enabled = b
		return err
	}},
	{"HANGAR_TURN", func(c *Config, v string) error { c.WebRTC.TURN.Mode = v; return nil }},
	{"HANGAR_TURN_LISTEN", func(c *Config, v string) error { c.WebRTC.TURN.Listen = v; return nil }},
	{"HANGAR_TURN_PUBLIC_IP", func(c *Config, v string) error { c.WebRTC.TURN.PublicIP = v; return nil }},
}

// LoadEnv overlays HANGAR_* variables from lookup (os.LookupEnv in the
// daemon, a map in tests).
func (c *Config) LoadEnv(lookup func(string) (string, bool)) error {
	for _, e := range envVars {
		if v, ok := lookup(e.name); ok && v != "" {
			if err := e.set(c, v); err != nil {
				return fmt.Errorf("%s=%q: %w", e.name, v, err)
			}
		}
	}
	return nil
}

// ParseRateLimit reads "<requests>/<window>".
func ParseRateLimit(s string) (requests int, window time.Duration, err error) {
	n, w, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, fmt.Errorf("want <requests>/<window> such as 1000/15m, got %q", s)
	}
	requests, err = strconv.Atoi(strings.TrimSpace(n))
	if err != nil || requests <= 0 {
		return 0, 0, fmt.Errorf("requests in %q must be a positive integer", s)
	}
	window, err = time.ParseDuration(strings.TrimSpace(w))
	if err != nil || window <= 0 {
		return 0, 0, fmt.Errorf("window in %q must be a positive duration such as 15m", s)
	}
	return requests, window, nil
}

// Validate checks every setting and reports all problems at once.
func (c *Config) Validate() error {
	var errs []error
	if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen %q: want host:port such as 127.0.0.1:4000", c.Listen))
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		errs = append(errs, fmt.Errorf("listen %q: port must be 0-65535", c.Listen))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir must not be empty"))
	}
	if c.Database != "" && !strings.HasPrefix(c.Database, "postgres://") && !strings.HasPrefix(c.Database, "postgresql://") {
		errs = append(errs, fmt.Errorf("database must be empty (embedded SQLite) or a postgres:// URL"))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel))
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log_format %q: want text or json", c.LogFormat))
	}
	if _, _, err := ParseRateLimit(c.RateLimit); err != nil {
		errs = append(errs, fmt.Errorf("rate_limit: %w", err))
	}
	if c.MaxBodyBytes < 1024 {
		errs = append(errs, fmt.Errorf("max_body_bytes %d: must be at least 1024", c.MaxBodyBytes))
	}
	if c.MaxFileBytes < 1024 {
		errs = append(errs, fmt.Errorf("max_file_bytes %d: must be at least 1024", c.MaxFileBytes))
	}
	if c.ConsoleMaxBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("console_max_bytes %d: must be at least 65536", c.ConsoleMaxBytes))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, errors.New("shutdown_timeout must be positive"))
	}
	if time.Duration(c.TaskLease) < time.Second {
		errs = append(errs, errors.New("task_lease must be at least 1s"))
	}
	switch c.Hypervisor {
	case "auto", "qemu", "firecracker":
	default:
		errs = append(errs, fmt.Errorf("hypervisor %q: want auto, qemu or firecracker", c.Hypervisor))
	}
	switch c.Accel {
	case "auto", "kvm", "tcg":
	default:
		errs = append(errs, fmt.Errorf("accel %q: want auto, kvm or tcg", c.Accel))
	}
	if c.MaxVMsPerUser < 1 {
		errs = append(errs, errors.New("max_vms_per_user must be at least 1"))
	}
	if c.MaxBrowserVMs < 0 {
		errs = append(errs, errors.New("max_browser_vms must not be negative"))
	}
	if c.MaxBrowserVMsPerUser < 0 {
		errs = append(errs, errors.New("max_browser_vms_per_user must not be negative"))
	}
	if c.MaxVCPUsPerUser < 1 {
		errs = append(errs, errors.New("max_vcpus_per_user must be at least 1"))
	}
	if c.MaxMemoryMiBPerUser < 128 {
		errs = append(errs, errors.New("max_memory_mib_per_user must be at least 128"))
	}
	if c.MaxDiskMiBPerUser < 0 {
		errs = append(errs, errors.New("max_disk_mib_per_user must not be negative"))
	}
	if time.Duration(c.LoginHeartbeatTimeout) < 5*time.Second {
		errs = append(errs, errors.New("login_heartbeat_timeout must be at least 5s"))
	}
	// A pool larger than max_browser_vms is not an error: the pool never
	// holds more browser VMs than the limit allows (max_browser_vms 0
	// turns it off without touching browser_pool_size).
	if c.BrowserPoolSize < 0 {
		errs = append(errs, errors.New("browser_pool_size must not be negative"))
	}
	if c.IdleHibernate < 0 || c.IdleDestroy < 0 {
		errs = append(errs, errors.New("idle_hibernate and idle_destroy must not be negative (0 turns them off)"))
	}
	if c.LogRetention <= 0 {
		errs = append(errs, errors.New("log_retention must be positive"))
	}
	if time.Duration(c.EventRetention) < time.Minute {
		errs = append(errs, errors.New("event_retention must be at least 1m"))
	}
	if time.Duration(c.BootTimeout) < 5*time.Second {
		errs = append(errs, errors.New("boot_timeout must be at least 5s"))
	}
	switch c.VMShutdownPolicy {
	case "leave", "stop":
	default:
		errs = append(errs, fmt.Errorf("vm_shutdown_policy %q: want leave or stop", c.VMShutdownPolicy))
	}
	if d := time.Duration(c.PromptTimeout); d < time.Second || d > time.Hour {
		errs = append(errs, errors.New("prompt_timeout must be 1s to 1h"))
	}
	if time.Duration(c.CredentialLeaseTTL) < 3*time.Second {
		errs = append(errs, errors.New("credential_lease_ttl must be at least 3s"))
	}
	if time.Duration(c.CredentialLeaseWait) < 0 {
		errs = append(errs, errors.New("credential_lease_wait must not be negative"))
	}
	if time.Duration(c.CredentialSyncInterval) < time.Second {
		errs = append(errs, errors.New("credential_sync_interval must be at least 1s"))
	}
	if time.Duration(c.DevAccessTokenTTL) < time.Second {
		errs = append(errs, errors.New("dev_access_token_ttl must be at least 1s"))
	}
	if c.PublicURL != "" && !strings.HasPrefix(c.PublicURL, "http://") && !strings.HasPrefix(c.PublicURL, "https://") {
		errs = append(errs, fmt.Errorf("public_url %q must start with http:// or https://", c.PublicURL))
	}
	errs = append(errs, c.WebRTC.validate()...)
	if time.Duration(c.ReconcileInterval) < time.Second {
		errs = append(errs, errors.New("reconcile_interval must be at least 1s"))
	}
	for kind, p := range c.Network.Egress {
		switch kind {
		case "base", "cli", "browser":
		default:
			errs = append(errs, fmt.Errorf("network.egress: unknown vm kind %q (want base, cli or browser)", kind))
		}
		switch p.Mode {
		case "none", "full":
			if len(p.Allow) > 0 {
				errs = append(errs, fmt.Errorf("network.egress.%s: allow entries need mode allow", kind))
			}
		case "allow":
		default:
			errs = append(errs, fmt.Errorf("network.egress.%s: mode %q: want none, full or allow", kind, p.Mode))
		}
	}
	return errors.Join(errs...)
}

// DSN is what the store opens: the Postgres URL, or the SQLite file in the
// data directory.
func (c *Config) DSN() string {
	if c.Database != "" {
		return c.Database
	}
	return c.DataDir + "/hangar.db"
}

// durationEnv sets the Duration field that at returns from a HANGAR_*
// variable.
func durationEnv(at func(*Config) *Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		*at(c) = Duration(d)
		return err
	}
}

func (w WebRTC) validate() []error {
	var errs []error
	if w.Bitrate < 100_000 || w.Bitrate > 50_000_000 {
		errs = append(errs, errors.New("webrtc.bitrate must be 100000 to 50000000 bits per second"))
	}
	if w.MaxFPS < 1 || w.MaxFPS > 60 {
		errs = append(errs, errors.New("webrtc.max_fps must be 1 to 60"))
	}
	switch w.TURN.Mode {
	case "auto", "on", "off":
	default:
		errs = append(errs, fmt.Errorf("webrtc.turn.mode %q: want auto, on or off", w.TURN.Mode))
	}
	if w.TURN.Listen != "" {
		if _, _, err := net.SplitHostPort(w.TURN.Listen); err != nil {
			errs = append(errs, fmt.Errorf("webrtc.turn.listen %q: %w", w.TURN.Listen, err))
		}
	}
	if w.TURN.PublicIP != "" && net.ParseIP(w.TURN.PublicIP) == nil {
		errs = append(errs, fmt.Errorf("webrtc.turn.public_ip %q is not an IP address", w.TURN.PublicIP))
	}
	if _, _, err := w.TURN.RelayPortRange(); err != nil {
		errs = append(errs, err)
	}
	if w.TURN.MaxAllocationsPerSession < 1 {
		errs = append(errs, errors.New("webrtc.turn.max_allocations_per_session must be at least 1"))
	}
	return errs
}

// RelayPortRange parses RelayPorts; 0, 0 means any port.
func (t TURN) RelayPortRange() (uint16, uint16, error) {
	if t.RelayPorts == "" {
		return 0, 0, nil
	}
	lo, hi, ok := strings.Cut(t.RelayPorts, "-")
	a, err1 := strconv.ParseUint(lo, 10, 16)
	b, err2 := strconv.ParseUint(hi, 10, 16)
	if !ok || err1 != nil || err2 != nil || a == 0 || a > b {
		return 0, 0, fmt.Errorf("webrtc.turn.relay_ports %q: want min-max, like 49160-49200", t.RelayPorts)
	}
	return uint16(a), uint16(b), nil
}
