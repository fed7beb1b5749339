// Package qemu runs hangar VMs with qemu-system-x86_64: KVM where it is
// usable, TCG otherwise; QMP over a Unix socket for control; the serial
// console to a file; virtio-blk disks; a virtio-serial port for the agent
// link; snapshots by migrating to a file.
package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/vmm"
)

// DriverName is the name persisted in vmm.State.Driver.
const DriverName = "qemu"

// AgentPortName is the virtio-serial port name of the agent link; the
// guest sees it as /dev/virtio-ports/org.hangar.agent.
const AgentPortName = "org.hangar.agent"

// Files and sockets inside Spec.RunDir.
const (
	qmpSocketName   = "qmp.sock"
	agentSocketName = "agent.sock"
	stderrName      = "qemu.log"
	stateFileName   = "vmstate"
)

var timeZero time.Time

// Config configures the driver.
type Config struct {
	// Binary is the QEMU executable; default "qemu-system-x86_64".
	Binary string
	// Accel is "auto" (default), "kvm" or "tcg".
	Accel string
	// StopGrace is how long Stop waits after QMP quit before SIGKILL;
	// default 5 s.
	StopGrace time.Duration
	// Logger receives driver logs; nil discards.
	Logger *slog.Logger
}

// Driver is the QEMU vmm.Driver.
type Driver struct {
	binary    string
	accel     string
	stopGrace time.Duration
	log       *slog.Logger
}

var _ vmm.Driver = (*Driver)(nil)

// New resolves the acceleration once (see vmm.DetectKVM) and logs what TCG
// costs when it has to be used.
func New(cfg Config) (*Driver, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	accel, reason, err := vmm.ResolveAccel(cfg.Accel)
	if err != nil {
		return nil, fmt.Errorf("qemu driver: %w", err)
	}
	if accel == vmm.AccelTCG {
		log.Warn("qemu runs guests under TCG emulation: boots are about 10x slower (a browser VM ~26 s instead of a few), CPU-heavy work 5-20x slower; use a host with usable KVM for production",
			"reason", reason)
	} else {
		log.Info("qemu uses kvm", "reason", reason)
	}
	d := &Driver{
		binary:    cfg.Binary,
		accel:     accel,
		stopGrace: cfg.StopGrace,
		log:       log,
	}
	if d.binary == "" {
		d.binary = "qemu-system-x86_64"
	}
	if d.stopGrace == 0 {
		d.stopGrace = 5 * time.Second
	}
	return d, nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return DriverName }

// Accel is the resolved acceleration, "kvm" or "tcg".
func (d *Driver) Accel() string { return d.accel }

// paths are the per-VM files of one QEMU process.
type paths struct {
	qmp, agent, stderr, console string
}

func vmPaths(spec vmm.Spec) (paths, error) {
	qmp, err := vmm.SocketPath(spec.RunDir, qmpSocketName)
	if err != nil {
		return paths{}, err
	}
	agent, err := vmm.SocketPath(spec.RunDir, agentSocketName)
	if err != nil {
		return paths{}, err
	}
	return paths{
		qmp:     qmp,
		agent:   agent,
		stderr:  filepath.Join(spec.RunDir, stderrName),
		console: spec.ConsoleLog,
	}, nil
}

// KernelCmdline is the guest kernel command line for spec: the console on
// the first serial port, the root disk read-only, the init program, and
// spec.KernelArgs last. panic=-1 with QEMU's -no-reboot turns a guest panic
// (or the agent, PID 1, dying) into QEMU exiting, which Wait reports.
func KernelCmdline(spec vmm.Spec) string {
	args := []string{"console=ttyS0", "panic=-1", "reboot=t"}
	if spec.BaseDisk != "" {
		args = append(args, "root=/dev/vda", "ro", "rootfstype=ext4")
	}
	if spec.Init != "" {
		args = append(args, "init="+spec.Init)
	}
	if s := strings.TrimSpace(spec.KernelArgs); s != "" {
		args = append(args, s)
	}
	return strings.Join(args, " ")
}

