package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// BaselineReadyLine is what the systemd baseline's readiness unit writes to
// the serial console once multi-user.target is reached. The benchmark
// measures QEMU start → this line.
const BaselineReadyLine = "HANGAR-BASELINE-READY"

// baselineUnit is the readiness unit of the systemd baseline: a oneshot
// ordered after multi-user.target, the point at which a stock Debian system
// (the design hangar replaces) considers itself booted.
const baselineUnit = `[Unit]
Description=hangar benchmark: signal readiness on the serial console
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo ` + BaselineReadyLine + ` > /dev/ttyS0'

[Install]
WantedBy=multi-user.target
`

// baselineExtra are the packages that turn a hangar flavor tree into the
// old design: systemd as init and Debian's stock kernel (with its initramfs,
// which the stock kernel needs: virtio and ext4 are modules there).
var baselineExtra = []string{"systemd", "systemd-sysv", "linux-image-amd64", "initramfs-tools"}

// SystemdBaseline is a root filesystem of a hangar flavor's packages booted
// the way the replaced system booted: systemd as init, Debian's stock
// kernel and initramfs. It exists only for the benchmark to compare with.
type SystemdBaseline struct {
	ID            string    `json:"id"`
	Flavor        string    `json:"flavor"`
	Dir           string    `json:"dir"`
	Rootfs        string    `json:"rootfs"`
	Kernel        string    `json:"kernel"`
	Initrd        string    `json:"initrd"`
	KernelVersion string    `json:"kernel_version"`
	Packages      []string  `json:"packages"`
	BuildSeconds  float64   `json:"build_seconds"`
	CreatedAt     time.Time `json:"created_at"`
}

// EnsureSystemdBaseline returns the systemd baseline of flavor cached under
// dir, building it first when it is missing. The cache key is the hash of
// everything that goes in (flavor packages, extra packages, suite, mirror,
// readiness unit), so changing any of them builds a new one. Only the base
// flavor is supported: the browser flavor's services are started by the
// agent, and a faithful systemd version of them is a larger piece of work.
func (c *Cache) EnsureSystemdBaseline(ctx context.Context, flavor, dir string, p Progress) (SystemdBaseline, error) {
	if flavor != FlavorBase {
		return SystemdBaseline{}, fmt.Errorf("systemd baseline: flavor %q is not supported (only %q)", flavor, FlavorBase)
	}
	pk, err := embedded("flavors/base.packages")
	if err != nil {
		return SystemdBaseline{}, err
	}
	pkgs := append(parsePackages(pk), baselineExtra...)
	sort.Strings(pkgs)
	h := sha256.New()
	for _, part := range []string{"systemd-baseline/v1", flavor, strings.Join(pkgs, ","), c.suite, c.apt.Mirror, c.apt.Security, baselineUnit} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	id := hex.EncodeToString(h.Sum(nil))
	name := flavor + "-systemd-" + short(id)
	final := filepath.Join(dir, name)
	if bl, err := readBaseline(final); err == nil {
		if p != nil {
			p.Report(StepEvent{Artifact: "baseline " + flavor, State: StepCached, Note: short(id)})
		}
		return bl, nil
	}
	if err := os.MkdirAll(filepath.Join(dir, "locks"), 0o755); err != nil {
		return SystemdBaseline{}, err
	}
	lock, err := lockFile(ctx, filepath.Join(dir, "locks", name+".lock"), c.log)
	if err != nil {
		return SystemdBaseline{}, err
	}
	defer lock.unlock()
	if bl, err := readBaseline(final); err == nil {
		return bl, nil
	}
	return c.buildBaseline(ctx, flavor, id, pkgs, dir, final, p)
}

func readBaseline(dir string) (SystemdBaseline, error) {
	data, err := os.ReadFile(filepath.Join(dir, "baseline.json"))
	if err != nil {
		return SystemdBaseline{}, err
	}
	var bl SystemdBaseline
	if err := json.Unmarshal(data, &bl); err != nil {
		return SystemdBaseline{}, fmt.Errorf("read %s: %w", dir, err)
	}
	bl.Dir = dir
	bl.Rootfs = filepath.Join(dir, rootfsFile)
	bl.Kernel = filepath.Join(dir, "vmlinuz")
	bl.Initrd = filepath.Join(dir, "initrd.img")
	for _, f := range []string{bl.Rootfs, bl.Kernel, bl.Initrd} {
		if _, err := os.Stat(f); err != nil {
			return SystemdBaseline{}, err
		}
	}
	return bl, nil
}

