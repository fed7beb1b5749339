package image

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Check is one host prerequisite and its state.
type Check struct {
	Name string // what is checked, e.g. "debootstrap"
	For  string // what needs it: "kernel build", "rootfs build", "run VMs"
	OK   bool
	Info string // path or detail when OK, the problem otherwise
	Fix  string // how to fix it, e.g. "apt-get install debootstrap"
	Warn bool   // a missing optional part (hangar still works without it)
}

func (ch Check) String() string {
	if ch.OK {
		return fmt.Sprintf("%s: ok (%s)", ch.Name, ch.Info)
	}
	return fmt.Sprintf("%s: missing (%s); fix: %s", ch.Name, ch.Info, ch.Fix)
}

func checkCmd(name, pkg, forWhat string) Check {
	ch := Check{Name: name, For: forWhat, Fix: "apt-get install " + pkg}
	if p, err := exec.LookPath(name); err == nil {
		ch.OK, ch.Info = true, p
	} else if p := "/usr/sbin/" + name; fileExists(p) { // root's PATH may lack sbin
		ch.OK, ch.Info = true, p
	} else if p := "/sbin/" + name; fileExists(p) {
		ch.OK, ch.Info = true, p
	} else {
		ch.Info = "not on PATH"
	}
	return ch
}

func checkFile(name, path, pkg, forWhat string) Check {
	ch := Check{Name: name, For: forWhat, Fix: "apt-get install " + pkg}
	if fileExists(path) {
		ch.OK, ch.Info = true, path
	} else {
		ch.Info = path + " not found"
	}
	return ch
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// KernelToolChecks are the host prerequisites of the kernel build.
func KernelToolChecks(kernelSource string) []Check {
	const w = "kernel build"
	return []Check{
		checkCmd("make", "make", w),
		checkCmd("gcc", "build-essential", w),
		checkCmd("bc", "bc", w),
		checkCmd("flex", "flex", w),
		checkCmd("bison", "bison", w),
		checkCmd("xz", "xz-utils", w),
		checkCmd("perl", "perl", w),
		checkFile("libelf headers", "/usr/include/libelf.h", "libelf-dev", w),
		checkFile("openssl headers", "/usr/include/openssl/ssl.h", "libssl-dev", w),
		checkFile(kernelSourcePackage, kernelSource, kernelSourcePackage, w),
	}
}

// RootfsToolChecks are the host prerequisites of the root filesystem builds.
func RootfsToolChecks() []Check {
	const w = "rootfs build"
	root := Check{Name: "root", For: w, OK: os.Geteuid() == 0, Fix: "run the image build as root (debootstrap and chroot need it)"}
	if root.OK {
		root.Info = "running as uid 0"
	} else {
		root.Info = fmt.Sprintf("running as uid %d", os.Geteuid())
	}
	return []Check{
		root,
		checkCmd("debootstrap", "debootstrap", w),
		checkCmd("mkfs.ext4", "e2fsprogs", w),
		checkCmd("debugfs", "e2fsprogs", w),
		checkCmd("e2fsck", "e2fsprogs", w),
		checkCmd("chroot", "coreutils", w),
		checkCmd("npm", "npm", w+" (cli, browser)"),
		goCheck(),
	}
}

func goCheck() Check {
	ch := Check{Name: "go", For: "agent build", Fix: "install Go 1.26 (https://go.dev/dl) or pass --agent <static hangar-agent binary>"}
	if p, err := goTool(); err == nil {
		ch.OK, ch.Info = true, p
	} else {
		ch.Info = "not on PATH or /usr/local/go/bin"
	}
	return ch
}

func goTool() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if fileExists("/usr/local/go/bin/go") {
		return "/usr/local/go/bin/go", nil
	}
	return "", fmt.Errorf("go toolchain not found")
}

// MissingError lists failed checks with their fixes; nil when all passed.
type MissingError struct{ Checks []Check }

func (e *MissingError) Error() string {
	var parts []string
	for _, ch := range e.Checks {
		parts = append(parts, fmt.Sprintf("%s (%s; fix: %s)", ch.Name, ch.Info, ch.Fix))
	}
	return "host prerequisites missing: " + strings.Join(parts, ", ")
}

func missingError(checks []Check) error {
	var bad []Check
	for _, ch := range checks {
		if !ch.OK && !ch.Warn {
			bad = append(bad, ch)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return &MissingError{Checks: bad}
}

func (c *Cache) checkKernelTools() []Check { return KernelToolChecks(c.kernelSource) }
