package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hangar-vm/hangar/internal/hostenv"
)

// Kernel is a built guest kernel in the cache.
type Kernel struct {
	ID       string // full input hash
	Dir      string
	BzImage  string // for QEMU (-kernel)
	Vmlinux  string // uncompressed ELF, for Firecracker
	Config   string // the final .config, kept for inspection and tests
	Version  string // kernel release, e.g. "6.1.192-hangar"
	Manifest Manifest
}

const (
	kernelSourcePackage = "linux-source-6.1"
	kernelFragment      = "kernel/hangar.config"
)

// kernelInputs are the bytes the kernel's id is the hash of: the fragment,
// the Debian source package version (plus the tarball size, so a tarball
// replaced outside dpkg is noticed) and the recipe version.
func (c *Cache) kernelInputs(ctx context.Context) (map[string][]byte, error) {
	frag, err := embedded(kernelFragment)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(c.kernelSource)
	if err != nil {
		return nil, fmt.Errorf("kernel source %s: %w (install it: apt-get install %s)", c.kernelSource, err, kernelSourcePackage)
	}
	ver := "unknown"
	if out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f", "${Version}", kernelSourcePackage).Output(); err == nil {
		ver = strings.TrimSpace(string(out))
	}
	return map[string][]byte{
		"recipe":         []byte(kernelRecipe),
		"fragment":       frag,
		"source_package": []byte(kernelSourcePackage + "=" + ver + " size=" + strconv.FormatInt(st.Size(), 10)),
	}, nil
}

func kernelDirName(id string) string { return "kernel-" + short(id) }

func (c *Cache) kernelFromDir(dir string) (Kernel, error) {
	m, err := readManifest(dir)
	if err != nil {
		return Kernel{}, err
	}
	return Kernel{
		ID: m.ID, Dir: dir, Version: m.KernelVersion, Manifest: m,
		BzImage: filepath.Join(dir, "bzImage"),
		Vmlinux: filepath.Join(dir, "vmlinux"),
		Config:  filepath.Join(dir, "config"),
	}, nil
}

// LookupKernel returns the cached kernel for the current inputs without
// building. Errors wrap ErrNotBuilt or ErrCorrupt.
func (c *Cache) LookupKernel(ctx context.Context) (Kernel, error) {
	in, err := c.kernelInputs(ctx)
	if err != nil {
		return Kernel{}, err
	}
	id, _ := hashInputs(in)
	return c.lookupKernelID(id, false)
}

func (c *Cache) lookupKernelID(id string, full bool) (Kernel, error) {
	dir := filepath.Join(c.root, kernelDirName(id))
	if _, err := os.Stat(dir); err != nil {
		return Kernel{}, fmt.Errorf("kernel %s: %w", short(id), ErrNotBuilt)
	}
	k, err := c.kernelFromDir(dir)
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel %s: %w: %v", short(id), ErrCorrupt, err)
	}
	if k.ID != id {
		return Kernel{}, fmt.Errorf("kernel %s: %w: manifest id %s", short(id), ErrCorrupt, short(k.ID))
	}
	if _, err := verifyFiles(dir, k.Manifest.Files, full); err != nil {
		return Kernel{}, fmt.Errorf("kernel %s: %w", short(id), err)
	}
	return k, nil
}

// EnsureKernel returns the guest kernel for the current inputs, building it
// when it is missing or corrupt.
func (c *Cache) EnsureKernel(ctx context.Context, p Progress) (Kernel, error) {
	if p == nil {
		p = NopProgress{}
	}
	in, err := c.kernelInputs(ctx)
	if err != nil {
		return Kernel{}, err
	}
	id, each := hashInputs(in)
	name := kernelDirName(id)
	k, err := c.lookupKernelID(id, false)
	if err == nil {
		p.Report(StepEvent{Artifact: "kernel", State: StepCached, Note: fmt.Sprintf("%s %s", name, k.Version)})
		return k, nil
	}
	if !errors.Is(err, ErrNotBuilt) {
		c.log.Warn("cached kernel unusable, rebuilding", "kernel", name, "err", err)
	}
	lock, err := lockFile(ctx, c.lockPath(name), c.log)
	if err != nil {
		return Kernel{}, err
	}
	defer lock.unlock()
	// Another builder may have finished while we waited for the lock.
	if k, err := c.lookupKernelID(id, false); err == nil {
		p.Report(StepEvent{Artifact: "kernel", State: StepCached, Note: name + " " + k.Version})
		return k, nil
	}
	if err := c.quarantine(name, "corrupt"); err != nil {
		return Kernel{}, err
	}
	if err := c.buildKernel(ctx, id, each, in["fragment"], p); err != nil {
		return Kernel{}, err
	}
	return c.lookupKernelID(id, false)
}

