package image

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a Progress that keeps every event.
type recorder struct {
	mu     sync.Mutex // guards events
	events []StepEvent
}

func (r *recorder) Report(ev StepEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) has(artifact, step string, state StepState) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e.Artifact == artifact && e.Step == step && e.State == state {
			return true
		}
	}
	return false
}

func needImageTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if ch := checkCmd(tool, "e2fsprogs", "test"); !ch.OK {
			skipOrFail(t, tool+" not installed: apt-get install e2fsprogs")
		}
	}
	if _, err := goTool(); err != nil {
		skipOrFail(t, "go toolchain not found: the agent is built from source")
	}
	if _, err := findSourceDir(); err != nil {
		skipOrFail(t, "not inside the hangar source tree: "+err.Error())
	}
}

// tinyCache is a throwaway cache with a flavor whose root tree is a handful
// of files, so the real image path (agent build, mkfs.ext4 -d, debugfs,
// e2fsck, sha256, manifest, stamp, locks) runs in seconds without touching
// the shared cache.
func tinyCache(t *testing.T) *Cache {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c := NewCache(t.TempDir(), log, WithHeadroom(8<<20))
	c.flavors = map[string]*flavorDef{"tiny": {
		name: "tiny",
		inputs: func(*Cache) (map[string][]byte, error) {
			return map[string][]byte{"marker": []byte("tiny-v1")}, nil
		},
		build: func(ctx context.Context, c *Cache, b *build, root string) error {
			return b.step("write files", func(*stepCtx) error {
				for _, d := range []string{"usr/sbin", "etc/hangar/services.d", "proc", "sys", "dev", "tmp"} {
					if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
						return err
					}
				}
				return os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("tiny\n"), 0o644)
			})
		},
	}}
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func debugfsDump(t *testing.T, img, path string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(path))
	if b, err := exec.Command("debugfs", "-R", "dump "+path+" "+out, img).CombinedOutput(); err != nil {
		t.Fatalf("debugfs dump %s: %v\n%s", path, err, b)
	}
	if st, err := os.Stat(out); err != nil || st.Size() == 0 {
		t.Fatalf("%s not found in %s", path, img)
	}
	return out
}

