package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Image is a built, verified root filesystem image with the kernel it boots
// with.
type Image struct {
	ID       string // full input hash
	Flavor   string
	Dir      string
	Rootfs   string // ext4 image; attach read-only as /dev/vda
	Kernel   Kernel // zero for flavors that carry no kernel (tests)
	Cmdline  string // kernel command line the image expects
	Manifest Manifest
}

const rootfsFile = "rootfs.ext4"

func imageDirName(flavor, id string) string { return flavor + "-" + short(id) }

// imageInputs are the bytes an image id is the hash of.
type imageInputs struct {
	id     string
	each   map[string]string
	layer  string
	kernel string
	agent  agentBin
}

func (c *Cache) imageInputs(ctx context.Context, flavor string, p Progress) (imageInputs, error) {
	def, ok := c.flavors[flavor]
	if !ok {
		return imageInputs{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownFlavor, flavor, strings.Join(c.FlavorNames(), ", "))
	}
	layerID, _, err := c.layerID(flavor)
	if err != nil {
		return imageInputs{}, err
	}
	var kernelID string
	if def.kernel {
		kin, err := c.kernelInputs(ctx)
		if err != nil {
			return imageInputs{}, err
		}
		kernelID, _ = hashInputs(kin)
	}
	ag, err := c.agent(ctx, p)
	if err != nil {
		return imageInputs{}, err
	}
	id, each := hashInputs(map[string][]byte{
		"recipe":   []byte(imageRecipe),
		"flavor":   []byte(flavor),
		"layer":    []byte(layerID),
		"kernel":   []byte(kernelID),
		"agent":    []byte(ag.info.SHA256),
		"headroom": []byte(strconv.FormatInt(c.headroom, 10)),
	})
	return imageInputs{id: id, each: each, layer: layerID, kernel: kernelID, agent: ag}, nil
}

// Lookup returns the cached image of flavor for the current inputs without
// building anything. The image is verified first (see verify.go); errors
// wrap ErrNotBuilt or ErrCorrupt. Computing the id needs the agent binary,
// so without WithAgentBinary this runs a (cached) go build.
func (c *Cache) Lookup(ctx context.Context, flavor string) (Image, error) {
	in, err := c.imageInputs(ctx, flavor, NopProgress{})
	if err != nil {
		return Image{}, err
	}
	return c.lookupImage(flavor, in.id, false)
}

func (c *Cache) lookupImage(flavor, id string, full bool) (Image, error) {
	dir := filepath.Join(c.root, imageDirName(flavor, id))
	if _, err := os.Stat(dir); err != nil {
		return Image{}, fmt.Errorf("%s image %s: %w", flavor, short(id), ErrNotBuilt)
	}
	img, err := c.imageFromDir(dir)
	if err != nil {
		return Image{}, fmt.Errorf("%s image %s: %w: %v", flavor, short(id), ErrCorrupt, err)
	}
	if img.ID != id || img.Flavor != flavor {
		return Image{}, fmt.Errorf("%s image %s: %w: manifest names %s %s", flavor, short(id), ErrCorrupt, img.Flavor, short(img.ID))
	}
	if _, err := verifyFiles(dir, img.Manifest.Files, full); err != nil {
		return Image{}, fmt.Errorf("%s image %s: %w", flavor, short(id), err)
	}
	if img.Manifest.KernelID != "" {
		k, err := c.lookupKernelID(img.Manifest.KernelID, full)
		if err != nil {
			return Image{}, fmt.Errorf("%s image %s: %w", flavor, short(id), err)
		}
		img.Kernel = k
	}
	return img, nil
}

func (c *Cache) imageFromDir(dir string) (Image, error) {
	m, err := readManifest(dir)
	if err != nil {
		return Image{}, err
	}
	if m.Kind != "rootfs" {
		return Image{}, fmt.Errorf("%s: manifest kind %q", dir, m.Kind)
	}
	return Image{ID: m.ID, Flavor: m.Flavor, Dir: dir, Rootfs: filepath.Join(dir, rootfsFile), Cmdline: m.Cmdline, Manifest: m}, nil
}

