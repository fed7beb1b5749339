package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/hangar-vm/hangar/internal/atomicfile"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// Checksum strategy.
//
// Every artifact file has its full sha256 in the manifest, written at build
// time. Hashing a 2 GB rootfs takes several seconds, so re-hashing it on
// every lookup would break the "cache hit in under 5 s" promise. Instead a
// stamp file (verified.json) beside the manifest records, per file, the
// stat fingerprint observed the last time the full hash matched: size,
// mtime, ctime (both in ns), inode and device.
//
//   - Fingerprint equal to the stamp → the file is the one that was hashed.
//     Any write, truncate, chmod, rename or copy changes ctime (which no
//     user-space call can set back) or the size/inode, so a file altered by
//     anything short of raw block-device writes fails this comparison.
//   - Fingerprint different or no stamp → full sha256 once. A match
//     re-stamps (e.g. after the cache was restored from a CI cache); a
//     mismatch is corruption: reported, the artifact removed and rebuilt.
//
// Full verification can be forced (Cache.Verify with full=true, `hangar
// image verify --full`) to catch what fingerprints cannot, e.g. media errors.

// FileSum is the recorded identity of one artifact file.
type FileSum struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// fingerprint is the stat identity used for fast verification.
type fingerprint struct {
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	Ctime int64  `json:"ctime_ns"`
	Ino   uint64 `json:"ino"`
	Dev   uint64 `json:"dev"`
}

func statFingerprint(path string) (fingerprint, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fingerprint{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return fingerprint{
		Size:  st.Size,
		Mtime: st.Mtim.Sec*1e9 + st.Mtim.Nsec,
		Ctime: st.Ctim.Sec*1e9 + st.Ctim.Nsec,
		Ino:   st.Ino,
		Dev:   uint64(st.Dev),
	}, nil
}

const stampFile = "verified.json"

// ErrCorrupt marks an artifact whose files do not match their manifest.
var ErrCorrupt = errors.New("image corrupt")

func hashFile(path string) (FileSum, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileSum{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return FileSum{}, fmt.Errorf("hash %s: %w", path, err)
	}
	return FileSum{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func readStamp(dir string) map[string]fingerprint {
	m := map[string]fingerprint{}
	b, err := os.ReadFile(filepath.Join(dir, stampFile))
	if err != nil {
		return m
	}
	_ = json.Unmarshal(b, &m) // a damaged stamp only costs a full hash
	return m
}

func writeStamp(dir string, m map[string]fingerprint) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode stamp: %w", err)
	}
	return writeFileAtomic(filepath.Join(dir, stampFile), b, 0o644)
}

// verifyFiles checks the files of an artifact directory against their
// recorded sums. full forces a sha256 of every file. It returns an error
// wrapping ErrCorrupt naming the first bad file; fullHashed says whether any
// file had to be hashed (for the caller's logs).
func verifyFiles(dir string, files map[string]FileSum, full bool) (fullHashed bool, err error) {
	stamp := readStamp(dir)
	changed := false
	for name, want := range files {
		p := filepath.Join(dir, name)
		fp, err := statFingerprint(p)
		if err != nil {
			return fullHashed, fmt.Errorf("%w: %s: %v", ErrCorrupt, name, err)
		}
		if fp.Size != want.Size {
			return fullHashed, fmt.Errorf("%w: %s is %d bytes, manifest says %d", ErrCorrupt, name, fp.Size, want.Size)
		}
		if !full && stamp[name] == fp {
			continue
		}
		fullHashed = true
		got, err := hashFile(p)
		if err != nil {
			return fullHashed, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		if got.SHA256 != want.SHA256 {
			return fullHashed, fmt.Errorf("%w: %s has sha256 %s, manifest says %s", ErrCorrupt, name, got.SHA256[:16], want.SHA256[:16])
		}
		// Stat again: a writer racing the hash would show up here.
		fp2, err := statFingerprint(p)
		if err != nil || fp2 != fp {
			return fullHashed, fmt.Errorf("%w: %s changed while being verified", ErrCorrupt, name)
		}
		stamp[name] = fp
		changed = true
	}
	if changed {
		if err := writeStamp(dir, stamp); err != nil {
			return fullHashed, err
		}
	}
	return fullHashed, nil
}

// writeFileAtomic writes data to path through a temp file and rename.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return atomicfile.Write(path, data, mode)
}

// statBlocks returns the bytes allocated to path.
func statBlocks(path string) (int64, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, false
	}
	return st.Blocks * 512, true
}