func (c *Cache) buildBaseline(ctx context.Context, flavor, id string, pkgs []string, dir, final string, p Progress) (SystemdBaseline, error) {
	start := time.Now()
	b, err := newBuild(filepath.Join(dir, "logs"), "baseline "+flavor, p)
	if err != nil {
		return SystemdBaseline{}, err
	}
	defer b.close()
	tmpBase := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmpBase, 0o755); err != nil {
		return SystemdBaseline{}, err
	}
	tmp, err := os.MkdirTemp(tmpBase, filepath.Base(final)+".")
	if err != nil {
		return SystemdBaseline{}, err
	}
	defer removeTree(tmp)
	root := filepath.Join(tmp, "root")
	if err := b.step("check host", func(*stepCtx) error { return missingError(RootfsToolChecks()) }); err != nil {
		return SystemdBaseline{}, err
	}
	if err := b.step("debootstrap", func(s *stepCtx) error {
		args := []string{"--variant=minbase", "--components=main", "--include=" + strings.Join(pkgs, ","), c.suite, root, c.apt.Mirror}
		var n int64
		return b.run(ctx, inPrivateMounts(exec.CommandContext(ctx, "debootstrap", args...)), func(l string) {
			if strings.HasPrefix(l, "I: Retrieving ") || strings.HasPrefix(l, "I: Extracting ") ||
				strings.HasPrefix(l, "I: Unpacking ") || strings.HasPrefix(l, "I: Configuring ") {
				n++
				s.count(n, 0, "package ops")
			}
		})
	}); err != nil {
		return SystemdBaseline{}, err
	}
	bl := SystemdBaseline{ID: id, Flavor: flavor, Packages: pkgs, CreatedAt: time.Now().UTC()}
	if err := b.step("configure", func(*stepCtx) error {
		// Stock configuration: a writable root from fstab, a hostname, the
		// readiness unit enabled. Nothing is masked or tuned either way.
		files := map[string]string{
			"etc/hostname": "baseline\n",
			"etc/hosts":    "127.0.0.1\tlocalhost\n127.0.1.1\tbaseline\n",
			"etc/fstab":    "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
			"etc/systemd/system/hangar-baseline-ready.service": baselineUnit,
		}
		for rel, content := range files {
			if err := os.WriteFile(filepath.Join(root, rel), []byte(content), 0o644); err != nil {
				return err
			}
		}
		wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
		if err := os.MkdirAll(wants, 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/etc/systemd/system/hangar-baseline-ready.service", filepath.Join(wants, "hangar-baseline-ready.service")); err != nil {
			return err
		}
		// A root password is never needed: the benchmark only reads the
		// console. The stock kernel and initramfs go beside the image, as
		// a VMM's -kernel/-initrd want them.
		kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
		initrds, _ := filepath.Glob(filepath.Join(root, "boot", "initrd.img-*"))
		if len(kernels) != 1 || len(initrds) != 1 {
			return fmt.Errorf("want one stock kernel and one initramfs in /boot, found %d and %d", len(kernels), len(initrds))
		}
		bl.KernelVersion = strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
		if err := copyFile(kernels[0], filepath.Join(tmp, "vmlinuz")); err != nil {
			return err
		}
		return copyFile(initrds[0], filepath.Join(tmp, "initrd.img"))
	}); err != nil {
		return SystemdBaseline{}, err
	}
	if err := b.step("mkfs.ext4", func(*stepCtx) error {
		bytes, files, err := treeSize(root)
		if err != nil {
			return err
		}
		// The same sizing rule as hangar's images, plus room to write: this
		// root is mounted read-write, as the old system's were.
		size := roundUp(bytes+bytes/10+256<<20, 4<<20)
		img := filepath.Join(tmp, rootfsFile)
		f, err := os.Create(img)
		if err != nil {
			return err
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			return err
		}
		f.Close()
		inodes := files + files/4 + 16384
		return b.run(ctx, exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096",
			"-N", strconv.FormatInt(inodes, 10), "-L", "baseline-"+flavor,
			"-E", "root_owner=0:0", "-d", root, img), nil)
	}); err != nil {
		return SystemdBaseline{}, err
	}
	if err := removeTree(root); err != nil {
		return SystemdBaseline{}, err
	}
	bl.BuildSeconds = time.Since(start).Seconds()
	if err := writeJSON(filepath.Join(tmp, "baseline.json"), bl); err != nil {
		return SystemdBaseline{}, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return SystemdBaseline{}, fmt.Errorf("install baseline: %w", err)
	}
	return readBaseline(final)
}