func TestEnsureBuildsHitsAndRebuildsCorruptImage(t *testing.T) {
	needImageTools(t)
	ctx := context.Background()
	c := tinyCache(t)

	rec := &recorder{}
	img, err := c.Ensure(ctx, "tiny", rec)
	if err != nil {
		t.Fatal(err)
	}
	if !rec.has("image tiny", "mkfs.ext4", StepDone) || !rec.has("layer tiny", "write files", StepDone) {
		t.Fatal("first Ensure did not build the layer and the image")
	}
	sum, err := hashFile(img.Rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if sum != img.Manifest.Files[rootfsFile] {
		t.Fatalf("manifest sum %+v, file %+v", img.Manifest.Files[rootfsFile], sum)
	}
	// The agent is in the image, identical to the manifest's, and static.
	agent := debugfsDump(t, img.Rootfs, AgentPath)
	if got, _ := hashFile(agent); got.SHA256 != img.Manifest.Agent.SHA256 {
		t.Fatalf("agent in image %s, manifest %s", got.SHA256, img.Manifest.Agent.SHA256)
	}
	if err := CheckStatic(agent); err != nil {
		t.Fatal(err)
	}

	// Unchanged inputs: a cache hit, fast, same artifact.
	rec = &recorder{}
	start := time.Now()
	again, err := c.Ensure(ctx, "tiny", rec)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("cache hit took %s", el)
	}
	if again.ID != img.ID || !again.Manifest.CreatedAt.Equal(img.Manifest.CreatedAt) || !rec.has("image tiny", "", StepCached) {
		t.Fatal("second Ensure rebuilt instead of hitting the cache")
	}

	// Corrupt the image in place: Lookup must refuse it and Ensure must
	// rebuild it rather than hand it out.
	f, err := os.OpenFile(img.Rootfs, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("corrupted!"), 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := c.Lookup(ctx, "tiny"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Lookup of corrupted image: %v, want ErrCorrupt", err)
	}
	rec = &recorder{}
	rebuilt, err := c.Ensure(ctx, "tiny", rec)
	if err != nil {
		t.Fatal(err)
	}
	if !rec.has("image tiny", "verify", StepFailed) {
		t.Error("corruption was not reported through progress")
	}
	if !rec.has("image tiny", "mkfs.ext4", StepDone) || !rebuilt.Manifest.CreatedAt.After(img.Manifest.CreatedAt) {
		t.Fatal("corrupted image was not rebuilt")
	}
	if rec.has("layer tiny", "write files", StepStarted) {
		t.Error("rebuilding the image rebuilt its (intact) root tree too")
	}
	if _, err := c.Verify(ctx, "tiny", true); err != nil {
		t.Fatalf("rebuilt image fails full verification: %v", err)
	}

	// Truncation is caught by the size check alone.
	if err := os.Truncate(rebuilt.Rootfs, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lookup(ctx, "tiny"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Lookup of truncated image: %v, want ErrCorrupt", err)
	}
}

func TestConcurrentEnsureBuildsOnce(t *testing.T) {
	needImageTools(t)
	ctx := context.Background()
	c := tinyCache(t)
	// Build the agent once up front so both builders race on the image.
	if _, err := c.agent(ctx, NopProgress{}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	ids := make([]string, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			img, err := c.Ensure(ctx, "tiny", nil)
			ids[i], errs[i] = img.ID, err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if ids[0] != ids[1] {
		t.Fatalf("two builders got %s and %s", ids[0], ids[1])
	}
	logs, _ := filepath.Glob(filepath.Join(c.logDir(), "image-tiny-*.log"))
	lays, _ := filepath.Glob(filepath.Join(c.logDir(), "layer-tiny-*.log"))
	if len(logs) != 1 || len(lays) != 1 {
		t.Fatalf("image built %d times, layer %d times; want once each", len(logs), len(lays))
	}
	tmp, _ := filepath.Glob(filepath.Join(c.root, "tmp", "*"))
	if len(tmp) != 0 {
		t.Errorf("build left temp dirs: %v", tmp)
	}
}

func TestFailedStepNamesStepTailAndLog(t *testing.T) {
	c := NewCache(t.TempDir(), nil)
	b, err := newBuild(c.logDir(), "image x", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	err = b.step("mkfs.ext4", func(*stepCtx) error {
		return b.run(context.Background(), exec.Command("/bin/sh", "-c", "for i in $(seq 1 40); do echo line $i; done; echo boom >&2; exit 3"), nil)
	})
	var be *BuildError
	if !errors.As(err, &be) {
		t.Fatalf("got %v, want *BuildError", err)
	}
	msg := err.Error()
	for _, want := range []string{`step "mkfs.ext4" failed`, "line 40", "boom", "full build log: " + b.logPath, "exit status 3"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "line 1\n") {
		t.Error("error carries the whole output, not its tail")
	}
	data, _ := os.ReadFile(b.logPath)
	if !strings.Contains(string(data), "line 1\n") {
		t.Error("full log on disk lacks the first lines")
	}
}

func TestCheckStatic(t *testing.T) {
	goBin, err := goTool()
	if err != nil {
		skipOrFail(t, "go toolchain not found")
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\nfunc main() {}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module x\ngo 1.22\n"), 0o644)
	cmd := exec.Command(goBin, "build", "-o", "static", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := CheckStatic(filepath.Join(dir, "static")); err != nil {
		t.Fatalf("static Go binary rejected: %v", err)
	}
	if err := CheckStatic("/bin/true"); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("/bin/true (dynamic): %v", err)
	}
	if err := CheckStatic(filepath.Join(dir, "main.go")); err == nil {
		t.Fatal("a text file passed as static ELF")
	}
}

func TestGCKeepsNewestAndRemoveByFlavor(t *testing.T) {
	needImageTools(t)
	ctx := context.Background()
	c := tinyCache(t)
	old, err := c.Ensure(ctx, "tiny", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Different headroom = different image id from the same root tree.
	c.headroom = 16 << 20
	cur, err := c.Ensure(ctx, "tiny", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cur.ID == old.ID {
		t.Fatal("headroom change did not change the image id")
	}
	// A leftover of a crashed build, whose lock nobody holds.
	stale := filepath.Join(c.root, "tmp", "tiny-0123456789ab.12345")
	if err := os.MkdirAll(filepath.Join(stale, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	removed, err := c.GC(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(removed, "\n")
	if !strings.Contains(joined, old.Dir) || !strings.Contains(joined, stale) {
		t.Fatalf("GC removed %v; want the older image and the stale build dir", removed)
	}
	if strings.Contains(joined, cur.Dir) {
		t.Fatal("GC removed the newest image")
	}
	if _, err := c.Lookup(ctx, "tiny"); err != nil {
		t.Fatalf("current image gone after GC: %v", err)
	}
	if _, err := os.Stat(old.Dir); !os.IsNotExist(err) {
		t.Fatalf("old image still present: %v", err)
	}
	gone, err := c.Remove(ctx, "tiny")
	if err != nil || len(gone) != 1 || gone[0] != cur.Dir {
		t.Fatalf("Remove(tiny) = %v, %v", gone, err)
	}
	if _, err := c.Lookup(ctx, "tiny"); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("Lookup after Remove: %v", err)
	}
	if _, err := c.Remove(ctx, "nothing-matches"); err == nil {
		t.Fatal("Remove of an unknown ref succeeded")
	}
}