// Ensure returns the image of flavor for the current inputs, building
// whatever is missing: the kernel, the root trees of the flavor and its
// parents, and the image. A cached image that fails verification is
// reported (log and progress), removed and rebuilt; it is never returned.
// Concurrent callers (goroutines or processes) build each artifact once.
func (c *Cache) Ensure(ctx context.Context, flavor string, p Progress) (Image, error) {
	if p == nil {
		p = NopProgress{}
	}
	art := "image " + flavor
	in, err := c.imageInputs(ctx, flavor, p)
	if err != nil {
		return Image{}, err
	}
	name := imageDirName(flavor, in.id)
	img, err := c.lookupImage(flavor, in.id, false)
	if err == nil {
		p.Report(StepEvent{Artifact: art, State: StepCached, Note: fmt.Sprintf("%s %s", name, humanBytes(img.Manifest.ImageBytes))})
		return img, nil
	}
	if !errors.Is(err, ErrNotBuilt) {
		c.log.Warn("cached image unusable, rebuilding", "image", name, "err", err)
		p.Report(StepEvent{Artifact: art, Step: "verify", State: StepFailed, Err: err})
	}
	// Root tree first: while it builds, another process (or `hangar image
	// build --all`, which starts the kernel in parallel) may finish the
	// kernel, which is then only a lookup here.
	lay, err := c.ensureLayer(ctx, flavor, p)
	if err != nil {
		return Image{}, err
	}
	var kernel Kernel
	if in.kernel != "" {
		if kernel, err = c.EnsureKernel(ctx, p); err != nil {
			return Image{}, err
		}
		if kernel.ID != in.kernel {
			return Image{}, fmt.Errorf("kernel inputs changed during the build; run again")
		}
	}
	lock, err := lockFile(ctx, c.lockPath(name), c.log)
	if err != nil {
		return Image{}, err
	}
	defer lock.unlock()
	if img, err := c.lookupImage(flavor, in.id, false); err == nil {
		p.Report(StepEvent{Artifact: art, State: StepCached, Note: name})
		return img, nil
	}
	if err := c.quarantine(name, "corrupt"); err != nil {
		return Image{}, err
	}
	if err := c.buildImage(ctx, flavor, in, lay, kernel, p); err != nil {
		return Image{}, err
	}
	return c.lookupImage(flavor, in.id, false)
}

func (c *Cache) buildImage(ctx context.Context, flavor string, in imageInputs, lay layer, kernel Kernel, p Progress) error {
	start := time.Now()
	name := imageDirName(flavor, in.id)
	b, err := newBuild(c.logDir(), "image "+flavor, p)
	if err != nil {
		return err
	}
	defer b.close()
	tmp, err := c.tempDir(name)
	if err != nil {
		return err
	}
	defer removeTree(tmp)
	img := filepath.Join(tmp, rootfsFile)

	var size int64
	if err := b.step("mkfs.ext4", func(*stepCtx) error {
		// ext4 metadata (inode tables, bitmaps, directories) takes roughly
		// 10% on top of file data for these trees.
		content := lay.manifest.ContentBytes + in.agent.info.Size
		size = roundUp(content+content/10+c.headroom, 4<<20)
		inodes := lay.manifest.Files + lay.manifest.Files/4 + 16384
		f, err := os.Create(img)
		if err != nil {
			return err
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			return err
		}
		f.Close()
		// No journal: the image is attached read-only and shared by all VMs
		// (their writes go to a per-VM overlay disk), so a journal is 64 MB
		// of nothing. The filesystem UUID is derived from the image id so a
		// guest can tell which image it booted.
		cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0",
			"-O", "^has_journal", "-N", strconv.FormatInt(inodes, 10),
			"-L", "hangar-"+flavor, "-U", uuidFromID(in.id),
			"-E", "root_owner=0:0", "-d", lay.root, img)
		return b.run(ctx, cmd, nil)
	}); err != nil {
		return err
	}
	if err := b.step("add agent", func(*stepCtx) error {
		return c.injectAgent(ctx, b, img, in.agent, tmp)
	}); err != nil {
		return err
	}
	if err := b.step("e2fsck", func(*stepCtx) error {
		return b.run(ctx, exec.CommandContext(ctx, "e2fsck", "-f", "-n", img), nil)
	}); err != nil {
		return err
	}
	var sum FileSum
	if err := b.step("sha256", func(s *stepCtx) error {
		var err error
		sum, err = hashFileProgress(ctx, img, s)
		return err
	}); err != nil {
		return err
	}
	fp, err := statFingerprint(img)
	if err != nil {
		return err
	}
	agent := in.agent.info
	m := Manifest{
		Schema: manifestSchema, Kind: "rootfs", ID: in.id, Flavor: flavor, Inputs: in.each,
		CreatedAt: time.Now().UTC(), Files: map[string]FileSum{rootfsFile: sum},
		KernelID: kernel.ID, KernelVersion: kernel.Version, LayerID: lay.id,
		Packages: lay.manifest.Packages, NPM: lay.manifest.NPM, Agent: &agent,
		ContentBytes: lay.manifest.ContentBytes + agent.Size, ImageBytes: size, LogPath: b.logPath,
	}
	if kernel.ID != "" {
		m.Cmdline = BaseCmdline
	}
	// Layer steps are part of what this image cost when they ran in this
	// build; record them too so `image ls` shows a cold build's true time.
	m.StepSeconds = b.steps
	m.BuildSeconds = time.Since(start).Seconds()
	return b.step("install", func(*stepCtx) error {
		if err := writeStamp(tmp, map[string]fingerprint{rootfsFile: fp}); err != nil {
			return err
		}
		if err := writeManifest(tmp, m); err != nil {
			return err
		}
		return c.install(tmp, name)
	})
}

