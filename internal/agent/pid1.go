package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// PID 1 duties. The kernel mounted the read-only base (/dev/vda) as / and
// started us. We build the real root as an overlay: lower = a bind of the
// base root (without submounts), upper = the per-VM disk or a tmpfs, both
// staged under a tmpfs on /run; then move /proc, /sys and /dev into it and
// pivot_root into it, detaching the old root. The overlay keeps private
// references to its layers, so the staging mounts may go with the old root.

const (
	stagingDir = "/run/hangar"
	lowerDir   = stagingDir + "/lower"
	upperFSDir = stagingDir + "/upperfs"
	newRootDir = stagingDir + "/root"
)

func mountIgnoreBusy(source, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil && !errors.Is(err, unix.EROFS) {
		return fmt.Errorf("mkdir %s: %w", target, err)
	}
	err := unix.Mount(source, target, fstype, flags, data)
	if err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

// DisableCtrlAltDel makes the kernel send SIGINT to PID 1 on
// Ctrl-Alt-Del instead of restarting at once. Firecracker's graceful stop
// is SendCtrlAltDel: with the kernel's default the guest restarted without
// stopping its services or syncing its disks, so a "graceful" stop lost
// data like a kill. With it off, the agent's SIGINT handler shuts down
// properly and then reboots, which ends Firecracker.
func DisableCtrlAltDel() error {
	return unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
}

// MountEarly mounts /proc, /sys and /dev (devtmpfs; the kernel may have
// mounted it already) on the booted root.
func MountEarly() error {
	const nosuid = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	return errors.Join(
		mountIgnoreBusy("proc", "/proc", "proc", nosuid, ""),
		mountIgnoreBusy("sysfs", "/sys", "sysfs", nosuid, ""),
		mountIgnoreBusy("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"),
	)
}

// SetupRoot switches into the overlay root described by upper (a block
// device path, proto.UpperTmpfs or proto.UpperNone) and mounts the
// remaining file systems. On error the caller stays on the read-only root;
// MountRuntime should still be called.
func SetupRoot(log *slog.Logger, upper string) error {
	if upper == proto.UpperNone {
		log.Warn("no overlay requested: running on the read-only base")
		return nil
	}
	// pivot_root refuses shared mounts; make sure nothing propagates.
	_ = unix.Mount("", "/", "", unix.MS_PRIVATE|unix.MS_REC, "")
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mount staging tmpfs on /run: %w", err)
	}
	for _, d := range []string{lowerDir, upperFSDir, newRootDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", d, err)
		}
	}
	if err := unix.Mount("/", lowerDir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind the base root: %w", err)
	}
	if upper == proto.UpperTmpfs {
		if err := unix.Mount("tmpfs", upperFSDir, "tmpfs", 0, "mode=0755"); err != nil {
			return fmt.Errorf("mount tmpfs upper: %w", err)
		}
	} else {
		if err := waitForPath(upper, 5*time.Second); err != nil {
			return err
		}
		if err := unix.Mount(upper, upperFSDir, "ext4", unix.MS_NOATIME, ""); err != nil {
			return fmt.Errorf("mount upper disk %s as ext4: %w", upper, err)
		}
	}
	upperDir, workDir := upperFSDir+"/upper", upperFSDir+"/work"
	for _, d := range []string{upperDir, workDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", d, err)
		}
	}
	opts := "lowerdir=" + lowerDir + ",upperdir=" + upperDir + ",workdir=" + workDir
	if err := unix.Mount("overlay", newRootDir, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay root: %w", err)
	}
	for _, m := range []string{"/proc", "/sys", "/dev"} {
		if err := os.MkdirAll(newRootDir+m, 0o755); err != nil {
			return fmt.Errorf("mkdir %s in the new root: %w", m, err)
		}
		if err := unix.Mount(m, newRootDir+m, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s into the new root: %w", m, err)
		}
	}
	if err := unix.Chdir(newRootDir); err != nil {
		return fmt.Errorf("chdir new root: %w", err)
	}
	// pivot_root(".", ".") stacks the old root on top of the new one; the
	// detach then uncovers the new root (see pivot_root(2)).
	if err := unix.PivotRoot(".", "."); err != nil {
		log.Warn("pivot_root failed, falling back to move and chroot", "err", err)
		if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move the new root onto /: %w", err)
		}
		if err := unix.Chroot("."); err != nil {
			return fmt.Errorf("chroot: %w", err)
		}
	} else if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	log.Info("overlay root mounted", "upper", upper)
	return nil
}

// MountRuntime mounts /run, /tmp, /dev/pts, /dev/shm and cgroup2 in the
// current root, and the /dev links that devtmpfs lacks.
func MountRuntime() error {
	const nosuid = unix.MS_NOSUID | unix.MS_NODEV
	err := errors.Join(
		mountIgnoreBusy("tmpfs", "/run", "tmpfs", nosuid, "mode=0755"),
		mountIgnoreBusy("tmpfs", "/tmp", "tmpfs", nosuid, "mode=1777"),
		mountIgnoreBusy("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"),
		mountIgnoreBusy("tmpfs", "/dev/shm", "tmpfs", nosuid, "mode=1777"),
		mountIgnoreBusy("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid|unix.MS_NOEXEC, ""),
	)
	for link, target := range map[string]string{"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2"} {
		if _, e := os.Lstat(link); e != nil {
			_ = os.Symlink(target, link)
		}
	}
	return err
}

func waitForPath(p string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("device %s did not appear within %s", p, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SetHostname sets the kernel host name.
func SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	return nil
}

// LoopbackUp brings lo up: nothing else does without a network manager,
// and services listening on 127.0.0.1 (x11vnc, CLI OAuth callbacks) need it.
func LoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// SetSystemClock sets CLOCK_REALTIME.
func SetSystemClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("clock_settime: %w", err)
	}
	return nil
}

// PowerOff ends the VM from PID 1: every remaining process gets SIGTERM,
// then SIGKILL, file systems are synced and the root remounted read-only
// (best effort), and the kernel powers off or reboots. Under Firecracker,
// which has no ACPI power-off, reboot makes the VMM exit.
func PowerOff(log *slog.Logger, reboot bool) {
	_ = unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		// kill(-1, 0) fails with ESRCH once no other process is left.
		if err := unix.Kill(-1, 0); errors.Is(err, unix.ESRCH) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = unix.Kill(-1, unix.SIGKILL)
	unix.Sync()
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		log.Debug("remount / read-only", "err", err)
	}
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	time.Sleep(100 * time.Millisecond) // let the console drain the last lines
	if err := unix.Reboot(cmd); err != nil {
		log.Error("reboot syscall failed", "err", err)
	}
	select {} // PID 1 must never exit: that panics the kernel
}
