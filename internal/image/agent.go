package image

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/hangar-vm/hangar/internal/hostenv"
)

const modulePath = "github.com/hangar-vm/hangar"

// agentBin is the agent binary going into images.
type agentBin struct {
	path string // on the host
	info AgentInfo
}

// CheckStatic returns an error unless path is an x86-64 ELF executable with
// no program interpreter and no dynamic section: the agent runs as PID 1
// before anything else exists, and must not depend on the image's libc.
func CheckStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("agent %s is not an ELF file: %w", path, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
		return fmt.Errorf("agent %s is %v/%v, want x86-64", path, f.Class, f.Machine)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("agent %s is ELF type %v, not an executable", path, f.Type)
	}
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP:
			return fmt.Errorf("agent %s is dynamically linked (has PT_INTERP); build it with CGO_ENABLED=0", path)
		case elf.PT_DYNAMIC:
			return fmt.Errorf("agent %s has a dynamic section; build it with CGO_ENABLED=0", path)
		}
	}
	if s := f.Section(".interp"); s != nil {
		return fmt.Errorf("agent %s has an .interp section", path)
	}
	return nil
}

// findSourceDir walks up from the working directory to the hangar module
// root.
func findSourceDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(b), []byte("module "+modulePath+"\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no hangar source tree above the working directory: run from the repository or pass --agent <static hangar-agent>")
		}
		dir = parent
	}
}

// agent returns the agent binary for this cache's builds, resolved once per
// Cache: the configured prebuilt one; else one freshly built from the source
// tree (a no-op rebuild takes about a second thanks to Go's build cache);
// else, outside a source tree, the hangar-agent next to the running
// executable.
func (c *Cache) agent(ctx context.Context, p Progress) (agentBin, error) {
	c.agentMu.Lock()
	defer c.agentMu.Unlock()
	if c.agentMemo != nil && fileExists(c.agentMemo.path) {
		return *c.agentMemo, nil
	}
	a, err := c.resolveAgent(ctx)
	if err != nil {
		return agentBin{}, err
	}
	c.agentMemo = &a
	return a, nil
}

func (c *Cache) resolveAgent(ctx context.Context) (agentBin, error) {
	if c.agentBinary != "" {
		return c.describeAgent(ctx, c.agentBinary, "")
	}
	src := c.sourceDir
	if src == "" {
		var err error
		if src, err = findSourceDir(); err != nil {
			// Installed hangar: the agent ships beside the binary.
			if exe, xerr := os.Executable(); xerr == nil {
				if p := filepath.Join(filepath.Dir(exe), "hangar-agent"); fileExists(p) {
					return c.describeAgent(ctx, p, "")
				}
			}
			return agentBin{}, err
		}
	}
	goBin, err := goTool()
	if err != nil {
		return agentBin{}, fmt.Errorf("build agent: %w (or pass --agent)", err)
	}
	dir := filepath.Join(c.root, "agent")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return agentBin{}, fmt.Errorf("create agent dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".build-*")
	if err != nil {
		return agentBin{}, fmt.Errorf("create agent temp file: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	// -buildvcs=false: VCS stamping would change the binary (and with it
	// every image id) on any commit or uncommitted edit anywhere in the
	// repository, not just in the agent.
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", tmp.Name(), "./cmd/hangar-agent")
	cmd.Dir = src
	cmd.Env = hostenv.Scrubbed("CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return agentBin{}, &BuildError{Artifact: "agent", Step: "go build ./cmd/hangar-agent", Err: err,
			Tail: lastN(strings.Split(strings.TrimSpace(string(out)), "\n"), tailLines)}
	}
	a, err := c.describeAgent(ctx, tmp.Name(), src)
	if err != nil {
		return agentBin{}, err
	}
	final := filepath.Join(dir, "hangar-agent-"+short(a.info.SHA256))
	if fileExists(final) {
		if sum, err := hashFile(final); err == nil && sum.SHA256 == a.info.SHA256 {
			a.path = final
			return a, nil
		}
	}
	if err := os.Chmod(tmp.Name(), 0o755); err != nil {
		return agentBin{}, err
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return agentBin{}, fmt.Errorf("keep agent binary: %w", err)
	}
	a.path = final
	return a, nil
}

func (c *Cache) describeAgent(ctx context.Context, path, src string) (agentBin, error) {
	if err := CheckStatic(path); err != nil {
		return agentBin{}, err
	}
	sum, err := hashFile(path)
	if err != nil {
		return agentBin{}, err
	}
	info := AgentInfo{Path: AgentPath, SHA256: sum.SHA256, Size: sum.Size}
	if bi, err := buildinfo.ReadFile(path); err == nil {
		info.GoVersion = bi.GoVersion
	}
	if src != "" {
		if out, err := exec.CommandContext(ctx, "git", "-C", src, "rev-parse", "--short=12", "HEAD").Output(); err == nil {
			info.SourceRevision = strings.TrimSpace(string(out))
			st, err := exec.CommandContext(ctx, "git", "-C", src, "status", "--porcelain", "--", "cmd/hangar-agent", "internal/agent").Output()
			if err == nil && len(bytes.TrimSpace(st)) > 0 {
				info.SourceRevision += "+dirty"
			}
		}
	}
	return agentBin{path: path, info: info}, nil
}

func lastN(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