// Args builds QEMU's argument list (without the binary) for a normalized
// spec. Device order is fixed: base disk first (/dev/vda), then the upper
// disk (/dev/vdb), because a migrated state only loads into an identical
// device layout.
func Args(spec vmm.Spec, accel string, p paths) []string {
	a := []string{
		"-name", "hangar-" + spec.ID + ",debug-threads=on",
		"-nodefaults", "-no-user-config", "-nographic",
		// A guest reboot means PID 1 died or the kernel panicked: exit
		// instead, so the manager sees it.
		"-no-reboot",
		// -M pc boots reliably under both KVM and TCG (microvm hung in
		// TSC calibration under TCG without pit/rtc; see notes).
		"-machine", "pc",
	}
	// The guest is untrusted: under KVM no nested virtualization
	// (vmx/svm) is offered to it, which would hand guest root the host's
	// KVM attack surface one level down. Under TCG nesting is emulated
	// and reaches no host KVM; there "max,vmx=off,svm=off" made Chromium
	// in the browser VM die at start (int3 after "Invalid file descriptor
	// to ICU data"), so TCG keeps plain max.
	if accel == vmm.AccelKVM {
		a = append(a, "-accel", "kvm", "-cpu", "host,vmx=off,svm=off")
	} else {
		a = append(a, "-accel", "tcg,thread=multi", "-cpu", "max")
	}
	// QEMU's seccomp filter: no obsolete syscalls, no setuid/setgid, no
	// scheduler or resource changes. spawn stays allowed because
	// snapshots migrate through "exec:cat" (QEMU 7.2 has no file: URI).
	a = append(a, "-sandbox", "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny")
	a = append(a,
		"-smp", strconv.Itoa(spec.VCPUs),
		"-m", strconv.Itoa(spec.MemoryMiB),
		"-kernel", spec.KernelPath,
		"-append", KernelCmdline(spec),
	)
	if spec.InitrdPath != "" {
		a = append(a, "-initrd", spec.InitrdPath)
	}
	a = append(a,
		"-chardev", "file,id=con,path="+optEscape(p.console)+",append=on",
		"-serial", "chardev:con",
	)
	if spec.BaseDisk != "" {
		a = append(a,
			"-drive", "if=none,id=base,file="+optEscape(spec.BaseDisk)+",format=raw,readonly=on",
			"-device", "virtio-blk-pci,drive=base,serial=hangar-base",
		)
	}
	if spec.UpperDisk != "" {
		a = append(a,
			"-drive", "if=none,id=upper,file="+optEscape(spec.UpperDisk)+",format=raw,discard=unmap",
			"-device", "virtio-blk-pci,drive=upper,serial=hangar-upper",
		)
	}
	a = append(a,
		"-device", "virtio-serial-pci,id=vser",
		"-chardev", "socket,id=agent,path="+optEscape(p.agent)+",server=on,wait=off",
		"-device", "virtserialport,bus=vser.0,chardev=agent,name="+AgentPortName,
		"-object", "rng-random,id=rng,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng",
	)
	if spec.Net != nil {
		a = append(a,
			"-netdev", "tap,id=net0,ifname="+optEscape(spec.Net.TapName)+",script=no,downscript=no,vhost=off",
			"-device", "virtio-net-pci,netdev=net0,mac="+spec.Net.MAC,
		)
	}
	a = append(a, "-qmp", "unix:"+optEscape(p.qmp)+",server=on,wait=off")
	if spec.RestoreFrom != "" {
		// defer: the source is given over QMP (migrate-incoming) once we
		// are connected; -S keeps the vCPUs stopped until our cont.
		a = append(a, "-incoming", "defer", "-S")
	}
	return a
}

