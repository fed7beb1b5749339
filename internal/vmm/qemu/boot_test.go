package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/vmm"
)

// These tests boot real VMs with QEMU (TCG on hosts without usable KVM)
// and hangar's kernel, with a tiny Go init in an initramfs instead of the
// full root filesystem and agent, so they test the driver alone.

// prereq skips (or, under CI=true, fails) with the reason.
func prereq(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatal("missing prerequisite under CI: " + msg)
	}
	t.Skip(msg)
}

// testKernel finds a bzImage: $HANGAR_TEST_KERNEL, the newest
// /var/lib/hangar/images/kernel-*/bzImage, or a path the image build
// announced in /tmp/hangar-kernel-ready.
func testKernel(t *testing.T) string {
	t.Helper()
	if k := os.Getenv("HANGAR_TEST_KERNEL"); k != "" {
		if _, err := os.Stat(k); err != nil {
			t.Fatalf("HANGAR_TEST_KERNEL: %v", err)
		}
		return k
	}
	var cands []string
	globbed, _ := filepath.Glob("/var/lib/hangar/images/kernel-*/bzImage")
	sort.Slice(globbed, func(i, j int) bool {
		a, _ := os.Stat(globbed[i])
		b, _ := os.Stat(globbed[j])
		return a != nil && b != nil && a.ModTime().After(b.ModTime())
	})
	cands = append(cands, globbed...)
	// The image build announces its kernel in a free-form note: take
	// any absolute path ending in bzImage.
	if b, err := os.ReadFile("/tmp/hangar-kernel-ready"); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if strings.HasPrefix(f, "/") && strings.HasSuffix(f, "/bzImage") {
				cands = append(cands, f)
			}
		}
	}
	for _, c := range cands {
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() && strings.HasSuffix(c, "bzImage") {
			return c
		}
	}
	prereq(t, "no hangar kernel: set HANGAR_TEST_KERNEL or build one into /var/lib/hangar/images/kernel-*/bzImage")
	return ""
}

var (
	initrdOnce sync.Once
	initrdPath string
	initrdErr  error
)

// testInitrd compiles testdata/guestinit statically and packs it as /init
// in a newc cpio (once per test binary).
func testInitrd(t *testing.T) string {
	t.Helper()
	initrdOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hangar-qemu-initrd-")
		if err != nil {
			initrdErr = err
			return
		}
		bin := filepath.Join(dir, "init")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./testdata/guestinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1")
		if out, err := cmd.CombinedOutput(); err != nil {
			initrdErr = fmt.Errorf("build guest init: %v: %s", err, out)
			return
		}
		code, err := os.ReadFile(bin)
		if err != nil {
			initrdErr = err
			return
		}
		var buf bytes.Buffer
		w := &cpioWriter{w: &buf}
		w.dir("dev")
		w.dir("proc")
		w.dir("sys")
		// The kernel opens /dev/console for init's stdio before anything
		// is mounted: the node must be in the archive.
		w.node("dev/console", syscall.S_IFCHR|0o600, 5, 1)
		w.file("init", 0o755, code)
		w.trailer()
		initrdPath = filepath.Join(dir, "initrd.cpio")
		initrdErr = os.WriteFile(initrdPath, buf.Bytes(), 0o644)
	})
	if initrdErr != nil {
		t.Fatal(initrdErr)
	}
	return initrdPath
}

// cpioWriter writes the "newc" format the kernel unpacks as initramfs:
// a 110-byte ASCII header of 13 hex fields, the NUL-terminated name, and
// the data, each padded to 4 bytes.
type cpioWriter struct {
	w   *bytes.Buffer
	ino int
}

func (c *cpioWriter) entry(name string, mode uint32, rmaj, rmin int, data []byte) {
	c.ino++
	nlink := 1
	if mode&syscall.S_IFMT == syscall.S_IFDIR {
		nlink = 2
	}
	fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	c.w.WriteString(name)
	c.w.WriteByte(0)
	c.pad()
	c.w.Write(data)
	c.pad()
}

