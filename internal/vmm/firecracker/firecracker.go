// Package firecracker runs hangar VMs with Firecracker: one process per VM
// started with --api-sock, configured and controlled through its HTTP API
// on that Unix socket, the agent link over hybrid vsock, snapshots with
// snapshot/create and snapshot/load.
//
// UNVERIFIED: no Firecracker binary can be installed on this project's
// development and CI hosts (and they lack usable KVM). What is tested: the
// request bodies against golden JSON written from the v1.16.1 API spec, and
// the whole Start/Pause/Snapshot/Restore/Stop/Recover sequence against a
// fake Firecracker process that serves the API on the socket. What is not:
// that a real Firecracker accepts this sequence and boots hangar's vmlinux,
// the guest side of vsock, console output through the process's stdout,
// SendCtrlAltDel ending the process, snapshot files loading, and the
// jailer (not implemented: the process runs unjailed).
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hangar-vm/hangar/internal/hostenv"
	"github.com/hangar-vm/hangar/internal/vmm"
)

// DriverName is the name persisted in vmm.State.Driver.
const DriverName = "firecracker"

// Files and sockets inside Spec.RunDir.
const (
	apiSocketName   = "api.sock"
	vsockSocketName = "vsock.sock"
	stderrName      = "firecracker.out"
	logName         = "firecracker.log"
	stateFileName   = "vmstate"
	memoryFileName  = "memory"
)

// GuestCID is the guest's vsock context id. Every VM has its own vsock
// device behind its own socket, so the same CID is fine for all.
const GuestCID = 3

// DefaultAgentPort is the guest vsock port the agent listens on unless
// configured otherwise.
const DefaultAgentPort = 1024

// Config configures the driver.
type Config struct {
	// Binary is the firecracker executable; default "firecracker".
	Binary string
	// AgentPort is the guest vsock port of the agent; default 1024.
	AgentPort uint32
	// LogLevel is Firecracker's log level; default "Warning".
	LogLevel string
	// StopGrace is how long Stop waits after SendCtrlAltDel before
	// SIGKILL; default 3 s.
	StopGrace time.Duration
	// Logger receives driver logs; nil discards.
	Logger *slog.Logger
	// Env is added to the process's minimal environment (it never gets
	// the daemon's; see internal/hostenv). Tests use it to turn the test
	// binary into a fake Firecracker.
	Env []string
}

