// Package vmm defines how hangar drives a hypervisor: one process per VM,
// started from a Spec, controlled through a Handle, and re-attached after a
// daemon restart from the persisted State.
//
// Two drivers implement it: vmm/qemu (QMP, virtio-serial agent link, runs
// under KVM or TCG) and vmm/firecracker (its HTTP API over a Unix socket,
// hybrid vsock agent link). The VM manager owns the lifecycle policy (graceful
// shutdown through the agent, boot phases, states); a driver only knows how
// to run and control the hypervisor process.
package vmm

import (
	"context"
	"errors"
	"time"
)

// Driver starts hypervisor processes and re-attaches to running ones.
// Implementations are safe for concurrent use.
type Driver interface {
	// Name is the driver's stable name ("qemu", "firecracker"); it is
	// persisted in State.Driver and checked by Recover.
	Name() string
	// Start spawns a hypervisor for spec and returns once its control
	// channel answers (QMP connected / API configured and the instance
	// started). The guest is then booting, or running again when
	// spec.RestoreFrom is set. ctx bounds only the start-up; the process
	// outlives it and the daemon.
	Start(ctx context.Context, spec Spec) (Handle, error)
	// Recover re-attaches to a hypervisor started by an earlier daemon
	// from its persisted State. It fails with ErrProcessGone when the
	// process has exited and ErrPIDReused when the pid now belongs to
	// another process; in both cases the caller treats the VM as dead.
	Recover(ctx context.Context, st State) (Handle, error)
}

// Handle controls one running hypervisor process. Methods are safe for
// concurrent use.
type Handle interface {
	// ID is Spec.ID.
	ID() string
	// State is everything Recover needs; the manager persists it after
	// Start and Recover.
	State() State

	// Done is closed when the hypervisor process has exited.
	Done() <-chan struct{}
	// ExitErr is nil while running and after a clean exit (the guest
	// powered off, or Stop); otherwise it says why the process ended:
	// an exit status with the tail of the hypervisor's stderr, a guest
	// reset/panic, or ErrExitUnknown after Recover (the exit status of a
	// process that is not our child cannot be read).
	ExitErr() error
	// Wait blocks until the process exits or ctx ends and returns ExitErr
	// (or ctx.Err()).
	Wait(ctx context.Context) error

	// Stop ends the VM the hard way: the hypervisor's own shutdown request
	// (QMP quit, Firecracker SendCtrlAltDel), then SIGKILL if it has not
	// exited when ctx ends or after a short grace period. The graceful
	// guest shutdown through the agent is the manager's job, before this.
	// Stopping an exited VM is not an error.
	Stop(ctx context.Context) error
	// Kill sends SIGKILL through a pidfd (never to a reused pid).
	Kill() error

	// Pause freezes the vCPUs; Resume continues them.
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Snapshot pauses the VM (if running), writes its device and memory
	// state into dir (created if missing) with a SnapshotMeta in
	// dir/snapshot.json, makes the disks' contents durable, and leaves the
	// VM paused: call Resume to continue it or Stop to hibernate it.
	// Restore by starting a Spec with RestoreFrom=dir and the same
	// devices (disks, vCPUs, memory).
	Snapshot(ctx context.Context, dir string, opts SnapshotOptions) (SnapshotMeta, error)

	// Agent is where the host connects to the guest agent.
	Agent() AgentEndpoint
	// ConsolePath is the file receiving the guest's serial console.
	ConsolePath() string

	// Release detaches from the process without stopping it (the daemon
	// is shutting down and the VM keeps running); the Handle is unusable
	// afterwards. Recover re-attaches later.
	Release() error
}

// Spec describes a VM to start. Paths are host paths; the manager creates
// RunDir (per VM, private) before Start and removes it after the VM is gone.
type Spec struct {
	// ID identifies the VM; letters, digits and '-' only, at most 64
	// characters (Firecracker's --id rule, applied to both drivers).
	ID string `json:"id,omitempty"`
	// RunDir holds the hypervisor's sockets, logs and pid-related files.
	// Keep it short: Unix socket paths are limited to 107 bytes.
	RunDir string `json:"run_dir,omitempty"`

	// KernelPath is a bzImage for QEMU, an ELF vmlinux for Firecracker.
	KernelPath string `json:"kernel_path,omitempty"`
	// InitrdPath is an optional initramfs (tests and rescue images).
	InitrdPath string `json:"initrd_path,omitempty"`
	// Init is the guest's init program; when empty and BaseDisk is set it
	// is DefaultInit. Ignored when booting from an initramfs only.
	Init string `json:"init,omitempty"`
	// KernelArgs are appended to the driver's own arguments (console,
	// root disk, init); the agent link's arguments go here. Never
	// serialized (State.Spec is persisted and shown): it may carry the
	// agent token. Drivers never log it.
	KernelArgs string `json:"-"`

	// BaseDisk is the read-only root filesystem image, /dev/vda in the
	// guest. Optional only for initramfs boots.
	BaseDisk string `json:"base_disk,omitempty"`
	// UpperDisk is the per-VM writable overlay disk, /dev/vdb in the guest;
	// empty means the agent uses a tmpfs upper layer.
	UpperDisk string `json:"upper_disk,omitempty"`

	// VCPUs and MemoryMiB size the guest; zero means 1 vCPU / 512 MiB.
	VCPUs     int `json:"vcpus,omitempty"`
	MemoryMiB int `json:"memory_mib,omitempty"`

	// ConsoleLog receives the serial console; empty means
	// RunDir/console.log. The manager may point it outside RunDir so it
	// survives the VM.
	ConsoleLog string `json:"console_log,omitempty"`

	// Net attaches a network interface when non-nil.
	Net *NetSpec `json:"net,omitempty"`

	// RestoreFrom is a directory written by Handle.Snapshot; when set the
	// VM resumes from it instead of booting.
	RestoreFrom string `json:"restore_from,omitempty"`
}