func (c *cpioWriter) pad() {
	for c.w.Len()%4 != 0 {
		c.w.WriteByte(0)
	}
}

func (c *cpioWriter) dir(name string) { c.entry(name, syscall.S_IFDIR|0o755, 0, 0, nil) }
func (c *cpioWriter) node(name string, mode uint32, maj, min int) {
	c.entry(name, mode, maj, min, nil)
}
func (c *cpioWriter) file(name string, perm uint32, data []byte) {
	c.entry(name, syscall.S_IFREG|perm, 0, 0, data)
}
func (c *cpioWriter) trailer() { c.entry("TRAILER!!!", 0, 0, 0, nil) }

type bootEnv struct {
	d      *Driver
	kernel string
	initrd string
}

func newBootEnv(t *testing.T) bootEnv {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		prereq(t, "qemu-system-x86_64 not installed")
	}
	kernel := testKernel(t)
	initrd := testInitrd(t)
	d, err := New(Config{Accel: os.Getenv("HANGAR_TEST_ACCEL"), Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return bootEnv{d: d, kernel: kernel, initrd: initrd}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runDir is short (socket paths are limited to 107 bytes), unlike
// t.TempDir on some hosts.
func runDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "hq-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func (e bootEnv) spec(t *testing.T, id, mode string) vmm.Spec {
	return vmm.Spec{
		ID:         id,
		RunDir:     runDir(t),
		KernelPath: e.kernel,
		InitrdPath: e.initrd,
		KernelArgs: "hangartest.mode=" + mode,
		VCPUs:      1,
		MemoryMiB:  256,
	}
}

func (e bootEnv) start(t *testing.T, spec vmm.Spec) vmm.Handle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, err := e.d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A released handle no longer watches its process (the test
		// re-attached with another handle, which cleans up).
		if err := h.Kill(); errors.Is(err, vmm.ErrReleased) {
			return
		}
		<-h.Done()
		if t.Failed() {
			b, _ := os.ReadFile(h.ConsolePath())
			t.Logf("console of %s:\n%s", h.ID(), tailString(string(b), 3000))
		}
	})
	return h
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitConsole polls the console file until re matches, returning the
// submatches of the last match.
func waitConsole(t *testing.T, path string, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if all := re.FindAllStringSubmatch(string(b), -1); len(all) > 0 {
			return all[len(all)-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("console %s: no %q within %v; tail:\n%s", path, re, timeout, tailString(string(b), 2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var (
	upRE   = regexp.MustCompile(`HANGARTEST-INIT-UP mode=\S+ uptime=(\S+)`)
	tickRE = regexp.MustCompile(`hangartest tick (\d+)`)
)

func lastTick(t *testing.T, path string) int {
	t.Helper()
	b, _ := os.ReadFile(path)
	all := tickRE.FindAllStringSubmatch(string(b), -1)
	if len(all) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(all[len(all)-1][1])
	return n
}

func waitTick(t *testing.T, h vmm.Handle, atLeast int, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if n := lastTick(t, h.ConsolePath()); n >= atLeast {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("no tick %d within %v", atLeast, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBootToInitAndPowerOff(t *testing.T) {
	e := newBootEnv(t)
	spec := e.spec(t, "boot-poweroff", "poweroff")
	began := time.Now()
	h := e.start(t, spec)
	m := waitConsole(t, h.ConsolePath(), upRE, 60*time.Second)
	boot := time.Since(began)
	t.Logf("MEASURED accel=%s boot to init marker: %v wall clock from Start (guest uptime %s s)", e.d.Accel(), boot.Round(time.Millisecond), m[1])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Wait(ctx); err != nil {
		t.Fatalf("guest power-off should be a clean exit, got %v", err)
	}
	st := h.State()
	if st.Driver != "qemu" || st.PID == 0 || st.StartTime == 0 || st.Accel == "" || st.Agent.Kind != vmm.AgentVirtioSerial {
		t.Fatalf("state %+v", st)
	}
}

func TestGuestInitExitIsAFailure(t *testing.T) {
	e := newBootEnv(t)
	h := e.start(t, e.spec(t, "boot-exit", "exit"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := h.Wait(ctx)
	if err == nil || !strings.Contains(err.Error(), "guest-reset") {
		t.Fatalf("PID 1 exit: Wait = %v, want an error naming the guest reset", err)
	}
	t.Logf("exit error: %v", err)
}

func TestKill9NoticedWithinOneSecond(t *testing.T) {
	e := newBootEnv(t)
	h := e.start(t, e.spec(t, "boot-kill", "counter"))
	waitTick(t, h, 1, 60*time.Second)
	began := time.Now()
	if err := syscall.Kill(h.State().PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Done():
	case <-time.After(time.Second):
		t.Fatal("kill -9 of qemu not noticed within 1 s")
	}
	t.Logf("MEASURED kill -9 noticed after %v", time.Since(began))
	if err := h.ExitErr(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("exit error %v, want it to say killed", err)
	}
	if err := h.Pause(context.Background()); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("pause after exit: %v", err)
	}
}

func TestPauseResumeAndAgentPort(t *testing.T) {
	e := newBootEnv(t)
	h := e.start(t, e.spec(t, "boot-pause", "counter"))
	waitTick(t, h, 3, 60*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	agentEcho(t, ctx, h, "ping one")

	if err := h.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	// Let a tick in flight land, then nothing may move.
	time.Sleep(300 * time.Millisecond)
	frozen := lastTick(t, h.ConsolePath())
	time.Sleep(700 * time.Millisecond)
	if n := lastTick(t, h.ConsolePath()); n != frozen {
		t.Fatalf("guest ran while paused: tick %d -> %d", frozen, n)
	}
	if err := h.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	waitTick(t, h, frozen+3, 10*time.Second)
	if err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.ExitErr(); err != nil {
		t.Fatalf("stop should be a clean exit: %v", err)
	}
}

// agentEcho sends a line over the agent endpoint and expects the guest
// init's upper-cased echo: the virtio-serial path end to end.
func agentEcho(t *testing.T, ctx context.Context, h vmm.Handle, msg string) {
	t.Helper()
	ep := h.Agent()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", ep.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	// The guest may open the port after we connected, and drops what
	// arrives before: repeat until an answer comes.
	for i := 0; ; i++ {
		if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		line, err := r.ReadString('\n')
		if err == nil {
			if got := strings.TrimSpace(line); got != strings.ToUpper(msg) {
				t.Fatalf("agent echo %q, want %q", got, strings.ToUpper(msg))
			}
			return
		}
		if i > 15 {
			t.Fatalf("no agent echo: %v", err)
		}
	}
}

func TestSnapshotAndRestore(t *testing.T) {
	e := newBootEnv(t)
	spec := e.spec(t, "boot-snap", "counter")
	upper := filepath.Join(spec.RunDir, "upper.img")
	if err := os.WriteFile(upper, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(upper, 64<<20); err != nil {
		t.Fatal(err)
	}
	spec.UpperDisk = upper
	h := e.start(t, spec)
	waitTick(t, h, 5, 60*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	snapDir := filepath.Join(runDir(t), "snap")
	began := time.Now()
	meta, err := h.Snapshot(ctx, snapDir, vmm.SnapshotOptions{CopyUpperDisk: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MEASURED snapshot: %d bytes state for %d MiB guest, %v (call %v)",
		meta.SizeBytes, spec.MemoryMiB, meta.Duration.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	if meta.SizeBytes == 0 || meta.UpperDiskCopy != "upper.img" {
		t.Fatalf("meta %+v", meta)
	}
	if _, err := os.Stat(filepath.Join(snapDir, "vmstate.tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary state file left: %v", err)
	}
	// Snapshot leaves the VM paused.
	time.Sleep(300 * time.Millisecond)
	atSnap := lastTick(t, h.ConsolePath())
	time.Sleep(500 * time.Millisecond)
	if n := lastTick(t, h.ConsolePath()); n != atSnap {
		t.Fatalf("guest ran after snapshot: %d -> %d", atSnap, n)
	}
	// The source can go on (as after a template snapshot)...
	if err := h.Resume(ctx); err != nil {
		t.Fatalf("resume after snapshot: %v", err)
	}
	waitTick(t, h, atSnap+2, 10*time.Second)
	// A second snapshot after the resume works too (QEMU re-activated the
	// disks the first migration had inactivated).
	if _, err := h.Snapshot(ctx, filepath.Join(filepath.Dir(snapDir), "snap2"), vmm.SnapshotOptions{}); err != nil {
		t.Fatalf("second snapshot: %v", err)
	}
	// ...and is stopped, as for hibernation.
	if err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	// A mismatched spec is refused before QEMU starts.
	bad := spec
	bad.RunDir = runDir(t)
	bad.RestoreFrom = snapDir
	bad.MemoryMiB = 512
	if _, err := e.d.Start(ctx, bad); err == nil || !strings.Contains(err.Error(), "memory") {
		t.Fatalf("restore with other memory size: %v", err)
	}

	rs := spec
	rs.RunDir = runDir(t)
	rs.ConsoleLog = ""
	rs.RestoreFrom = snapDir
	began = time.Now()
	h2 := e.start(t, rs)
	restored := time.Since(began)
	first := waitConsole(t, h2.ConsolePath(), tickRE, 30*time.Second)
	running := time.Since(began)
	n, _ := strconv.Atoi(first[1])
	t.Logf("MEASURED restore: Start returned after %v, first tick (%d) on the console after %v", restored.Round(time.Millisecond), n, running.Round(time.Millisecond))
	b, _ := os.ReadFile(h2.ConsolePath())
	if upRE.Match(b) {
		t.Fatal("restored VM booted again instead of continuing")
	}
	// The counter continues from where the snapshot froze it, not from 1.
	if n < atSnap-1 || n > atSnap+5 {
		t.Fatalf("restored counter at %d, snapshot at %d", n, atSnap)
	}
	waitTick(t, h2, n+3, 10*time.Second)
	agentEcho(t, ctx, h2, "after restore")
	if err := h2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRecoverAfterDaemonRestart(t *testing.T) {
	e := newBootEnv(t)
	h := e.start(t, e.spec(t, "boot-recover", "counter"))
	waitTick(t, h, 2, 60*time.Second)
	st := h.State()
	// Simulate the daemon going away: drop the handle without stopping
	// the VM.
	if err := h.Release(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(st.PID, 0); err != nil {
		t.Fatalf("qemu gone after release: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A new driver instance, as a restarted daemon has.
	d2, err := New(Config{Accel: os.Getenv("HANGAR_TEST_ACCEL")})
	if err != nil {
		t.Fatal(err)
	}
	reused := st
	reused.StartTime++
	if _, err := d2.Recover(ctx, reused); !errors.Is(err, vmm.ErrPIDReused) {
		t.Fatalf("recover with another start time: %v, want ErrPIDReused", err)
	}
	h2, err := d2.Recover(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if h2.State().PID != st.PID || h2.State().Spec.MemoryMiB != 256 {
		t.Fatalf("recovered state %+v", h2.State())
	}
	if err := h2.Pause(ctx); err != nil {
		t.Fatalf("pause through recovered qmp: %v", err)
	}
	if err := h2.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	n := lastTick(t, h2.ConsolePath())
	waitTick(t, h2, n+2, 10*time.Second)
	agentEcho(t, ctx, h2, "recovered")
	if err := h2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h2.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("recovered VM did not stop")
	}
	// Not our child any more (in a real restart): the status is unknown,
	// but Stop asked for the exit, so it is not reported as a failure.
	t.Logf("recovered exit err: %v", h2.ExitErr())
	if _, err := d2.Recover(ctx, st); !errors.Is(err, vmm.ErrProcessGone) {
		t.Fatalf("recover of a stopped VM: %v, want ErrProcessGone", err)
	}
}

func TestNetworkDeviceInNetns(t *testing.T) {
	e := newBootEnv(t)
	if os.Geteuid() != 0 {
		prereq(t, "network namespaces and TAP devices need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		prereq(t, "iproute2 (ip) not installed")
	}
	ns := fmt.Sprintf("hangar-vmmtest-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("-n", ns, "tuntap", "add", "dev", "tap0", "mode", "tap", "vnet_hdr")
	run("-n", ns, "link", "set", "tap0", "up")

	spec := e.spec(t, "boot-net", "counter")
	spec.Net = &vmm.NetSpec{TapName: "tap0", MAC: "02:00:00:00:00:07", NetnsPath: "/run/netns/" + ns}
	h := e.start(t, spec)
	waitConsole(t, h.ConsolePath(), regexp.MustCompile(`HANGARTEST-NET \S*eth0`), 60*time.Second)
	// QEMU itself runs inside the namespace (the TAP exists only there).
	var want, got syscall.Stat_t
	if err := syscall.Stat(spec.Net.NetnsPath, &want); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", h.State().PID), &got); err != nil {
		t.Fatal(err)
	}
	if want.Ino != got.Ino {
		t.Fatalf("qemu in netns inode %d, want %d", got.Ino, want.Ino)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestMain lets the test binary play a short-lived hangar daemon: with
// HANGAR_QEMU_TEST_DAEMON set to a spec (JSON) it starts that VM, prints
// its State as JSON and exits without stopping it.
func TestMain(m *testing.M) {
	if js := os.Getenv("HANGAR_QEMU_TEST_DAEMON"); js != "" {
		os.Exit(runTestDaemon(js))
	}
	os.Exit(m.Run())
}

func runTestDaemon(js string) int {
	var spec vmm.Spec
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	spec.KernelArgs = os.Getenv("HANGAR_QEMU_TEST_ARGS")
	d, err := New(Config{Accel: os.Getenv("HANGAR_TEST_ACCEL")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, err := d.Start(ctx, spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(h.State()); err != nil {
		return 1
	}
	// Exit as a crashing daemon would: no Stop, no Release.
	return 0
}

func TestRecoverFromAnotherDaemonProcess(t *testing.T) {
	e := newBootEnv(t)
	spec := e.spec(t, "boot-xdaemon", "counter")
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "HANGAR_QEMU_TEST_DAEMON="+string(js), "HANGAR_QEMU_TEST_ARGS="+spec.KernelArgs)
	cmd.Stderr = testWriter{t}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("first daemon: %v", err)
	}
	var st vmm.State
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("state %q: %v", out, err)
	}
	// The first daemon is gone; QEMU must not have gone with it.
	if err := syscall.Kill(st.PID, 0); err != nil {
		t.Fatalf("qemu died with its daemon: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(st.PID, syscall.SIGKILL) })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	h, err := e.d.Recover(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	n := waitTick(t, h, 2, 60*time.Second)
	waitTick(t, h, n+2, 10*time.Second)
	agentEcho(t, ctx, h, "second daemon")
	// Not our child: its exit is still seen within a second, and a kill
	// nobody asked for is not reported as clean.
	began := time.Now()
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Done():
	case <-time.After(time.Second):
		t.Fatal("exit of a re-attached qemu not noticed within 1 s")
	}
	t.Logf("MEASURED kill -9 of a re-attached (non-child) qemu noticed after %v", time.Since(began))
	if !errors.Is(h.ExitErr(), vmm.ErrExitUnknown) {
		t.Fatalf("exit error %v, want ErrExitUnknown", h.ExitErr())
	}
}