// injectAgent writes the agent into the finished file system with debugfs
// (no mount needed), then reads it back and compares hashes: debugfs
// reports most failures only as text, not through its exit status.
func (c *Cache) injectAgent(ctx context.Context, b *build, img string, ag agentBin, tmp string) error {
	dir, base := filepath.Split(AgentPath)
	script := strings.Join([]string{
		"cd " + dir,
		"write " + ag.path + " " + base,
		"sif " + AgentPath + " mode 0100755",
		"sif " + AgentPath + " uid 0",
		"sif " + AgentPath + " gid 0",
		// The agent binary is also the dev provider's CLI when called
		// by this name (see cmd/hangar-agent).
		"symlink " + DevCLIPath + " " + AgentPath,
		"",
	}, "\n")
	cmdFile := filepath.Join(tmp, "debugfs.cmd")
	if err := os.WriteFile(cmdFile, []byte(script), 0o644); err != nil {
		return err
	}
	if err := b.run(ctx, exec.CommandContext(ctx, "debugfs", "-w", "-f", cmdFile, img), nil); err != nil {
		return err
	}
	back := filepath.Join(tmp, "agent.readback")
	if err := b.run(ctx, exec.CommandContext(ctx, "debugfs", "-R", "dump "+AgentPath+" "+back, img), nil); err != nil {
		return err
	}
	defer os.Remove(back)
	got, err := hashFile(back)
	if err != nil {
		return fmt.Errorf("agent not readable in the image: %w", err)
	}
	if got.SHA256 != ag.info.SHA256 {
		return fmt.Errorf("agent in the image has sha256 %s, want %s", short(got.SHA256), short(ag.info.SHA256))
	}
	out, err := exec.CommandContext(ctx, "debugfs", "-R", "stat "+AgentPath, img).CombinedOutput()
	if err != nil {
		return fmt.Errorf("debugfs stat agent: %w", err)
	}
	if !strings.Contains(string(out), "Mode:  0755") && !strings.Contains(string(out), "Mode: 0755") {
		b.logf("%s", out)
		return fmt.Errorf("agent in the image is not mode 0755")
	}
	return nil
}