// Driver is the Firecracker vmm.Driver.
type Driver struct {
	cfg Config
	log *slog.Logger
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver. It does not check that the binary or KVM exist:
// the backend choice ("auto") is the caller's, with vmm.DetectKVM.
func New(cfg Config) *Driver {
	if cfg.Binary == "" {
		cfg.Binary = "firecracker"
	}
	if cfg.AgentPort == 0 {
		cfg.AgentPort = DefaultAgentPort
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "Warning"
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 3 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{cfg: cfg, log: log}
}

// Available says whether this driver can run VMs here: the binary is on
// PATH (or at the configured path) and KVM is usable. The daemon's "auto"
// backend choice uses it; the error says what is missing.
func Available(binary string) error {
	if binary == "" {
		binary = "firecracker"
	}
	if _, err := exec.LookPath(binary); err != nil {
		return fmt.Errorf("firecracker binary: %w", err)
	}
	if ok, why := vmm.DetectKVM(); !ok {
		return fmt.Errorf("firecracker needs kvm: %s", why)
	}
	return nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return DriverName }

type paths struct {
	api, vsock, stderr, log, console string
}

func vmPaths(spec vmm.Spec) (paths, error) {
	api, err := vmm.SocketPath(spec.RunDir, apiSocketName)
	if err != nil {
		return paths{}, err
	}
	vs, err := vmm.SocketPath(spec.RunDir, vsockSocketName)
	if err != nil {
		return paths{}, err
	}
	// Guest-initiated vsock connections go to <uds>_<port>: leave room.
	if len(vs)+11 > 107 {
		return paths{}, fmt.Errorf("vsock socket path %s leaves no room for the _<port> suffix", vs)
	}
	return paths{
		api:     api,
		vsock:   vs,
		stderr:  filepath.Join(spec.RunDir, stderrName),
		log:     filepath.Join(spec.RunDir, logName),
		console: spec.ConsoleLog,
	}, nil
}

// BootArgs is the guest kernel command line: the console on ttyS0, no PCI
// probing (devices are virtio-mmio, which Firecracker adds to the command
// line itself, as it adds root=/dev/vda for the root drive), the init, then
// spec.KernelArgs.
func BootArgs(spec vmm.Spec) string {
	args := []string{"console=ttyS0", "reboot=k", "panic=1", "pci=off"}
	if spec.BaseDisk != "" {
		args = append(args, "rootfstype=ext4")
	}
	if spec.Init != "" {
		args = append(args, "init="+spec.Init)
	}
	if s := strings.TrimSpace(spec.KernelArgs); s != "" {
		args = append(args, s)
	}
	return strings.Join(args, " ")
}

// Configuration is every pre-boot request Start sends, in order, for a
// normalized spec.
type Configuration struct {
	Logger  Logger
	Machine MachineConfiguration
	Boot    BootSource
	Drives  []Drive
	Vsock   Vsock
	Net     *NetworkInterface
}

func (d *Driver) configuration(spec vmm.Spec, p paths) Configuration {
	c := Configuration{
		Logger:  Logger{LogPath: p.log, Level: d.cfg.LogLevel, ShowLevel: true, ShowLogOrigin: false},
		Machine: MachineConfiguration{VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB},
		Boot:    BootSource{KernelImagePath: spec.KernelPath, BootArgs: BootArgs(spec), InitrdPath: spec.InitrdPath},
		Vsock:   Vsock{GuestCID: GuestCID, UDSPath: p.vsock},
	}
	// Drive order fixes guest names: rootfs is /dev/vda, upper /dev/vdb.
	if spec.BaseDisk != "" {
		c.Drives = append(c.Drives, Drive{DriveID: "rootfs", PathOnHost: spec.BaseDisk, IsRootDevice: true, IsReadOnly: true})
	}
	if spec.UpperDisk != "" {
		c.Drives = append(c.Drives, Drive{DriveID: "upper", PathOnHost: spec.UpperDisk, IsReadOnly: false, CacheType: "Writeback"})
	}
	if spec.Net != nil {
		c.Net = &NetworkInterface{IfaceID: "eth0", HostDevName: spec.Net.TapName, GuestMAC: spec.Net.MAC}
	}
	return c
}

// Start implements vmm.Driver: spawn `firecracker --api-sock <sock> --id
// <id>`, then either configure and InstanceStart, or snapshot/load and
// resume.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	spec, err := spec.Normalize()
	if err != nil {
		return nil, fmt.Errorf("firecracker start: %w", err)
	}
	var meta vmm.SnapshotMeta
	if spec.RestoreFrom != "" {
		if meta, err = vmm.ReadSnapshotMeta(spec.RestoreFrom); err != nil {
			return nil, fmt.Errorf("firecracker restore: %w", err)
		}
		if err := vmm.CheckRestore(DriverName, meta, spec); err != nil {
			return nil, fmt.Errorf("firecracker restore: %w", err)
		}
	}
	p, err := vmPaths(spec)
	if err != nil {
		return nil, fmt.Errorf("firecracker start: %w", err)
	}
	if err := os.MkdirAll(spec.RunDir, 0o750); err != nil {
		return nil, fmt.Errorf("firecracker start: %w", err)
	}
	for _, s := range []string{p.api, p.vsock} {
		if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("firecracker start: remove stale socket: %w", err)
		}
	}
	began := time.Now()
	proc, err := vmm.StartProcess([]string{d.cfg.Binary, "--api-sock", p.api, "--id", spec.ID}, vmm.ProcessOptions{
		Dir:        spec.RunDir,
		OutputPath: p.stderr,
		// Without PUT /serial (v1.14+) the guest's serial console is the
		// process's stdout.
		StdoutPath: p.console,
		NetnsPath:  netnsOf(spec),
		Env:        hostenv.Minimal(d.cfg.Env...),
	})
	if err != nil {
		return nil, fmt.Errorf("firecracker start: %w", err)
	}
	d.log.Info("firecracker started", "vm_id", spec.ID, "pid", proc.PID(), "restore", spec.RestoreFrom != "")
	h := &handle{ProcessHandle: vmm.ProcessHandle{VMID: spec.ID, Proc: proc}, d: d, spec: spec, paths: p, started: began, api: NewClient(p.api)}
	proc.SetExitHook(h.exitError)
	fail := func(err error) (vmm.Handle, error) {
		_ = proc.Kill()
		<-proc.Done()
		h.api.Close()
		if tail := vmm.TailFile(p.stderr, 2048); tail != "" {
			err = fmt.Errorf("%w (firecracker: %s)", err, tail)
		}
		return nil, fmt.Errorf("firecracker start %s: %w", spec.ID, err)
	}
	// The API socket appears once Firecracker is listening.
	conn, err := vmm.DialUnixUntil(ctx, p.api, proc.Done())
	if err != nil {
		return fail(err)
	}
	conn.Close()
	if spec.RestoreFrom != "" {
		err = h.restore(ctx, meta)
	} else {
		err = h.boot(ctx)
	}
	if err != nil {
		return fail(err)
	}
	return h, nil
}