// NetSpec is the guest's network device.
type NetSpec struct {
	// TapName is the TAP device (with vnet_hdr) inside NetnsPath.
	TapName string `json:"tap_name,omitempty"`
	// MAC is the guest's MAC address, "02:xx:xx:xx:xx:xx".
	MAC string `json:"mac,omitempty"`
	// NetnsPath, when set, is a network namespace (/run/netns/<name>) the
	// hypervisor process is started in, so that the TAP is only visible
	// there.
	NetnsPath string `json:"netns_path,omitempty"`
}

// DefaultInit is the guest agent's path in hangar's root filesystems.
const DefaultInit = "/usr/sbin/hangar-agent"

// Defaults applied by both drivers when a Spec leaves sizes zero.
const (
	DefaultVCPUs     = 1
	DefaultMemoryMiB = 512
)

// Agent link kinds.
const (
	// AgentVirtioSerial: connect to Path (a Unix socket); the stream is
	// the guest's virtio-serial port org.hangar.agent
	// (/dev/virtio-ports/org.hangar.agent), nothing to negotiate. One host
	// connection at a time.
	AgentVirtioSerial = "virtio-serial"
	// AgentVsockUDS: Firecracker's hybrid vsock. Connect to Path, write
	// "CONNECT <Port>\n", read "OK <n>\n", then the stream is the guest's
	// AF_VSOCK connection to Port.
	AgentVsockUDS = "vsock-uds"
)

// AgentEndpoint is where the host reaches the guest agent.
type AgentEndpoint struct {
	Kind string `json:"kind"`
	Path string `json:"path"`
	// Port is the guest vsock port (AgentVsockUDS only).
	Port uint32 `json:"port,omitempty"`
}

// State is the persisted, JSON-serializable identity of a running
// hypervisor: enough for Recover to find it again and to refuse a pid that
// now belongs to another process.
type State struct {
	Driver string `json:"driver"`
	ID     string `json:"id"`
	PID    int    `json:"pid"`
	// StartTime is field 22 of /proc/<pid>/stat (clock ticks after boot);
	// with BootID it identifies the process across pid reuse.
	StartTime uint64 `json:"start_time"`
	// BootID is /proc/sys/kernel/random/boot_id when the process started.
	BootID string `json:"boot_id"`

	RunDir string `json:"run_dir"`
	// ControlSocket is the QMP socket (QEMU) or API socket (Firecracker).
	ControlSocket string        `json:"control_socket"`
	Agent         AgentEndpoint `json:"agent"`
	ConsolePath   string        `json:"console_path"`
	// StderrPath is the hypervisor's own stdout/stderr log.
	StderrPath string `json:"stderr_path"`
	// Accel is "kvm" or "tcg" for QEMU, "kvm" for Firecracker.
	Accel     string    `json:"accel"`
	StartedAt time.Time `json:"started_at"`
	// Spec is the normalized spec the VM was started with (snapshots
	// after a Recover need its sizes and disks).
	Spec Spec `json:"spec"`
}

// SnapshotOptions tune Handle.Snapshot.
type SnapshotOptions struct {
	// CopyUpperDisk also copies the upper disk (sparsely) into
	// dir/upper.img, for a snapshot the VM may later diverge from (a
	// template). Hibernation, where the VM is stopped right after, does
	// not need it: the disk stays as the snapshot left it.
	CopyUpperDisk bool
}

// SnapshotMeta is written to <dir>/snapshot.json by Handle.Snapshot and
// checked when restoring.
type SnapshotMeta struct {
	Driver    string    `json:"driver"`
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
	Accel     string    `json:"accel"`
	VCPUs     int       `json:"vcpus"`
	MemoryMiB int       `json:"memory_mib"`
	// HasUpperDisk and HasNet: the restored VM must have the same devices.
	HasUpperDisk bool `json:"has_upper_disk"`
	HasNet       bool `json:"has_net"`
	// StateFile (and MemoryFile for Firecracker) are names inside dir.
	StateFile  string `json:"state_file"`
	MemoryFile string `json:"memory_file,omitempty"`
	// UpperDiskCopy is "upper.img" when SnapshotOptions.CopyUpperDisk.
	UpperDiskCopy string `json:"upper_disk_copy,omitempty"`
	// SizeBytes is the size of the state and memory files.
	SizeBytes int64 `json:"size_bytes"`
	// Duration is how long the VM was frozen to write the snapshot.
	Duration time.Duration `json:"duration_ns"`
	// Agent is the endpoint the snapshotted VM used (Firecracker bakes the
	// vsock socket path into its snapshot).
	Agent AgentEndpoint `json:"agent"`
}

// SnapshotMetaFile is the name of the metadata file in a snapshot dir.
const SnapshotMetaFile = "snapshot.json"

var (
	// ErrProcessGone: Recover found no process with the persisted pid.
	ErrProcessGone = errors.New("hypervisor process is gone")
	// ErrPIDReused: the persisted pid belongs to another process now.
	ErrPIDReused = errors.New("hypervisor pid was reused by another process")
	// ErrExitUnknown: a re-attached process exited; its status cannot be
	// read because it is not the daemon's child.
	ErrExitUnknown = errors.New("hypervisor process exited (exit status unknown after re-attach)")
	// ErrNotRunning: the operation needs a live hypervisor.
	ErrNotRunning = errors.New("hypervisor is not running")
	// ErrReleased: the Handle was released.
	ErrReleased = errors.New("vm handle released")
)
