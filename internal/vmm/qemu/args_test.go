package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/vmm"
)

func testSpec(t *testing.T) vmm.Spec {
	t.Helper()
	s, err := vmm.Spec{
		ID:         "vm-1",
		RunDir:     "/run/hangar/vm-1",
		KernelPath: "/img/kernel-x/bzImage",
		KernelArgs: "hangar.token=SECRET hangar.upper=/dev/vdb",
		BaseDisk:   "/img/base,1.ext4",
		UpperDisk:  "/data/vm-1/upper.img",
		VCPUs:      2,
		MemoryMiB:  1024,
	}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// argAfter returns the values following each occurrence of flag.
func argAfter(args []string, flag string) []string {
	var out []string
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestArgsTCG(t *testing.T) {
	spec := testSpec(t)
	p, err := vmPaths(spec)
	if err != nil {
		t.Fatal(err)
	}
	a := Args(spec, vmm.AccelTCG, p)
	for _, flag := range []string{"-nodefaults", "-no-user-config", "-nographic", "-no-reboot"} {
		if !slices.Contains(a, flag) {
			t.Errorf("missing %s", flag)
		}
	}
	check := func(flag string, want ...string) {
		t.Helper()
		if got := argAfter(a, flag); !slices.Equal(got, want) {
			t.Errorf("%s = %q, want %q", flag, got, want)
		}
	}
	check("-machine", "pc")
	check("-accel", "tcg,thread=multi")
	check("-cpu", "max")
	check("-sandbox", "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny")
	check("-smp", "2")
	check("-m", "1024")
	check("-kernel", "/img/kernel-x/bzImage")
	check("-append", "console=ttyS0 panic=-1 reboot=t root=/dev/vda ro rootfstype=ext4 init=/usr/sbin/hangar-agent hangar.token=SECRET hangar.upper=/dev/vdb")
	check("-serial", "chardev:con")
	check("-qmp", "unix:/run/hangar/vm-1/qmp.sock,server=on,wait=off")
	check("-drive",
		// QEMU option values escape ',' as ",,".
		"if=none,id=base,file=/img/base,,1.ext4,format=raw,readonly=on",
		"if=none,id=upper,file=/data/vm-1/upper.img,format=raw,discard=unmap")
	check("-chardev",
		"file,id=con,path=/run/hangar/vm-1/console.log,append=on",
		"socket,id=agent,path=/run/hangar/vm-1/agent.sock,server=on,wait=off")
	check("-device",
		"virtio-blk-pci,drive=base,serial=hangar-base",
		"virtio-blk-pci,drive=upper,serial=hangar-upper",
		"virtio-serial-pci,id=vser",
		"virtserialport,bus=vser.0,chardev=agent,name=org.hangar.agent",
		"virtio-rng-pci,rng=rng")
	if slices.Contains(a, "-incoming") || slices.Contains(a, "-initrd") || slices.Contains(a, "-netdev") {
		t.Errorf("unexpected optional flags in %q", a)
	}
}

func TestArgsKVMNetRestoreInitrd(t *testing.T) {
	spec := testSpec(t)
	spec.UpperDisk = ""
	spec.InitrdPath = "/tmp/initrd.cpio"
	spec.Net = &vmm.NetSpec{TapName: "tap0", MAC: "02:00:00:00:00:01", NetnsPath: "/run/netns/hangar-1"}
	spec.RestoreFrom = "/data/snap"
	p, _ := vmPaths(spec)
	a := Args(spec, vmm.AccelKVM, p)
	if got := argAfter(a, "-accel"); !slices.Equal(got, []string{"kvm"}) {
		t.Errorf("-accel %q", got)
	}
	if got := argAfter(a, "-cpu"); !slices.Equal(got, []string{"host,vmx=off,svm=off"}) {
		t.Errorf("-cpu %q", got)
	}
	if got := argAfter(a, "-initrd"); !slices.Equal(got, []string{"/tmp/initrd.cpio"}) {
		t.Errorf("-initrd %q", got)
	}
	if got := argAfter(a, "-netdev"); !slices.Equal(got, []string{"tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=off"}) {
		t.Errorf("-netdev %q", got)
	}
	if !slices.Contains(a, "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01") {
		t.Errorf("no virtio-net device in %q", a)
	}
	// Restore: stopped vCPUs and a deferred incoming migration.
	if got := argAfter(a, "-incoming"); !slices.Equal(got, []string{"defer"}) || !slices.Contains(a, "-S") {
		t.Errorf("restore flags missing in %q", a)
	}
	for _, d := range argAfter(a, "-drive") {
		if strings.Contains(d, "upper") {
			t.Errorf("upper drive without upper disk: %s", d)
		}
	}
}

func TestKernelCmdlineInitrdOnly(t *testing.T) {
	s, err := vmm.Spec{ID: "t", RunDir: "/r", KernelPath: "/k", InitrdPath: "/i", KernelArgs: " x=1 "}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	// No root disk: no root=, no init= (the initramfs's /init runs).
	if got := KernelCmdline(s); got != "console=ttyS0 panic=-1 reboot=t x=1" {
		t.Fatalf("cmdline %q", got)
	}
}

func TestShellQuote(t *testing.T) {
	if got := shellQuote("/a b/it's"); got != `'/a b/it'\''s'` {
		t.Fatalf("quote %s", got)
	}
}

// TestConsoleSurvivesRestart runs the real QEMU binary with the driver's
// own command line (which also shows this QEMU accepts its -cpu and
// -sandbox options: they are parsed before the kernel is loaded) (minus the kernel, which need not exist: QEMU opens its
// chardevs before it loads one and exits then) over a console file that
// holds an earlier boot's lines. Restarting a failed VM must not erase the
// console evidence hangar promises to keep: QEMU's "logappend" applies to
// a chardev's logfile, not to the file backend, which truncates unless
// opened with "append".
func TestConsoleSurvivesRestart(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	dir := t.TempDir()
	spec, err := vmm.Spec{
		ID: "vm-r", RunDir: dir, KernelPath: filepath.Join(dir, "no-such-kernel"), InitrdPath: filepath.Join(dir, "no-initrd"),
		VCPUs: 1, MemoryMiB: 64,
	}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	p, err := vmPaths(spec)
	if err != nil {
		t.Fatal(err)
	}
	const earlier = "earlier boot: kernel panic evidence\n"
	if err := os.WriteFile(p.console, []byte(earlier), 0o640); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, Args(spec, vmm.AccelTCG, p)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no-such-kernel") {
		t.Fatalf("qemu without a kernel: %v, %s; want it to fail on the kernel after opening the console", err, out)
	}
	b, err := os.ReadFile(p.console)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), earlier) {
		t.Fatalf("console after a restart holds %q; the earlier boot's lines are gone", b)
	}
}
