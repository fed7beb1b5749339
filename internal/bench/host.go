package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// PSSKiB reads a process's proportional set size from
// /proc/<pid>/smaps_rollup: shared pages (QEMU's binary and libraries, the
// page cache of a shared base image) count once in total across all
// processes sharing them, so the sum over VMs is what they really cost.
func PSSKiB(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "Pss:" {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no Pss line in /proc/%d/smaps_rollup", pid)
}

// FindProcess returns the pid of the process whose command line contains
// every one of the given arguments (hangar names each QEMU
// "hangar-<vm id>,…" with -name).
func FindProcess(contains ...string) (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		ok := true
		for _, c := range contains {
			if !bytes.Contains(cmd, []byte(c)) {
				ok = false
				break
			}
		}
		if ok {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process with %q in its command line", contains)
}

// AllocatedBytes is the disk space allocated to the files under root (not
// their apparent sizes: a sparse overlay disk of 8 GiB that holds 3 MiB
// costs 3 MiB). Symlinks are not followed, so a data dir whose images
// directory is a link to a shared cache counts only its own files.
func AllocatedBytes(root string) (int64, error) {
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		total += st.Blocks * 512
		return nil
	})
	return total, err
}

// WrittenBytes is the number of bytes this process has caused to be
// written to storage so far (/proc/self/io write_bytes), which counts data
// that reached the block layer, not just the page cache.
func WrittenBytes() (int64, error) {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "write_bytes: "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no write_bytes in /proc/self/io")
}