// optEscape escapes commas in a QEMU option value (QEMU's rule: ",,").
func optEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// Start implements vmm.Driver.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	spec, err := spec.Normalize()
	if err != nil {
		return nil, fmt.Errorf("qemu start: %w", err)
	}
	var meta vmm.SnapshotMeta
	if spec.RestoreFrom != "" {
		meta, err = vmm.ReadSnapshotMeta(spec.RestoreFrom)
		if err != nil {
			return nil, fmt.Errorf("qemu restore: %w", err)
		}
		if err := vmm.CheckRestore(DriverName, meta, spec); err != nil {
			return nil, fmt.Errorf("qemu restore: %w", err)
		}
		if meta.Accel != d.accel {
			return nil, fmt.Errorf("qemu restore: snapshot taken under %s, this host runs %s", meta.Accel, d.accel)
		}
	}
	p, err := vmPaths(spec)
	if err != nil {
		return nil, fmt.Errorf("qemu start: %w", err)
	}
	if err := os.MkdirAll(spec.RunDir, 0o750); err != nil {
		return nil, fmt.Errorf("qemu start: %w", err)
	}
	// Stale sockets from an earlier run would make QEMU fail to bind.
	for _, s := range []string{p.qmp, p.agent} {
		if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("qemu start: remove stale socket: %w", err)
		}
	}
	args := Args(spec, d.accel, p)
	began := time.Now()
	proc, err := vmm.StartProcess(append([]string{d.binary}, args...), vmm.ProcessOptions{
		Dir:        spec.RunDir,
		OutputPath: p.stderr,
		NetnsPath:  netnsOf(spec),
	})
	if err != nil {
		return nil, fmt.Errorf("qemu start: %w", err)
	}
	d.log.Info("qemu started", "vm_id", spec.ID, "pid", proc.PID(), "accel", d.accel, "restore", spec.RestoreFrom != "")
	h := d.newHandle(spec.ID, spec, p, proc, began)
	fail := func(err error) (vmm.Handle, error) {
		_ = proc.Kill()
		<-proc.Done()
		if h.qmp != nil {
			h.qmp.Close()
		}
		if tail := vmm.TailFile(p.stderr, 2048); tail != "" {
			err = fmt.Errorf("%w (qemu: %s)", err, tail)
		}
		return nil, fmt.Errorf("qemu start: %w", err)
	}
	if err := h.connect(ctx); err != nil {
		return fail(err)
	}
	if spec.RestoreFrom != "" {
		if err := h.restore(ctx, filepath.Join(spec.RestoreFrom, meta.StateFile)); err != nil {
			return fail(err)
		}
	}
	return h, nil
}

func netnsOf(spec vmm.Spec) string {
	if spec.Net != nil {
		return spec.Net.NetnsPath
	}
	return ""
}

// Recover implements vmm.Driver.
func (d *Driver) Recover(ctx context.Context, st vmm.State) (vmm.Handle, error) {
	if st.Driver != DriverName {
		return nil, fmt.Errorf("qemu recover: state belongs to driver %q", st.Driver)
	}
	proc, err := vmm.AttachProcess(st.PID, st.StartTime, st.BootID, st.StderrPath)
	if err != nil {
		return nil, fmt.Errorf("qemu recover %s: %w", st.ID, err)
	}
	p := paths{qmp: st.ControlSocket, agent: st.Agent.Path, stderr: st.StderrPath, console: st.ConsolePath}
	spec := st.Spec
	spec.ID, spec.RunDir = st.ID, st.RunDir
	h := d.newHandle(st.ID, spec, p, proc, st.StartedAt)
	h.accel = st.Accel
	if err := h.connect(ctx); err != nil {
		proc.Release()
		return nil, fmt.Errorf("qemu recover %s: %w", st.ID, err)
	}
	d.log.Info("qemu re-attached", "vm_id", st.ID, "pid", st.PID)
	return h, nil
}

func (d *Driver) newHandle(id string, spec vmm.Spec, p paths, proc *vmm.Process, began time.Time) *handle {
	h := &handle{
		ProcessHandle: vmm.ProcessHandle{VMID: id, Proc: proc},
		d:             d,
		spec:          spec,
		paths:         p,
		accel:         d.accel,
		started:       began,
	}
	proc.SetExitHook(h.exitError)
	return h
}

// handle is one QEMU process.
type handle struct {
	// ProcessHandle holds the process and the released/stopping
	// bookkeeping shared with the Firecracker driver.
	vmm.ProcessHandle
	d       *Driver
	spec    vmm.Spec
	paths   paths
	accel   string
	started time.Time
	// qmp is set by connect before Start returns the handle; the exit
	// watcher, which runs concurrently with Start, reads it under mu.
	qmp *QMP

	mu sync.Mutex // guards qmp (writes, and reads by exitError), eventsDrained, shutdownReason
	// eventsDrained is closed when the QMP event follower has seen the
	// connection end.
	eventsDrained chan struct{}
	// shutdownReason is the reason of QEMU's last SHUTDOWN event
	// ("guest-shutdown", "guest-reset", "host-qmp-quit", "guest-panic").
	shutdownReason string
}