func (h *handle) boot(ctx context.Context) error {
	c := h.d.configuration(h.spec, h.paths)
	if err := h.api.PutLogger(ctx, c.Logger); err != nil {
		return err
	}
	if err := h.api.PutMachineConfig(ctx, c.Machine); err != nil {
		return err
	}
	if err := h.api.PutBootSource(ctx, c.Boot); err != nil {
		return err
	}
	for _, dr := range c.Drives {
		if err := h.api.PutDrive(ctx, dr); err != nil {
			return err
		}
	}
	if err := h.api.PutVsock(ctx, c.Vsock); err != nil {
		return err
	}
	if c.Net != nil {
		if err := h.api.PutNetworkInterface(ctx, *c.Net); err != nil {
			return err
		}
	}
	if err := h.api.PutEntropy(ctx); err != nil {
		return err
	}
	return h.api.Action(ctx, ActionInstanceStart)
}

// restore loads a snapshot into the fresh process and resumes it. Disks
// must be at the paths they had when the snapshot was taken (Firecracker
// bakes path_on_host into the state); the vsock socket and TAP are
// overridden when they differ (fields of Firecracker >= 1.16 / 1.12).
func (h *handle) restore(ctx context.Context, meta vmm.SnapshotMeta) error {
	c := h.d.configuration(h.spec, h.paths)
	if err := h.api.PutLogger(ctx, c.Logger); err != nil {
		return err
	}
	load := SnapshotLoadParams{
		SnapshotPath: filepath.Join(h.spec.RestoreFrom, meta.StateFile),
		MemBackend:   &MemoryBackend{BackendType: "File", BackendPath: filepath.Join(h.spec.RestoreFrom, meta.MemoryFile)},
		ResumeVM:     false,
	}
	if meta.Agent.Path != "" && meta.Agent.Path != h.paths.vsock {
		load.VsockOverride = &VsockOverride{UDSPath: h.paths.vsock}
	}
	if c.Net != nil {
		load.NetworkOverrides = []NetworkOverride{{IfaceID: c.Net.IfaceID, HostDevName: c.Net.HostDevName}}
	}
	if err := h.api.LoadSnapshot(ctx, load); err != nil {
		return err
	}
	return h.api.PatchVM(ctx, StateResumed)
}

func netnsOf(spec vmm.Spec) string {
	if spec.Net != nil {
		return spec.Net.NetnsPath
	}
	return ""
}

// Recover implements vmm.Driver: re-attach to the process and check that
// its API answers.
func (d *Driver) Recover(ctx context.Context, st vmm.State) (vmm.Handle, error) {
	if st.Driver != DriverName {
		return nil, fmt.Errorf("firecracker recover: state belongs to driver %q", st.Driver)
	}
	proc, err := vmm.AttachProcess(st.PID, st.StartTime, st.BootID, st.StderrPath)
	if err != nil {
		return nil, fmt.Errorf("firecracker recover %s: %w", st.ID, err)
	}
	spec := st.Spec
	spec.ID, spec.RunDir = st.ID, st.RunDir
	p := paths{api: st.ControlSocket, vsock: st.Agent.Path, stderr: st.StderrPath,
		log: filepath.Join(st.RunDir, logName), console: st.ConsolePath}
	h := &handle{ProcessHandle: vmm.ProcessHandle{VMID: spec.ID, Proc: proc}, d: d, spec: spec, paths: p, started: st.StartedAt, api: NewClient(p.api)}
	proc.SetExitHook(h.exitError)
	if _, err := h.api.DescribeInstance(ctx); err != nil {
		proc.Release()
		h.api.Close()
		return nil, fmt.Errorf("firecracker recover %s: %w", st.ID, err)
	}
	d.log.Info("firecracker re-attached", "vm_id", st.ID, "pid", st.PID)
	return h, nil
}

// handle is one Firecracker process.
type handle struct {
	// ProcessHandle holds the process and the released/stopping
	// bookkeeping shared with the QEMU driver.
	vmm.ProcessHandle
	d       *Driver
	spec    vmm.Spec
	paths   paths
	started time.Time
	api     *Client
}

func (h *handle) exitError(err error) error {
	h.api.Close()
	if h.Stopping() {
		return nil
	}
	return err
}

func (h *handle) State() vmm.State {
	return vmm.State{
		Driver:        DriverName,
		ID:            h.spec.ID,
		PID:           h.Proc.PID(),
		StartTime:     h.Proc.StartTime(),
		BootID:        h.Proc.BootID(),
		RunDir:        h.spec.RunDir,
		ControlSocket: h.paths.api,
		Agent:         h.Agent(),
		ConsolePath:   h.paths.console,
		StderrPath:    h.paths.stderr,
		Accel:         vmm.AccelKVM,
		StartedAt:     h.started,
		Spec:          h.spec,
	}
}