func hashFileProgress(ctx context.Context, path string, s *stepCtx) (FileSum, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileSum{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return FileSum{}, err
	}
	h := sha256.New()
	buf := make([]byte, 4<<20)
	var n int64
	last := time.Time{}
	for {
		if ctx.Err() != nil {
			return FileSum{}, ctx.Err()
		}
		k, err := f.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if time.Since(last) > 250*time.Millisecond {
			s.count(n, st.Size(), "bytes")
			last = time.Now()
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return FileSum{}, fmt.Errorf("hash %s: %w", path, err)
		}
	}
	s.count(n, st.Size(), "bytes")
	return FileSum{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// uuidFromID formats the first 16 bytes of an id as a UUID.
func uuidFromID(id string) string {
	if len(id) < 32 {
		id += strings.Repeat("0", 32-len(id))
	}
	return id[0:8] + "-" + id[8:12] + "-" + id[12:16] + "-" + id[16:20] + "-" + id[20:32]
}

// Entry is one artifact in the cache, for listings.
type Entry struct {
	Kind          string            `json:"kind"` // "kernel", "rootfs" or "layer"
	ID            string            `json:"id"`
	Flavor        string            `json:"flavor,omitempty"`
	Dir           string            `json:"dir"`
	SizeBytes     int64             `json:"size_bytes"` // apparent size of the artifact's main file(s)
	DiskBytes     int64             `json:"disk_bytes"` // allocated on disk
	CreatedAt     time.Time         `json:"created_at"`
	KernelVersion string            `json:"kernel_version,omitempty"`
	KernelID      string            `json:"kernel_id,omitempty"`
	BuildSeconds  float64           `json:"build_seconds"`
	NPM           map[string]string `json:"npm,omitempty"`
}

// List returns every kernel, image and root tree in the cache, newest first.
// It reads manifests only; it does not verify.
func (c *Cache) List(ctx context.Context) ([]Entry, error) {
	var out []Entry
	dirs, err := os.ReadDir(c.root)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list image cache: %w", err)
	}
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		dir := filepath.Join(c.root, d.Name())
		m, err := readManifest(dir)
		if err != nil {
			continue // not an artifact dir (logs, tmp, ...) or unreadable
		}
		e := Entry{Kind: m.Kind, ID: m.ID, Flavor: m.Flavor, Dir: dir, CreatedAt: m.CreatedAt,
			KernelVersion: m.KernelVersion, KernelID: m.KernelID, BuildSeconds: m.BuildSeconds, NPM: m.NPM}
		for f := range m.Files {
			sz, disk := fileSizes(filepath.Join(dir, f))
			e.SizeBytes += sz
			e.DiskBytes += disk
		}
		out = append(out, e)
	}
	lays, _ := filepath.Glob(filepath.Join(c.root, "layers", "*"))
	for _, dir := range lays {
		m, err := readLayerManifest(dir)
		if err != nil {
			continue
		}
		out = append(out, Entry{Kind: "layer", ID: m.ID, Flavor: m.Flavor, Dir: dir, CreatedAt: m.CreatedAt,
			SizeBytes: m.ContentBytes, DiskBytes: m.ContentBytes, BuildSeconds: m.BuildSeconds, NPM: m.NPM})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, nil
}

func fileSizes(p string) (size, disk int64) {
	st, err := os.Stat(p)
	if err != nil {
		return 0, 0
	}
	size = st.Size()
	if fp, ok := statBlocks(p); ok {
		disk = fp
	}
	return size, disk
}

// Remove deletes cached artifacts matching ref: an id prefix (at least 4
// hex digits), a directory name such as "cli-0123abcd4567", a flavor name
// (all its images) or "kernel" (all kernels). It returns the removed
// directories. Running VMs keep their open image files; only new boots are
// affected.
func (c *Cache) Remove(ctx context.Context, ref string) ([]string, error) {
	entries, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range entries {
		base := filepath.Base(e.Dir)
		match := base == ref ||
			(len(ref) >= 4 && strings.HasPrefix(e.ID, ref)) ||
			(e.Kind == "rootfs" && e.Flavor == ref) ||
			(e.Kind == "kernel" && ref == "kernel")
		if !match {
			continue
		}
		rel, _ := filepath.Rel(c.root, e.Dir)
		lockName := base // kernel-<id12>, <flavor>-<id12>
		if e.Kind == "layer" {
			lockName = "layer-" + base
		}
		lock, err := lockFile(ctx, c.lockPath(lockName), c.log)
		if err != nil {
			return removed, err
		}
		err = c.quarantine(rel, "removed by request")
		lock.unlock()
		if err != nil {
			return removed, err
		}
		removed = append(removed, e.Dir)
	}
	if len(removed) == 0 {
		return nil, fmt.Errorf("no cached image matches %q", ref)
	}
	return removed, nil
}

// GCOptions says what GC must keep besides the current artifacts.
type GCOptions struct {
	// InUse reports ids of images or kernels that running VMs use.
	InUse func(id string) bool
	// DryRun lists what would be removed without removing it.
	DryRun bool
}

// GC removes what the current inputs no longer produce: kernels other than
// the current one (unless a kept image uses them), root trees whose inputs
// changed, all but the newest image of each flavor, interrupted builds,
// agent binaries no image uses, and logs beyond the newest 50. It returns
// the removed paths.
func (c *Cache) GC(ctx context.Context, opts GCOptions) ([]string, error) {
	inUse := opts.InUse
	if inUse == nil {
		inUse = func(string) bool { return false }
	}
	var removed []string
	rm := func(rel string) error {
		removed = append(removed, filepath.Join(c.root, rel))
		if opts.DryRun {
			return nil
		}
		return c.quarantine(rel, "gc")
	}
	entries, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	currentKernel := ""
	if kin, err := c.kernelInputs(ctx); err == nil {
		currentKernel, _ = hashInputs(kin)
	}
	currentLayer := map[string]string{}
	for f := range c.flavors {
		if id, _, err := c.layerID(f); err == nil {
			currentLayer[f] = id
		}
	}
	keepKernel := map[string]bool{currentKernel: true}
	keepAgent := map[string]bool{}
	newest := map[string]bool{}
	// entries are newest first.
	for _, e := range entries {
		if e.Kind != "rootfs" {
			continue
		}
		rel, _ := filepath.Rel(c.root, e.Dir)
		if !newest[e.Flavor] || inUse(e.ID) {
			newest[e.Flavor] = true
			keepKernel[e.KernelID] = true
			if m, err := readManifest(e.Dir); err == nil && m.Agent != nil {
				keepAgent[short(m.Agent.SHA256)] = true
			}
			continue
		}
		if err := rm(rel); err != nil {
			return removed, err
		}
	}
	for _, e := range entries {
		rel, _ := filepath.Rel(c.root, e.Dir)
		switch e.Kind {
		case "kernel":
			if !keepKernel[e.ID] && !inUse(e.ID) {
				if err := rm(rel); err != nil {
					return removed, err
				}
			}
		case "layer":
			if currentLayer[e.Flavor] != e.ID {
				if err := rm(rel); err != nil {
					return removed, err
				}
			}
		}
	}
	agents, _ := filepath.Glob(filepath.Join(c.root, "agent", "hangar-agent-*"))
	for _, a := range agents {
		if !keepAgent[strings.TrimPrefix(filepath.Base(a), "hangar-agent-")] {
			removed = append(removed, a)
			if !opts.DryRun {
				_ = os.Remove(a)
			}
		}
	}
	// Interrupted builds: their lock is free (the builder died).
	tmps, _ := filepath.Glob(filepath.Join(c.root, "tmp", "*"))
	for _, t := range tmps {
		name := filepath.Base(t)
		if i := strings.LastIndexByte(name, '.'); i > 0 && !strings.HasPrefix(name, "corrupt-") {
			name = name[:i]
		}
		l, ok, err := tryLockFile(c.lockPath(name))
		if err != nil || !ok {
			continue
		}
		removed = append(removed, t)
		if !opts.DryRun {
			err = removeTree(t)
		}
		l.unlock()
		if err != nil {
			return removed, err
		}
	}
	logs, _ := filepath.Glob(filepath.Join(c.logDir(), "*.log"))
	sort.Strings(logs) // names end in a UTC timestamp: oldest first per artifact
	if len(logs) > 50 {
		sort.Slice(logs, func(i, j int) bool {
			si, _ := os.Stat(logs[i])
			sj, _ := os.Stat(logs[j])
			return si != nil && sj != nil && si.ModTime().Before(sj.ModTime())
		})
		for _, l := range logs[:len(logs)-50] {
			removed = append(removed, l)
			if !opts.DryRun {
				_ = os.Remove(l)
			}
		}
	}
	return removed, nil
}

// Verify checks the cached image of flavor (and its kernel) against its
// manifest; full re-hashes every file regardless of the fast-path stamp.
func (c *Cache) Verify(ctx context.Context, flavor string, full bool) (Image, error) {
	in, err := c.imageInputs(ctx, flavor, NopProgress{})
	if err != nil {
		return Image{}, err
	}
	return c.lookupImage(flavor, in.id, full)
}
