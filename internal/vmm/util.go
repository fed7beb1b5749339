package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"golang.org/x/sys/unix"
)

var idRE = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// maxSocketPath is sun_path's size minus the terminating NUL.
const maxSocketPath = 107

// Normalize validates spec and fills defaults (sizes, console path). Drivers
// call it first in Start.
func (s Spec) Normalize() (Spec, error) {
	if !idRE.MatchString(s.ID) {
		return s, fmt.Errorf("vm id %q: want 1-64 letters, digits or '-'", s.ID)
	}
	if s.RunDir == "" || !filepath.IsAbs(s.RunDir) {
		return s, fmt.Errorf("run dir %q: must be an absolute path", s.RunDir)
	}
	if s.KernelPath == "" {
		return s, errors.New("kernel path is required")
	}
	if s.BaseDisk == "" && s.InitrdPath == "" && s.RestoreFrom == "" {
		return s, errors.New("a base disk or an initrd is required")
	}
	if s.VCPUs == 0 {
		s.VCPUs = DefaultVCPUs
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = DefaultMemoryMiB
	}
	if s.VCPUs < 1 || s.VCPUs > 32 {
		return s, fmt.Errorf("vcpus %d: want 1-32", s.VCPUs)
	}
	if s.MemoryMiB < 64 {
		return s, fmt.Errorf("memory %d MiB: want at least 64", s.MemoryMiB)
	}
	if s.ConsoleLog == "" {
		s.ConsoleLog = filepath.Join(s.RunDir, "console.log")
	}
	if s.Init == "" && s.BaseDisk != "" {
		s.Init = DefaultInit
	}
	return s, nil
}

// SocketPath joins RunDir and name and checks the Unix socket length limit.
func SocketPath(runDir, name string) (string, error) {
	p := filepath.Join(runDir, name)
	if len(p) > maxSocketPath {
		return "", fmt.Errorf("socket path %s is %d bytes, the limit is %d: use a shorter run dir", p, len(p), maxSocketPath)
	}
	return p, nil
}

// DialUnixUntil dials a Unix socket the hypervisor is about to create,
// retrying until it answers, ctx ends, or exited is closed (the process
// died before creating it).
func DialUnixUntil(ctx context.Context, path string, exited <-chan struct{}) (net.Conn, error) {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-exited:
			return nil, fmt.Errorf("dial %s: %w", path, ErrNotRunning)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// WriteSnapshotMeta writes dir/snapshot.json durably.
func WriteSnapshotMeta(dir string, m SnapshotMeta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode snapshot meta: %w", err)
	}
	tmp := filepath.Join(dir, SnapshotMetaFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write snapshot meta: %w", err)
	}
	if err := SyncPath(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, SnapshotMetaFile)); err != nil {
		return fmt.Errorf("write snapshot meta: %w", err)
	}
	return SyncPath(dir)
}

// ReadSnapshotMeta reads dir/snapshot.json.
func ReadSnapshotMeta(dir string) (SnapshotMeta, error) {
	var m SnapshotMeta
	b, err := os.ReadFile(filepath.Join(dir, SnapshotMetaFile))
	if err != nil {
		return m, fmt.Errorf("read snapshot meta: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("decode snapshot meta %s: %w", dir, err)
	}
	return m, nil
}

// CheckRestore verifies that spec can restore the snapshot m was written
// for: a hypervisor refuses (or worse, corrupts the guest) when devices or
// sizes differ, so say which one differs up front.
func CheckRestore(driver string, m SnapshotMeta, spec Spec) error {
	switch {
	case m.Driver != driver:
		return fmt.Errorf("snapshot was taken by %s, not %s", m.Driver, driver)
	case m.VCPUs != spec.VCPUs:
		return fmt.Errorf("snapshot has %d vcpus, spec %d", m.VCPUs, spec.VCPUs)
	case m.MemoryMiB != spec.MemoryMiB:
		return fmt.Errorf("snapshot has %d MiB memory, spec %d", m.MemoryMiB, spec.MemoryMiB)
	case m.HasUpperDisk != (spec.UpperDisk != ""):
		return fmt.Errorf("snapshot upper disk %v, spec upper disk %v", m.HasUpperDisk, spec.UpperDisk != "")
	case m.HasNet != (spec.Net != nil):
		return fmt.Errorf("snapshot network device %v, spec network device %v", m.HasNet, spec.Net != nil)
	}
	return nil
}

// SyncPath fsyncs a file or directory.
func SyncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// CopySparse copies src to dst keeping holes (SEEK_DATA/SEEK_HOLE), so a
// mostly empty 10 GiB upper disk copies in the time its data takes.
func CopySparse(ctx context.Context, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy disk: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("copy disk: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("copy disk: %w", err)
	}
	defer out.Close()
	if err := out.Truncate(fi.Size()); err != nil {
		return fmt.Errorf("copy disk: %w", err)
	}
	size := fi.Size()
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break // only a hole remains
			}
			return fmt.Errorf("copy disk: seek data: %w", err)
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("copy disk: seek hole: %w", err)
		}
		if _, err := io.Copy(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data)); err != nil {
			return fmt.Errorf("copy disk: %w", err)
		}
		off = hole
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("copy disk: %w", err)
	}
	return nil
}

// FileSize is the size of path, 0 when missing.
func FileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
