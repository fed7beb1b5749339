package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hangar-vm/hangar/images"
)

// Recipe versions: bump one when the Go code of that build changes what it
// produces, so caches built by older code are not reused.
const (
	kernelRecipe = "kernel-v1"
	layerRecipe  = "layer-v1"
	imageRecipe  = "image-v2" // v2: hangar-devcli symlink to the agent
)

// Flavors, in build order.
const (
	FlavorBase    = "base"
	FlavorCLI     = "cli"
	FlavorBrowser = "browser"
)

// Flavors lists the flavors `hangar image build --all` builds.
var Flavors = []string{FlavorBase, FlavorCLI, FlavorBrowser}

// GuestUser is the unprivileged account of cli and browser images.
const (
	GuestUser = "hangar"
	GuestUID  = 1000
	GuestHome = "/home/hangar"
)

// AgentPath is where the agent lives in every image; the kernel command line
// makes it PID 1.
const AgentPath = "/usr/sbin/hangar-agent"

// DevCLIPath is the dev provider's CLI in every image: a symlink to the
// agent, which runs the CLI when invoked by that name.
const DevCLIPath = "/usr/local/bin/hangar-devcli"

// ServicesDir is where the agent reads service declarations.
const ServicesDir = "/etc/hangar/services.d"

// BaseCmdline is the kernel command line every image expects. Drivers append
// their own parts (Firecracker: "reboot=k pci=off" and its virtio_mmio.device
// entries are added by Firecracker itself).
const BaseCmdline = "console=ttyS0 root=/dev/vda ro rootfstype=ext4 init=" + AgentPath + " panic=1"

// flavorDef is how one flavor's root tree is made. Layers chain: a flavor
// starts from a copy of its parent's cached tree.
type flavorDef struct {
	name   string
	parent string // "" = built from nothing (debootstrap)
	kernel bool   // booted with the hangar kernel (all real flavors)
	// inputs returns the recipe data hashed into the layer key, by name.
	inputs func(c *Cache) (map[string][]byte, error)
	// build fills root (already a copy of the parent's tree, or empty).
	build func(ctx context.Context, c *Cache, b *build, root string) error
}

func embedded(name string) ([]byte, error) {
	b, err := fs.ReadFile(images.FS, name)
	if err != nil {
		return nil, fmt.Errorf("read recipe %s: %w", name, err)
	}
	return b, nil
}

// embeddedTree returns every file under dir of the recipe FS, keyed by path.
func embeddedTree(dir string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := fs.WalkDir(images.FS, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(images.FS, p)
		if err != nil {
			return err
		}
		out[p] = b
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read recipe tree %s: %w", dir, err)
	}
	return out, nil
}

// parsePackages reads a package list: one name per line, # comments.
func parsePackages(data []byte) []string {
	var pkgs []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		l := sc.Text()
		if i := strings.IndexByte(l, '#'); i >= 0 {
			l = l[:i]
		}
		if l = strings.TrimSpace(l); l != "" {
			pkgs = append(pkgs, l)
		}
	}
	return pkgs
}

// npmPin is one pinned npm package.
type npmPin struct{ Name, Version string }

func parsePins(data []byte) ([]npmPin, error) {
	var pins []npmPin
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		if len(f) != 2 {
			return nil, fmt.Errorf("npm pins line %d: want \"<package> <version>\", got %q", n, l)
		}
		pins = append(pins, npmPin{Name: f[0], Version: f[1]})
	}
	return pins, nil
}

// hashInputs hashes named inputs in a stable order. The returned map gives
// each input's own hash for the manifest.
func hashInputs(in map[string][]byte) (id string, each map[string]string) {
	names := make([]string, 0, len(in))
	for n := range in {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	each = make(map[string]string, len(in))
	for _, n := range names {
		s := sha256.Sum256(in[n])
		each[n] = hex.EncodeToString(s[:])
		fmt.Fprintf(h, "%s\x00%x\n", n, s)
	}
	return hex.EncodeToString(h.Sum(nil)), each
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// aptSources is the Debian mirror configuration used inside images.
type aptSources struct {
	Mirror   string // e.g. http://deb.debian.org/debian
	Security string // e.g. http://deb.debian.org/debian-security
}

// hostAptSources finds the Debian mirrors this host's apt uses, so image
// builds go through the same (reachable) mirror. It reads both one-line
// sources.list and deb822 .sources files.
func hostAptSources(suite string) aptSources {
	files := []string{"/etc/apt/sources.list"}
	more, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	return parseAptSources(append(files, more...), suite)
}

// parseAptSources reads the given apt source files (one-line or deb822).
func parseAptSources(files []string, suite string) aptSources {
	src := aptSources{}
	consider := func(uri string, suites []string) {
		for _, s := range suites {
			switch {
			case s == suite && src.Mirror == "":
				src.Mirror = strings.TrimRight(uri, "/")
			case s == suite+"-security" && src.Security == "":
				src.Security = strings.TrimRight(uri, "/")
			}
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if strings.HasSuffix(f, ".sources") {
			for _, stanza := range strings.Split(string(b), "\n\n") {
				var uris, suites []string
				isDeb := false
				for _, l := range strings.Split(stanza, "\n") {
					k, v, ok := strings.Cut(l, ":")
					if !ok || strings.HasPrefix(l, "#") {
						continue
					}
					switch strings.TrimSpace(k) {
					case "Types":
						isDeb = strings.Contains(" "+v+" ", " deb ")
					case "URIs":
						uris = strings.Fields(v)
					case "Suites":
						suites = strings.Fields(v)
					}
				}
				if isDeb {
					for _, u := range uris {
						consider(u, suites)
					}
				}
			}
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) < 3 || f[0] != "deb" {
				continue
			}
			i := 1
			if strings.HasPrefix(f[i], "[") { // options like [arch=amd64]
				for i < len(f) && !strings.HasSuffix(f[i], "]") {
					i++
				}
				i++
			}
			if i+1 < len(f) {
				consider(f[i], []string{f[i+1]})
			}
		}
	}
	if src.Mirror == "" {
		src.Mirror = "http://deb.debian.org/debian"
	}
	if src.Security == "" {
		src.Security = strings.TrimSuffix(src.Mirror, "/debian") + "/debian-security"
	}
	return src
}

// recipePath joins embedded recipe paths.
func recipePath(elem ...string) string { return path.Join(elem...) }
