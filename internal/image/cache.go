// Package image builds and caches hangar's guest images: the guest kernel
// (bzImage for QEMU, ELF vmlinux for Firecracker), and the base, cli and
// browser root filesystems (ext4 images made with debootstrap and
// mkfs.ext4 -d, no loop mounts), each with the static hangar-agent as
// /usr/sbin/hangar-agent.
//
// Everything is content-addressed: an artifact's id is the sha256 of its
// inputs (recipes under images/ at the repository root, embedded into the
// binary; pinned package lists; the kernel source version; the agent
// binary). Cache layout under <data-dir>/images/:
//
//	kernel-<id12>/        bzImage vmlinux config manifest.json verified.json
//	layers/<flavor>-<id12>/root/   cached root tree (debootstrap + packages)
//	layers/<flavor>-<id12>/layer.json
//	<flavor>-<id12>/      rootfs.ext4 manifest.json verified.json
//	agent/                agent binaries built from source, by hash
//	downloads/            npm tarballs and npm cache
//	logs/                 one full log per build
//	locks/                flock files, one per artifact
//	tmp/                  builds in progress (renamed into place when done)
//
// Root trees are cached separately from images so that a new agent (every
// commit) only costs a mkfs, not a debootstrap.
package image

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNotBuilt means the artifact for the current inputs is not in the cache.
var ErrNotBuilt = errors.New("image not built")

// ErrUnknownFlavor is returned for a flavor name the cache does not know.
var ErrUnknownFlavor = errors.New("unknown image flavor")

// Cache is the image cache in a data directory. Its methods are safe for
// concurrent use by goroutines and by other processes: each artifact is
// built under its own lock file and installed by an atomic rename.
type Cache struct {
	root         string // <data-dir>/images
	log          *slog.Logger
	kernelSource string
	agentBinary  string // prebuilt agent; "" = build from sourceDir
	sourceDir    string // module root holding ./cmd/hangar-agent
	suite        string
	apt          aptSources
	headroom     int64 // bytes of free space added to each rootfs
	jobs         int
	flavors      map[string]*flavorDef

	agentMu sync.Mutex // guards agentMemo
	// agentMemo is the agent resolved by the first build of this Cache:
	// one `build --all` (or one daemon run) puts the same agent into every
	// image, even when the source tree changes while it runs.
	agentMemo *agentBin
}

// Option configures a Cache.
type Option func(*Cache)

// WithAgentBinary uses a prebuilt static hangar-agent instead of building
// one from the source tree (the daemon uses this; the binary is checked to
// be statically linked).
func WithAgentBinary(path string) Option { return func(c *Cache) { c.agentBinary = path } }

// WithSourceDir sets the hangar module root the agent is built from
// (default: found by walking up from the working directory).
func WithSourceDir(dir string) Option { return func(c *Cache) { c.sourceDir = dir } }

// WithMirror overrides the Debian mirror (default: the one this host's apt
// sources use). security may be empty to derive it from mirror.
func WithMirror(mirror, security string) Option {
	return func(c *Cache) {
		if mirror != "" {
			c.apt.Mirror = strings.TrimRight(mirror, "/")
			c.apt.Security = strings.TrimSuffix(c.apt.Mirror, "/debian") + "/debian-security"
		}
		if security != "" {
			c.apt.Security = strings.TrimRight(security, "/")
		}
	}
}

// WithHeadroom sets the free space added to each root filesystem image on
// top of its content (default 256 MiB). Images are sparse, so headroom costs
// no disk until written.
func WithHeadroom(bytes int64) Option { return func(c *Cache) { c.headroom = bytes } }

// WithJobs sets the parallelism of the kernel compile (default: CPUs).
func WithJobs(n int) Option { return func(c *Cache) { c.jobs = n } }

// WithKernelSource sets the kernel source tarball.
func WithKernelSource(path string) Option { return func(c *Cache) { c.kernelSource = path } }

// DefaultHeadroom is the free space given to each rootfs image.
const DefaultHeadroom = 256 << 20

