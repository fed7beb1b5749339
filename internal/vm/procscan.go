package vm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/vmm"
)

// HypervisorProcess is a hypervisor process found on the host that belongs
// to a data directory: its working directory is <data-dir>/vms/<id> (every
// driver starts the hypervisor there).
type HypervisorProcess struct {
	PID int
	// StartTime is field 22 of /proc/<pid>/stat; with PID it names the
	// process across pid reuse.
	StartTime uint64
	// VMID is the VM the run directory belongs to.
	VMID string
	// Exe is the program's base name (qemu-system-x86_64, firecracker,
	// or nsenter for the instant before it execs the hypervisor).
	Exe string
	// Name is QEMU's -name value ("hangar-<id>"), empty for others.
	Name string
}

// hypervisorExes are the programs a run directory may be the working
// directory of; anything else there (an operator's shell) is left alone.
func isHypervisorExe(name string) bool {
	return strings.HasPrefix(name, "qemu-system") || name == "firecracker" || name == "jailer" || name == "nsenter"
}

// ScanHypervisors lists the hypervisor processes of dataDir by reading
// /proc: processes whose working directory lies in <dataDir>/vms/ (also
// when that directory has been deleted). It changes nothing; `hangar
// doctor` and reconciliation use it.
func ScanHypervisors(dataDir string) ([]HypervisorProcess, error) {
	root, err := filepath.Abs(filepath.Join(dataDir, "vms"))
	if err != nil {
		return nil, err
	}
	if r, err := filepath.EvalSymlinks(root); err == nil {
		root = r
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	self := os.Getpid()
	var out []HypervisorProcess
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil {
			continue // gone, or a kernel thread
		}
		cwd = strings.TrimSuffix(cwd, " (deleted)")
		rel, ok := strings.CutPrefix(cwd, root+"/")
		if !ok || rel == "" {
			continue
		}
		id, _, _ := strings.Cut(rel, "/")
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		exe := filepath.Base(argv[0])
		if !isHypervisorExe(exe) {
			continue
		}
		st, err := vmm.ProcStartTime(pid)
		if err != nil {
			continue
		}
		p := HypervisorProcess{PID: pid, StartTime: st, VMID: id, Exe: exe}
		for i := 0; i+1 < len(argv); i++ {
			if argv[i] == "-name" {
				p.Name, _, _ = strings.Cut(argv[i+1], ",")
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// KillProcess sends SIGKILL to p through a pidfd, after checking that the
// pid still names the same process (never a reused pid), and waits up to
// wait for it to exit.
func KillProcess(p HypervisorProcess, wait time.Duration) error {
	fd, err := unix.PidfdOpen(p.PID, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd of %d: %w", p.PID, err)
	}
	defer unix.Close(fd)
	// The pidfd pins the process: a start time read after opening it
	// that still matches means the pidfd is the process we scanned.
	if st, err := vmm.ProcStartTime(p.PID); err != nil || st != p.StartTime {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill %d: %w", p.PID, err)
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(wait)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("process %d did not exit within %s of SIGKILL", p.PID, wait)
		}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("wait for %d: %w", p.PID, err)
		}
		if n > 0 {
			return nil // the pidfd is readable once the process exited
		}
	}
}

// processAlive reports whether pid still runs with the given start time
// (zombies count as gone).
func processAlive(pid int, startTime uint64) bool {
	st, err := vmm.ProcStartTime(pid)
	if err != nil || st != startTime {
		return false
	}
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(raw, ')'); i >= 0 && i+2 < len(raw) {
		return raw[i+2] != 'Z'
	}
	return true
}