// connect dials QMP (QEMU creates the socket early in start-up) and
// follows its events.
func (h *handle) connect(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		// QEMU serves one QMP client at a time: if another one (a stale
		// daemon) holds the socket, the greeting never comes.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	conn, err := vmm.DialUnixUntil(ctx, h.paths.qmp, h.Proc.Done())
	if err != nil {
		return fmt.Errorf("connect qmp: %w", err)
	}
	q, err := NewQMP(ctx, conn, h.d.log.With("vm_id", h.VMID))
	if err != nil {
		return fmt.Errorf("connect qmp: %w", err)
	}
	h.mu.Lock()
	h.qmp = q
	h.mu.Unlock()
	events, _ := q.Subscribe()
	drained := make(chan struct{})
	h.mu.Lock()
	h.eventsDrained = drained
	h.mu.Unlock()
	go func() {
		// The channel closes after the read loop has dispatched QEMU's
		// last message: exitError waits for that to know the final
		// SHUTDOWN reason.
		defer close(drained)
		for ev := range events {
			if ev.Name == "SHUTDOWN" {
				var data struct {
					Reason string `json:"reason"`
				}
				_ = json.Unmarshal(ev.Data, &data)
				h.mu.Lock()
				h.shutdownReason = data.Reason
				h.mu.Unlock()
			}
		}
	}()
	return nil
}

// exitError refines the process's exit error with QEMU's last SHUTDOWN
// reason: QEMU exits 0 after a guest reset under -no-reboot (PID 1 died or
// the kernel panicked), which is a failure for hangar; and after Recover,
// where the exit status is unreadable, a guest power-off is still known to
// be clean.
func (h *handle) exitError(err error) error {
	h.mu.Lock()
	drained := h.eventsDrained
	h.mu.Unlock()
	if drained != nil {
		// The QMP socket closes as QEMU exits; let the SHUTDOWN event,
		// sent before, be processed.
		select {
		case <-drained:
		case <-time.After(time.Second):
		}
	}
	h.mu.Lock()
	reason := h.shutdownReason
	h.mu.Unlock()
	if h.Stopping() {
		return nil
	}
	if err != nil && !errors.Is(err, vmm.ErrExitUnknown) {
		return err
	}
	switch reason {
	case "guest-shutdown", "host-qmp-quit":
		return nil
	case "":
		return err
	case "host-signal":
		return errors.New("qemu was terminated by a signal from the host")
	default:
		return fmt.Errorf("guest stopped unexpectedly (qemu shutdown reason %s): the guest kernel panicked or its init exited; see the console log", reason)
	}
}

func (h *handle) State() vmm.State {
	return vmm.State{
		Driver:        DriverName,
		ID:            h.VMID,
		PID:           h.Proc.PID(),
		StartTime:     h.Proc.StartTime(),
		BootID:        h.Proc.BootID(),
		RunDir:        h.spec.RunDir,
		ControlSocket: h.paths.qmp,
		Agent:         h.Agent(),
		ConsolePath:   h.paths.console,
		StderrPath:    h.paths.stderr,
		Accel:         h.accel,
		StartedAt:     h.started,
		Spec:          h.spec,
	}
}

func (h *handle) Agent() vmm.AgentEndpoint {
	return vmm.AgentEndpoint{Kind: vmm.AgentVirtioSerial, Path: h.paths.agent}
}

func (h *handle) ConsolePath() string { return h.paths.console }

func (h *handle) Stop(ctx context.Context) error {
	if running, err := h.MarkStopping(); !running {
		return err
	}
	quit := func(ctx context.Context) error {
		// A QMP connection closed by the exiting QEMU is a quit that worked.
		if err := h.qmp.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, ErrQMPClosed) {
			return err
		}
		return nil
	}
	if err := h.Proc.Stop(ctx, "qemu", h.d.stopGrace, quit, h.d.log.With("vm_id", h.VMID)); err != nil {
		return fmt.Errorf("stop vm %s: %w", h.VMID, err)
	}
	return nil
}

func (h *handle) Pause(ctx context.Context) error {
	if err := h.Live(); err != nil {
		return fmt.Errorf("pause vm %s: %w", h.VMID, err)
	}
	if err := h.qmp.Execute(ctx, "stop", nil, nil); err != nil {
		return fmt.Errorf("pause vm %s: %w", h.VMID, err)
	}
	return nil
}

func (h *handle) Resume(ctx context.Context) error {
	if err := h.Live(); err != nil {
		return fmt.Errorf("resume vm %s: %w", h.VMID, err)
	}
	if err := h.qmp.Execute(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("resume vm %s: %w", h.VMID, err)
	}
	return nil
}

func (h *handle) Release() error {
	return h.ReleaseWith(func() error {
		h.mu.Lock()
		q := h.qmp
		h.mu.Unlock()
		if q != nil {
			// QEMU serves one QMP client at a time: close ours so the
			// next daemon's Recover can connect.
			return q.Close()
		}
		return nil
	})
}