// NewCache returns the cache under <dataDir>/images. It touches nothing on
// disk until used.
func NewCache(dataDir string, log *slog.Logger, opts ...Option) *Cache {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &Cache{
		root:         filepath.Join(dataDir, "images"),
		log:          log,
		kernelSource: "/usr/src/" + kernelSourcePackage + ".tar.xz",
		suite:        "bookworm",
		headroom:     DefaultHeadroom,
		jobs:         runtime.NumCPU(),
	}
	c.apt = hostAptSources(c.suite)
	c.flavors = defaultFlavors()
	for _, o := range opts {
		o(c)
	}
	return c
}

// Root is the cache directory (<data-dir>/images).
func (c *Cache) Root() string { return c.root }

func (c *Cache) logDir() string              { return filepath.Join(c.root, "logs") }
func (c *Cache) lockPath(name string) string { return filepath.Join(c.root, "locks", name+".lock") }

// tempDir makes a fresh build directory for artifact name inside the cache
// (same file system, so the final rename is atomic). Leftovers of crashed
// builds of the same artifact are removed first; the caller holds name's
// lock, so none of them can be in use.
func (c *Cache) tempDir(name string) (string, error) {
	base := filepath.Join(c.root, "tmp")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", fmt.Errorf("create tmp dir: %w", err)
	}
	old, _ := filepath.Glob(filepath.Join(base, name+".*"))
	for _, o := range old {
		c.log.Info("removing leftover of an interrupted build", "path", o)
		if err := removeTree(o); err != nil {
			return "", err
		}
	}
	d, err := os.MkdirTemp(base, name+".")
	if err != nil {
		return "", fmt.Errorf("create build dir: %w", err)
	}
	return d, nil
}

// install renames a finished build directory to its final name.
func (c *Cache) install(from, name string) error {
	dst := filepath.Join(c.root, name)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Rename(from, dst); err != nil {
		return fmt.Errorf("install %s: %w", name, err)
	}
	syncDir(filepath.Dir(dst))
	return nil
}

// quarantine moves an artifact (corrupt, half-valid, or no longer wanted)
// out of the way so that nothing can pick it up, then deletes it. why is
// logged: "corrupt" at warning level, anything else (gc, rm) as info.
func (c *Cache) quarantine(name, why string) error {
	dir := filepath.Join(c.root, name)
	if _, err := os.Lstat(dir); err != nil {
		return nil
	}
	tmp := filepath.Join(c.root, "tmp", "corrupt-"+strings.ReplaceAll(name, "/", "-")+"."+fmt.Sprint(time.Now().UnixNano()))
	if err := os.MkdirAll(filepath.Dir(tmp), 0o755); err != nil {
		return err
	}
	if err := os.Rename(dir, tmp); err != nil {
		return fmt.Errorf("move aside %s: %w", name, err)
	}
	if why == "corrupt" {
		c.log.Warn("removed unusable cached artifact", "artifact", name)
	} else {
		c.log.Info("removed cached artifact", "artifact", name, "reason", why)
	}
	return removeTree(tmp)
}

func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		_ = f.Sync()
		f.Close()
	}
}

// removeTree deletes a build tree, refusing when anything is mounted under
// it (a mount left by a crashed chroot step must never make RemoveAll walk
// into the host's /proc or /dev).
func removeTree(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if m := mountsUnder(abs); len(m) > 0 {
		for _, p := range m {
			_ = syscall.Unmount(p, syscall.MNT_DETACH)
		}
		if m := mountsUnder(abs); len(m) > 0 {
			return fmt.Errorf("refusing to delete %s: still mounted: %s", abs, strings.Join(m, ", "))
		}
	}
	if err := os.RemoveAll(abs); err != nil {
		return fmt.Errorf("remove %s: %w", abs, err)
	}
	return nil
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return fmt.Errorf("open %s: %w", from, err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, st.Mode().Perm())
	if err != nil {
		return fmt.Errorf("create %s: %w", to, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy to %s: %w", to, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
