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
// everything that goes in (packages, suite, mirror, units), so changing any
// of them builds a new one.
//
// Flavors: base (the base packages), and browser: the cli flavor's Debian
// packages and the browser flavor's, with hangar's own browser service
// declarations (Xvfb, x11vnc, Chromium) turned into systemd units and the
// readiness unit waiting for the same readiness conditions hangar's agent
// checks. The cli flavor's Node.js and npm CLIs are left out: they are files
// nobody starts at boot, and they would not change the boot being measured.
func (c *Cache) EnsureSystemdBaseline(ctx context.Context, flavor, dir string, p Progress) (SystemdBaseline, error) {
	if flavor != FlavorBase && flavor != FlavorBrowser {
		return SystemdBaseline{}, fmt.Errorf("systemd baseline: flavor %q is not supported (base or browser)", flavor)
	}
	pk, err := embedded("flavors/base.packages")
	if err != nil {
		return SystemdBaseline{}, err
	}
	pkgs := append(parsePackages(pk), baselineExtra...)
	sort.Strings(pkgs)
	parts := []string{"systemd-baseline/v1", flavor, strings.Join(pkgs, ","), c.suite, c.apt.Mirror, c.apt.Security, baselineUnit}
	var extra []string
	var units map[string]string
	if flavor == FlavorBrowser {
		for _, f := range []string{"flavors/cli.packages", "flavors/browser.packages"} {
			b, err := embedded(f)
			if err != nil {
				return SystemdBaseline{}, err
			}
			extra = append(extra, parsePackages(b)...)
		}
		if units, err = browserUnits(); err != nil {
			return SystemdBaseline{}, err
		}
		names := make([]string, 0, len(units))
		for n := range units {
			names = append(names, n)
		}
		sort.Strings(names)
		parts = append(parts, strings.Join(extra, ","))
		for _, n := range names {
			parts = append(parts, n, units[n])
		}
	}
	h := sha256.New()
	for _, part := range parts {
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
	return c.buildBaseline(ctx, flavor, id, pkgs, extra, units, dir, final, p)
}

// browserUnits turns hangar's browser service declarations into systemd
// units (same argv, environment, user, ordering, restart policy) plus a
// readiness unit that waits for each declared readiness condition, as the
// agent does, before it signals.
func browserUnits() (map[string]string, error) {
	svcs, err := embeddedTree("services/browser")
	if err != nil {
		return nil, err
	}
	units := map[string]string{}
	var names, checks []string
	for p, data := range svcs {
		if !strings.HasSuffix(p, ".json") {
			continue
		}
		s, err := validateService(p, data)
		if err != nil {
			return nil, err
		}
		var u strings.Builder
		fmt.Fprintf(&u, "[Unit]\nDescription=%s (as hangar declares it)\n", s.Name)
		for _, a := range s.After {
			fmt.Fprintf(&u, "After=%s.service\nRequires=%s.service\n", a, a)
		}
		u.WriteString("\n[Service]\nType=simple\n")
		if s.User != "" {
			fmt.Fprintf(&u, "User=%s\n", s.User)
		}
		envs := make([]string, 0, len(s.Env))
		for k, v := range s.Env {
			envs = append(envs, k+"="+v)
		}
		sort.Strings(envs)
		for _, e := range envs {
			fmt.Fprintf(&u, "Environment=%s\n", e)
		}
		fmt.Fprintf(&u, "ExecStart=%s\n", strings.Join(s.Argv, " "))
		switch s.Restart {
		case "always", "on-failure":
			fmt.Fprintf(&u, "Restart=%s\nRestartSec=1\n", s.Restart)
		}
		u.WriteString("\n[Install]\nWantedBy=multi-user.target\n")
		units[s.Name+".service"] = u.String()
		names = append(names, s.Name+".service")
		if r := s.Ready; r != nil {
			switch {
			case r.TCP != "":
				host, port, _ := strings.Cut(r.TCP, ":")
				checks = append(checks, fmt.Sprintf("until (exec 3<>/dev/tcp/%s/%s) 2>/dev/null; do sleep 0.1; done", host, port))
			case r.File != "":
				checks = append(checks, fmt.Sprintf("until [ -e %s ]; do sleep 0.1; done", r.File))
			default:
				checks = append(checks, "until "+strings.Join(r.Cmd, " ")+" >/dev/null 2>&1; do sleep 0.1; done")
			}
		}
	}
	sort.Strings(names)
	sort.Strings(checks)
	units["hangar-baseline-ready.service"] = fmt.Sprintf(`[Unit]
Description=hangar benchmark: signal readiness once the browser services are ready
After=multi-user.target %s
Wants=%s

[Service]
Type=oneshot
ExecStart=/bin/bash -c '%s; echo %s > /dev/ttyS0'

[Install]
WantedBy=multi-user.target
`, strings.Join(names, " "), strings.Join(names, " "), strings.Join(checks, "; "), BaselineReadyLine)
	return units, nil
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

func (c *Cache) buildBaseline(ctx context.Context, flavor, id string, pkgs, extra []string, units map[string]string, dir, final string, p Progress) (SystemdBaseline, error) {
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
	if len(extra) > 0 {
		// The flavor's packages through apt, as hangar's layers get them
		// (debootstrap's own resolver does not handle Chromium's
		// dependencies), with hangar's apt settings: no recommends, no docs.
		if err := b.step("apt install", func(s *stepCtx) error {
			if err := c.prepareApt(root); err != nil {
				return err
			}
			return aptInstall(ctx, b, s, root, extra)
		}); err != nil {
			return SystemdBaseline{}, err
		}
		if err := b.step("add user", func(*stepCtx) error {
			return b.run(ctx, chroot(ctx, root, "useradd", "--create-home", "--uid", strconv.Itoa(GuestUID),
				"--user-group", "--shell", "/bin/bash", "--home-dir", GuestHome, GuestUser), nil)
		}); err != nil {
			return SystemdBaseline{}, err
		}
	}
	bl := SystemdBaseline{ID: id, Flavor: flavor, Packages: append(append([]string(nil), pkgs...), extra...), CreatedAt: time.Now().UTC()}
	if err := b.step("configure", func(*stepCtx) error {
		// Stock configuration: a writable root from fstab, a hostname, the
		// readiness unit enabled. Nothing is masked or tuned either way.
		files := map[string]string{
			"etc/hostname": "baseline\n",
			"etc/hosts":    "127.0.0.1\tlocalhost\n127.0.1.1\tbaseline\n",
			"etc/fstab":    "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
		}
		if units == nil {
			units = map[string]string{"hangar-baseline-ready.service": baselineUnit}
		}
		for name, content := range units {
			files["etc/systemd/system/"+name] = content
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
		for name := range units {
			if err := os.Symlink("/etc/systemd/system/"+name, filepath.Join(wants, name)); err != nil {
				return err
			}
		}
		if len(extra) > 0 {
			// The guest starts no daemons in a build chroot only; at boot
			// systemd owns that decision.
			if err := os.Remove(filepath.Join(root, "usr/sbin/policy-rc.d")); err != nil && !os.IsNotExist(err) {
				return err
			}
			pol, err := embedded("chromium/policy.json")
			if err != nil {
				return err
			}
			pdir := filepath.Join(root, "etc/chromium/policies/managed")
			if err := os.MkdirAll(pdir, 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(pdir, "hangar.json"), pol, 0o644); err != nil {
				return err
			}
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
