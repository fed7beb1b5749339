package image

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeArtifact(t *testing.T, dir string, size int) map[string]FileSum {
	t.Helper()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	p := filepath.Join(dir, "rootfs.ext4")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sum, err := hashFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]FileSum{"rootfs.ext4": sum}
}

func TestVerifyFastPathAfterFirstFullHash(t *testing.T) {
	dir := t.TempDir()
	files := writeArtifact(t, dir, 1<<20)
	hashed, err := verifyFiles(dir, files, false)
	if err != nil || !hashed {
		t.Fatalf("first verify: hashed=%v err=%v, want a full hash", hashed, err)
	}
	hashed, err = verifyFiles(dir, files, false)
	if err != nil || hashed {
		t.Fatalf("second verify: hashed=%v err=%v, want the stamp fast path", hashed, err)
	}
	hashed, err = verifyFiles(dir, files, true)
	if err != nil || !hashed {
		t.Fatalf("forced full verify: hashed=%v err=%v", hashed, err)
	}
}

func TestVerifyDetectsCorruption(t *testing.T) {
	cases := map[string]func(t *testing.T, p string){
		"byte flipped": func(t *testing.T, p string) {
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{0xff, 0x00, 0xff}, 4096); err != nil {
				t.Fatal(err)
			}
		},
		"truncated": func(t *testing.T, p string) {
			if err := os.Truncate(p, 1000); err != nil {
				t.Fatal(err)
			}
		},
		// Restoring the mtime does not hide a change: ctime moves anyway.
		"altered with mtime restored": func(t *testing.T, p string) {
			st, _ := os.Stat(p)
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("evil"), 100); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if err := os.Chtimes(p, st.ModTime(), st.ModTime()); err != nil {
				t.Fatal(err)
			}
		},
		"removed": func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, corrupt := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			files := writeArtifact(t, dir, 256<<10)
			if _, err := verifyFiles(dir, files, false); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond) // let ctime move on coarse clocks
			corrupt(t, filepath.Join(dir, "rootfs.ext4"))
			_, err := verifyFiles(dir, files, false)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("verify after %s: err=%v, want ErrCorrupt", name, err)
			}
			if !strings.Contains(err.Error(), "rootfs.ext4") {
				t.Errorf("error does not name the file: %v", err)
			}
		})
	}
}