func (c *Cache) buildKernel(ctx context.Context, id string, inputs map[string]string, fragment []byte, p Progress) error {
	start := time.Now()
	name := kernelDirName(id)
	b, err := newBuild(c.logDir(), "kernel", p)
	if err != nil {
		return err
	}
	defer b.close()
	c.log.Info("building guest kernel", "kernel", name, "log", b.logPath)

	tmp, err := c.tempDir(name)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "src")
	out := filepath.Join(tmp, "out")
	fragPath := filepath.Join(tmp, "hangar.config")

	want, err := ParseConfig(bytes.NewReader(fragment))
	if err != nil {
		return fmt.Errorf("parse kernel fragment: %w", err)
	}
	if err := b.step("check host", func(*stepCtx) error {
		return missingError(c.checkKernelTools())
	}); err != nil {
		return err
	}
	// An outer make (the repository Makefile runs `hangar image build`)
	// exports its flags and jobserver to children; the kernel's make must
	// not inherit them (its -j and output would follow the outer make's).
	// Nor does it get the daemon's secrets (hostenv.Scrubbed).
	var env []string
	for _, e := range hostenv.Scrubbed() {
		if k, _, _ := strings.Cut(e, "="); k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" && k != "MAKEOVERRIDES" {
			env = append(env, e)
		}
	}
	mk := func(args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, "make", args...)
		cmd.Dir = src
		cmd.Env = env
		return cmd
	}
	if err := b.step("extract source", func(*stepCtx) error {
		if err := os.MkdirAll(src, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(fragPath, fragment, 0o644); err != nil {
			return err
		}
		return b.run(ctx, exec.CommandContext(ctx, "tar", "-xf", c.kernelSource, "-C", src, "--strip-components=1"), nil)
	}); err != nil {
		return err
	}
	verify := func() error {
		f, err := os.Open(filepath.Join(src, ".config"))
		if err != nil {
			return err
		}
		defer f.Close()
		got, err := ParseConfig(f)
		if err != nil {
			return fmt.Errorf("parse final .config: %w", err)
		}
		if bad := VerifyConfig(want, got); len(bad) > 0 {
			for _, m := range bad {
				b.logf("config option dropped: %s", m)
			}
			return &ConfigMismatchError{Mismatches: bad}
		}
		b.logf("all %d fragment options present in .config", len(want))
		return nil
	}
	if err := b.step("configure", func(*stepCtx) error {
		if err := b.run(ctx, mk("tinyconfig"), nil); err != nil {
			return err
		}
		merge := exec.CommandContext(ctx, "./scripts/kconfig/merge_config.sh", "-m", ".config", fragPath)
		merge.Dir = src
		if err := b.run(ctx, merge, nil); err != nil {
			return err
		}
		if err := b.run(ctx, mk("olddefconfig"), nil); err != nil {
			return err
		}
		// Check before the long compile: a dropped option fails in seconds.
		return verify()
	}); err != nil {
		return err
	}
	var units int64
	if err := b.step("compile", func(s *stepCtx) error {
		total := c.lastCompileUnits()
		last := time.Time{}
		cmd := mk("-j"+strconv.Itoa(c.jobs), "bzImage", "vmlinux")
		return b.run(ctx, cmd, func(l string) {
			f := strings.Fields(l)
			if len(f) == 2 && (f[0] == "CC" || f[0] == "AS") && strings.HasSuffix(f[1], ".o") {
				units++
				if time.Since(last) > 500*time.Millisecond {
					s.count(units, max(total, units), "objects")
					last = time.Now()
				}
			}
		})
	}); err != nil {
		return err
	}
	var version string
	if err := b.step("verify config", func(*stepCtx) error { return verify() }); err != nil {
		return err
	}
	files := map[string]FileSum{}
	if err := b.step("collect", func(*stepCtx) error {
		v, err := os.ReadFile(filepath.Join(src, "include/config/kernel.release"))
		if err != nil {
			return fmt.Errorf("read kernel release: %w", err)
		}
		version = strings.TrimSpace(string(v))
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		for dst, from := range map[string]string{
			"bzImage": "arch/x86/boot/bzImage",
			"vmlinux": "vmlinux",
			"config":  ".config",
		} {
			if err := copyFile(filepath.Join(src, from), filepath.Join(out, dst)); err != nil {
				return err
			}
			sum, err := hashFile(filepath.Join(out, dst))
			if err != nil {
				return err
			}
			files[dst] = sum
		}
		// The tree is ~1.5 GB; only the three outputs are kept.
		return os.RemoveAll(src)
	}); err != nil {
		return err
	}
	m := Manifest{
		Schema: manifestSchema, Kind: "kernel", ID: id, Inputs: inputs,
		CreatedAt: time.Now().UTC(), BuildSeconds: time.Since(start).Seconds(),
		StepSeconds: b.steps, Files: files, KernelVersion: version,
		Cmdline: BaseCmdline, CompileUnits: units, LogPath: b.logPath,
	}
	return b.step("install", func(*stepCtx) error {
		if err := writeManifest(out, m); err != nil {
			return err
		}
		return c.install(out, name)
	})
}

// lastCompileUnits is the object count of the newest cached kernel build,
// used as the progress total of the next compile (0 when unknown).
func (c *Cache) lastCompileUnits() int64 {
	dirs, _ := filepath.Glob(filepath.Join(c.root, "kernel-*"))
	var best int64
	var newest time.Time
	for _, d := range dirs {
		if m, err := readManifest(d); err == nil && m.CreatedAt.After(newest) {
			best, newest = m.CompileUnits, m.CreatedAt
		}
	}
	if best == 0 {
		best = defaultCompileUnits
	}
	return best
}

// defaultCompileUnits is the object count measured for the first build of
// the fragment on linux-source 6.1.192; it only scales the progress bar.
const defaultCompileUnits = 1425
