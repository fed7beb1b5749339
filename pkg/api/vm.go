package api

import "time"

// VM kinds.
const (
	KindBase    = "base"
	KindCLI     = "cli"
	KindBrowser = "browser"

	// PurposeWorkspace is a user's own VM; PurposeLogin a login session's
	// throwaway VM.
	PurposeWorkspace = "workspace"
	PurposeLogin     = "login"
)

// VM states. creating → booting → ready → stopping → stopped, plus failed
// (with LastError) and destroyed.
const (
	VMCreating  = "creating"
	VMBooting   = "booting"
	VMReady     = "ready"
	VMStopping  = "stopping"
	VMStopped   = "stopped"
	VMFailed    = "failed"
	VMDestroyed = "destroyed"
)

// Hibernation states of cli and base VMs: ready → hibernating →
// hibernated (memory and device state on disk, no hypervisor process) →
// resuming → ready. A failed hibernation leaves the VM ready; a failed
// resume leaves it failed with its disk kept.
const (
	VMHibernating = "hibernating"
	VMHibernated  = "hibernated"
	VMResuming    = "resuming"
)

// CreateVMRequest is the body of POST /api/v1/vms.
type CreateVMRequest struct {
	Kind      string `json:"kind"`
	VCPUs     int    `json:"vcpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
}

// BootPhases are the durations of one boot, in milliseconds, each measured
// from the previous phase's end: spawning the hypervisor, the kernel until
// the agent (PID 1) started, the agent until the host's link was up, and the
// image's required services until ready.
type BootPhases struct {
	SpawnMS         int64 `json:"spawn_ms"`
	KernelMS        int64 `json:"kernel_ms"`
	AgentUpMS       int64 `json:"agent_up_ms"`
	ServicesReadyMS int64 `json:"services_ready_ms"`
	TotalMS         int64 `json:"total_ms"`
}

// ServiceStatus is one supervised service inside a VM.
type ServiceStatus struct {
	Name     string `json:"name"`
	State    string `json:"state"`
	Restarts int    `json:"restarts"`
	PID      int    `json:"pid,omitempty"`
	Required bool   `json:"required"`
	Error    string `json:"error,omitempty"`
}

// VM is a virtual machine as the API shows it.
type VM struct {
	ID            string          `json:"id"`
	OwnerID       string          `json:"owner_id"`
	Kind          string          `json:"kind"`
	State         string          `json:"state"`
	LastError     string          `json:"last_error,omitempty"`
	VCPUs         int             `json:"vcpus"`
	MemoryMiB     int             `json:"memory_mib"`
	Hypervisor    string          `json:"hypervisor,omitempty"`
	Acceleration  string          `json:"acceleration,omitempty"`
	ImageID       string          `json:"image_id,omitempty"`
	KernelVersion string          `json:"kernel_version,omitempty"`
	BootPhases    *BootPhases     `json:"boot_phases,omitempty"`
	Services      []ServiceStatus `json:"services,omitempty"`
	// Purpose is "workspace" for a user's own VMs (a cli one is where
	// prompts run) and "login" for the throwaway VMs of login sessions.
	Purpose string `json:"purpose"`
	// Providers are the providers whose credentials this VM holds now
	// (it holds their single-writer lease).
	Providers []string  `json:"providers,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`

	// Unresponsive is set while a ready VM's agent does not answer the
	// daemon's liveness probes (a frozen hypervisor, a hung guest), since
	// UnresponsiveSince; calls to it fail fast meanwhile.
	Unresponsive      bool       `json:"unresponsive,omitempty"`
	UnresponsiveSince *time.Time `json:"unresponsive_since,omitempty"`
	// Hibernation describes the snapshot a hibernated VM resumes from.
	Hibernation *Hibernation `json:"hibernation,omitempty"`
}

// ExecRequest is the body of POST /api/v1/vms/{id}/exec.
type ExecRequest struct {
	Argv     []string          `json:"argv"`
	Stdin    string            `json:"stdin,omitempty"`
	Env      map[string]string `json:"env,omitempty"`
	Cwd      string            `json:"cwd,omitempty"`
	User     string            `json:"user,omitempty"`
	TimeoutS int               `json:"timeout_s,omitempty"`
}

// ExecResponse is the answer of a non-streaming exec.
type ExecResponse struct {
	ExitCode   int    `json:"exit_code"`
	Stdout     string `json:"stdout"`
	Stderr     string `json:"stderr"`
	DurationMS int64  `json:"duration_ms"`
}

// ExecFrame is one line of a streaming exec (?stream=1, NDJSON): output
// chunks as they come, then one frame with ExitCode set (or Error).
type ExecFrame struct {
	Stream   string `json:"stream,omitempty"` // stdout | stderr
	Data     string `json:"data,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Error    string `json:"error,omitempty"`
}

// ShellControl is a text message on the terminal websocket of GET
// /api/v1/vms/{id}/shell (query: rows, cols, user, term, and arg repeated
// for a command instead of a login shell). Binary messages carry the
// terminal's bytes both ways; the client sends {"type":"resize","rows",
// "cols"}; the server sends {"type":"exit","exit_code"} when the command
// ends, then closes.
type ShellControl struct {
	Type     string `json:"type"`
	Rows     uint16 `json:"rows,omitempty"`
	Cols     uint16 `json:"cols,omitempty"`
	ExitCode int    `json:"exit_code,omitempty"`
}

// ShellRequest is an interactive terminal in a VM: a command (default a
// login shell) on a pseudo-terminal of the given size.
type ShellRequest struct {
	Argv       []string
	User       string // default root
	Term       string // TERM, default xterm-256color
	Rows, Cols uint16
}

// CodeTimeout is the error code of a wait that timed out (408).
const CodeTimeout = "timeout"

// Hibernation is the on-disk snapshot of a hibernated VM.
type Hibernation struct {
	// SnapshotBytes is the size of the memory and device state on disk.
	SnapshotBytes int64     `json:"snapshot_bytes"`
	HibernatedAt  time.Time `json:"hibernated_at"`
	// DurationMS is how long the VM was frozen while its state was
	// written.
	DurationMS int64 `json:"duration_ms"`
}