func (h *handle) Agent() vmm.AgentEndpoint {
	return vmm.AgentEndpoint{Kind: vmm.AgentVsockUDS, Path: h.paths.vsock, Port: h.d.cfg.AgentPort}
}

func (h *handle) ConsolePath() string { return h.paths.console }

// Stop sends SendCtrlAltDel (on x86 the guest sees the keyboard
// controller's reset; the kernel reboots, and Firecracker exits on a
// guest reboot), waits StopGrace, then SIGKILLs.
func (h *handle) Stop(ctx context.Context) error {
	if running, err := h.MarkStopping(); !running {
		return err
	}
	ctrlAltDel := func(ctx context.Context) error { return h.api.Action(ctx, ActionSendCtrlAltDel) }
	if err := h.Proc.Stop(ctx, "firecracker", h.d.cfg.StopGrace, ctrlAltDel, h.d.log.With("vm_id", h.spec.ID)); err != nil {
		return fmt.Errorf("stop vm %s: %w", h.spec.ID, err)
	}
	return nil
}

func (h *handle) Pause(ctx context.Context) error {
	if err := h.Live(); err != nil {
		return fmt.Errorf("pause vm %s: %w", h.spec.ID, err)
	}
	if err := h.api.PatchVM(ctx, StatePaused); err != nil {
		return fmt.Errorf("pause vm %s: %w", h.spec.ID, err)
	}
	return nil
}

func (h *handle) Resume(ctx context.Context) error {
	if err := h.Live(); err != nil {
		return fmt.Errorf("resume vm %s: %w", h.spec.ID, err)
	}
	if err := h.api.PatchVM(ctx, StateResumed); err != nil {
		return fmt.Errorf("resume vm %s: %w", h.spec.ID, err)
	}
	return nil
}

// Snapshot implements vmm.Handle: PATCH /vm Paused, PUT /snapshot/create
// (Full), then make the files and the upper disk durable (Firecracker
// only guarantees they reached the host page cache).
func (h *handle) Snapshot(ctx context.Context, dir string, opts vmm.SnapshotOptions) (vmm.SnapshotMeta, error) {
	var meta vmm.SnapshotMeta
	if err := h.Live(); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: %w", h.spec.ID, err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: %w", h.spec.ID, err)
	}
	began := time.Now()
	if err := h.api.PatchVM(ctx, StatePaused); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: %w", h.spec.ID, err)
	}
	state, mem := filepath.Join(dir, stateFileName), filepath.Join(dir, memoryFileName)
	if err := h.api.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotPath: state, MemFilePath: mem, SnapshotType: "Full"}); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: %w", h.spec.ID, err)
	}
	for _, f := range []string{state, mem} {
		if err := vmm.SyncPath(f); err != nil {
			return meta, fmt.Errorf("snapshot vm %s: %w", h.spec.ID, err)
		}
	}
	if h.spec.UpperDisk != "" {
		if err := vmm.SyncPath(h.spec.UpperDisk); err != nil {
			return meta, fmt.Errorf("snapshot vm %s: %w", h.spec.ID, err)
		}
	}
	meta = vmm.SnapshotMeta{
		Driver:       DriverName,
		ID:           h.spec.ID,
		CreatedAt:    time.Now().UTC(),
		Accel:        vmm.AccelKVM,
		VCPUs:        h.spec.VCPUs,
		MemoryMiB:    h.spec.MemoryMiB,
		HasUpperDisk: h.spec.UpperDisk != "",
		HasNet:       h.spec.Net != nil,
		StateFile:    stateFileName,
		MemoryFile:   memoryFileName,
		SizeBytes:    vmm.FileSize(state) + vmm.FileSize(mem),
		Agent:        h.Agent(),
	}
	if opts.CopyUpperDisk && h.spec.UpperDisk != "" {
		if err := vmm.CopySparse(ctx, h.spec.UpperDisk, filepath.Join(dir, "upper.img")); err != nil {
			return meta, fmt.Errorf("snapshot vm %s: %w", h.spec.ID, err)
		}
		meta.UpperDiskCopy = "upper.img"
	}
	meta.Duration = time.Since(began)
	if err := vmm.WriteSnapshotMeta(dir, meta); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: %w", h.spec.ID, err)
	}
	return meta, nil
}

func (h *handle) Release() error {
	return h.ReleaseWith(func() error { h.api.Close(); return nil })
}
