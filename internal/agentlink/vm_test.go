package agentlink_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// needVM skips (or fails under CI=true) when a real-VM prerequisite is missing.
func needVM(t *testing.T, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite missing under CI: %s", why)
	}
	t.Skip("real-VM test skipped: " + why)
}

func findKernel() string {
	if k := os.Getenv("HANGAR_TEST_KERNEL"); k != "" {
		return k
	}
	if m, _ := filepath.Glob("/var/lib/hangar/images/kernel-*/bzImage"); len(m) > 0 {
		return m[0]
	}
	if _, err := os.Stat("/var/tmp/hangar-kernel-manual/bzImage"); err == nil {
		return "/var/tmp/hangar-kernel-manual/bzImage"
	}
	return ""
}

// buildTestRootfs makes a tiny read-only base image: the agent as init,
// static busybox for a shell, and three services exercising the supervisor.
func buildTestRootfs(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"usr/sbin", "bin", "sbin", "usr/bin", "proc", "sys", "dev", "run", "tmp", "etc/hangar/services.d", "root", "home/hangar", "mnt"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-o", filepath.Join(root, "usr/sbin/hangar-agent"), "-ldflags", "-X main.version=vmtest", "github.com/hangar-vm/hangar/cmd/hangar-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOAMD64=v1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	bb, _ := exec.LookPath("busybox")
	b, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"sh", "echo", "cat", "uname", "ls", "sleep", "touch", "test", "id", "hostname", "mount", "nc", "date", "ps", "sync", "true", "false", "stty", "tty"} {
		_ = os.Symlink("busybox", filepath.Join(root, "bin", app))
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nhangar:x:1000:1000::/home/hangar:/bin/sh\n",
		"etc/group":  "root:x:0:\nhangar:x:1000:\n",
		"etc/hangar/services.d/10-display.json": mustJSON(t, proto.ServiceSpec{
			Name: "display", Argv: []string{"/bin/sh", "-c", "sleep 0.3; touch /tmp/display-ready; exec sleep 100000"},
			Ready: &proto.ReadyCheck{File: "/tmp/display-ready"}, Required: true, Restart: proto.RestartAlways,
		}),
		"etc/hangar/services.d/20-greeter.json": mustJSON(t, proto.ServiceSpec{
			Name: "greeter", User: "hangar", After: []string{"display"},
			Argv:  []string{"/bin/sh", "-c", "echo greeter as $(id -un); while true; do echo RFB 003.008 | nc -l -p 5900; done"},
			Ready: &proto.ReadyCheck{TCP: "127.0.0.1:5900"}, Required: true, Restart: proto.RestartAlways,
		}),
		"etc/hangar/services.d/30-broken.json": mustJSON(t, proto.ServiceSpec{
			Name: "broken", Argv: []string{"/bin/sh", "-c", "echo 'fatal: broken on purpose' >&2; exit 1"}, Restart: proto.RestartAlways,
		}),
	}
	for p, c := range files {
		if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(root, "home/hangar"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "base.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs base: %v\n%s", err, out)
	}
	return img
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type qemuVM struct {
	cmd     *exec.Cmd
	sock    string
	console string
	// monitor is QEMU's human monitor (HMP) socket.
	monitor string
	exited  chan error
}

func startQEMU(t *testing.T, dir, kernel, base, upper string, p proto.Params) *qemuVM {
	t.Helper()
	vm := &qemuVM{sock: filepath.Join(dir, "agent.sock"), console: filepath.Join(dir, "console.log"), monitor: filepath.Join(dir, "mon.sock"), exited: make(chan error, 1)}
	// quiet keeps the kernel from echoing its command line (and so the
	// token) to the console, which hangar preserves.
	appendArgs := "console=ttyS0 quiet root=/dev/vda ro rootfstype=ext4 init=/usr/sbin/hangar-agent panic=1 " + proto.KernelArgs(p)
	vm.cmd = exec.Command("qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
		"-display", "none", "-monitor", "unix:"+vm.monitor+",server=on,wait=off", "-no-reboot", "-serial", "file:"+vm.console,
		"-kernel", kernel, "-append", appendArgs,
		"-drive", "file="+base+",if=virtio,readonly=on,format=raw",
		"-drive", "file="+upper+",if=virtio,format=raw",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path="+vm.sock+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name="+proto.VirtioPortName)
	var stderr bytes.Buffer
	vm.cmd.Stderr = &stderr
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go func() {
		err := vm.cmd.Wait()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, stderr.String())
		}
		vm.exited <- err
	}()
	t.Cleanup(func() {
		_ = vm.cmd.Process.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(vm.console)
			t.Logf("console:\n%s", b)
		}
	})
	return vm
}

func (vm *qemuVM) dial(t *testing.T, ctx context.Context, token string) *agentlink.Client {
	t.Helper()
	for {
		c, err := agentlink.DialQEMU(ctx, vm.sock, agentlink.Options{Token: token})
		if err == nil {
			return c
		}
		if ctx.Err() != nil {
			t.Fatalf("dial agent: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // the chardev socket appears once QEMU started
	}
}

// TestRealVM boots the agent as PID 1 under QEMU TCG with the hangar guest
// kernel and checks its duties end to end.
func TestRealVM(t *testing.T) {
	kernel := findKernel()
	needVM(t, kernel != "", "no guest kernel (set HANGAR_TEST_KERNEL or build one with hangar image build --flavor kernel)")
	_, qerr := exec.LookPath("qemu-system-x86_64")
	needVM(t, qerr == nil, "qemu-system-x86_64 not installed")
	_, berr := exec.LookPath("busybox")
	needVM(t, berr == nil, "busybox (static) not installed; apt-get install busybox-static")
	_, merr := exec.LookPath("mkfs.ext4")
	needVM(t, merr == nil, "mkfs.ext4 not installed")
	needVM(t, os.Getuid() == 0, "needs root to chown files in the test image")

	dir := t.TempDir()
	base := buildTestRootfs(t, dir)
	upper := filepath.Join(dir, "upper.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", upper, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs upper: %v\n%s", err, out)
	}
	token, _ := proto.NewToken()
	params := proto.Params{Token: token, Upper: "/dev/vdb", Hostname: "vmtest", Link: proto.LinkVirtioSerial}

	boot := time.Now()
	vm := startQEMU(t, dir, kernel, base, upper, params)
	ctx := ctxT(t, 3*time.Minute)
	c := vm.dial(t, ctx, token)
	agentUp := time.Since(boot)
	events, err := c.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for ev := range events {
		if ev.Type == proto.EventReady || (ev.Type == proto.EventHello && ev.Health.Ready) {
			break
		}
	}
	t.Logf("QEMU start → agent link up %s, → ready %s", agentUp.Round(time.Millisecond), time.Since(boot).Round(time.Millisecond))

	if h, err := c.Health(ctx); err == nil {
		t.Logf("guest boot clock: agent started at %s, services ready at %s", time.Duration(h.AgentStartedAt), time.Duration(h.ReadyAt))
	}

	run := func(argv ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		code, err := c.Exec(ctx, proto.ExecRequest{Argv: argv}, nil, &out, &errb)
		if err != nil || code != 0 {
			t.Fatalf("%v: code=%d err=%v stderr=%q", argv, code, err, errb.String())
		}
		return out.String()
	}
	if rel := strings.TrimSpace(run("uname", "-r")); !strings.Contains(rel, "hangar") {
		t.Errorf("uname -r = %q, want the hangar kernel", rel)
	}
	if h := strings.TrimSpace(run("hostname")); h != "vmtest" {
		t.Errorf("hostname %q", h)
	}
	mounts := run("cat", "/proc/mounts")
	for _, want := range []string{"overlay / overlay", " /proc proc", " /sys sysfs", " /dev devtmpfs", " /dev/pts devpts", " /run tmpfs", " /tmp tmpfs", " /sys/fs/cgroup cgroup2"} {
		if !strings.Contains(mounts, want) {
			t.Errorf("mount %q missing:\n%s", want, mounts)
		}
	}
	// The root is writable (overlay) and the write lands on the upper disk.
	run("sh", "-c", "echo persisted > /root/marker && sync")

	// Files: 1 MiB round trip, .. refused.
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	if _, err := c.PutFile(ctx, agentlink.PutFileRequest{Path: "/home/hangar/.codex/auth.json", Mode: 0o600, UID: ptr(1000), GID: ptr(1000), Mkdir: true, Size: int64(len(data))}, bytes.NewReader(data)); err != nil {
		t.Fatalf("put: %v", err)
	}
	var got bytes.Buffer
	if _, err := c.GetFile(ctx, "/home/hangar/.codex/auth.json", 0, &got); err != nil || sha256.Sum256(got.Bytes()) != sha256.Sum256(data) {
		t.Fatalf("get: %v (checksum equal %v)", err, bytes.Equal(got.Bytes(), data))
	}
	if _, err := c.GetFile(ctx, "/home/../etc/passwd", 0, io.Discard); !errors.Is(err, &proto.Error{Code: proto.CodeForbidden}) {
		t.Errorf(".. not refused: %v", err)
	}

	// The broken service is visible and failed; the VM is still reachable.
	waitFor(t, 60*time.Second, "broken to fail", func() bool {
		s, err := c.Services(ctx)
		if err != nil {
			return false
		}
		for _, x := range s {
			if x.Name == "broken" && x.State == proto.StateFailed {
				return true
			}
		}
		return false
	})
	var brokenLines []string
	_ = c.Logs(ctx, proto.LogsRequest{Service: "broken"}, func(l proto.LogLine) error {
		brokenLines = append(brokenLines, l.Line)
		return nil
	})
	if len(brokenLines) == 0 || brokenLines[0] != "fatal: broken on purpose" {
		t.Errorf("broken's ring: %q", brokenLines)
	}
	con, _ := os.ReadFile(vm.console)
	if !strings.Contains(string(con), "[broken] fatal: broken on purpose") || !strings.Contains(string(con), "[greeter] greeter as hangar") {
		t.Errorf("console lacks the service lines")
	}

	// Port forward to the greeter inside the guest (no guest network).
	conn, err := c.DialPort(ctx, 5900)
	if err != nil {
		t.Fatalf("dial port: %v", err)
	}
	greet := make([]byte, 12)
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(conn, greet); err != nil || string(greet) != "RFB 003.008\n" {
		t.Errorf("greeting %q %v", greet, err)
	}
	conn.Close()

	// Daemon restart: drop the link without a goodbye and re-attach.
	c.Close()
	for i := range 2 {
		c = vm.dial(t, ctx, token)
		if out := run("echo", fmt.Sprint("reattached ", i)); out != fmt.Sprintf("reattached %d\n", i) {
			t.Fatalf("after reconnect %d: %q", i, out)
		}
		if i == 0 {
			c.Close()
		}
	}

	// Clean shutdown: QEMU exits by itself.
	if err := c.Shutdown(ctx, false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-vm.exited:
		if err != nil {
			t.Errorf("qemu exit: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("VM did not power off")
	}
	con, _ = os.ReadFile(vm.console)
	t.Logf("console head:\n%s", head(string(con), 14))
	t.Logf("console tail:\n%s", tail(string(con), 8))
	if strings.Contains(string(con), token) {
		t.Errorf("the token appears on the console")
	}

	// The write to / landed on the upper disk.
	if _, err := exec.LookPath("debugfs"); err == nil {
		out, err := exec.Command("debugfs", "-R", "cat /upper/root/marker", upper).Output()
		if err != nil || strings.TrimSpace(string(out)) != "persisted" {
			t.Errorf("upper disk holds %q (%v)", out, err)
		}
	} else {
		t.Log("debugfs missing: upper-disk content not checked")
	}
}

func ptr(i int) *int { return &i }

func head(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestRealVMTmpfsUpper boots a throwaway VM (upper layer in memory) and
// checks the root is a writable overlay with nothing written to disk.
func TestRealVMTmpfsUpper(t *testing.T) {
	kernel := findKernel()
	needVM(t, kernel != "", "no guest kernel (set HANGAR_TEST_KERNEL)")
	_, qerr := exec.LookPath("qemu-system-x86_64")
	needVM(t, qerr == nil, "qemu-system-x86_64 not installed")
	_, berr := exec.LookPath("busybox")
	needVM(t, berr == nil, "busybox (static) not installed; apt-get install busybox-static")
	needVM(t, os.Getuid() == 0, "needs root to chown files in the test image")
	dir := t.TempDir()
	base := buildTestRootfs(t, dir)
	// An empty second disk keeps the device names stable; it must stay untouched.
	spare := filepath.Join(dir, "spare.img")
	if err := os.WriteFile(spare, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	token, _ := proto.NewToken()
	vm := startQEMU(t, dir, kernel, base, spare, proto.Params{Token: token, Upper: proto.UpperTmpfs, Hostname: "throwaway"})
	ctx := ctxT(t, 3*time.Minute)
	c := vm.dial(t, ctx, token)
	defer c.Close()
	var out bytes.Buffer
	code, err := c.Exec(ctx, proto.ExecRequest{Argv: []string{"sh", "-c", "echo hi > /etc/written && cat /etc/written && grep ' / ' /proc/mounts"}}, nil, &out, nil)
	if err != nil || code != 0 || !strings.HasPrefix(out.String(), "hi\noverlay / overlay") {
		t.Fatalf("code=%d err=%v out=%q", code, err, out.String())
	}
	if err := c.Shutdown(ctx, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vm.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("VM did not power off")
	}
	b, _ := os.ReadFile(spare)
	if !bytes.Equal(b, make([]byte, 1<<20)) {
		t.Fatal("the spare disk was written")
	}
}

// TestRealVMCtrlAltDelIsAGracefulShutdown: Ctrl-Alt-Del (Firecracker's
// graceful stop) makes the agent stop its services, sync and power off,
// instead of the kernel restarting the guest at once.
func TestRealVMCtrlAltDelIsAGracefulShutdown(t *testing.T) {
	kernel := findKernel()
	needVM(t, kernel != "", "no guest kernel (set HANGAR_TEST_KERNEL)")
	_, qerr := exec.LookPath("qemu-system-x86_64")
	needVM(t, qerr == nil, "qemu-system-x86_64 not installed")
	_, berr := exec.LookPath("busybox")
	needVM(t, berr == nil, "busybox (static) not installed; apt-get install busybox-static")
	needVM(t, os.Getuid() == 0, "needs root to chown files in the test image")
	dir := t.TempDir()
	base := buildTestRootfs(t, dir)
	spare := filepath.Join(dir, "spare.img")
	if err := os.WriteFile(spare, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	token, _ := proto.NewToken()
	vm := startQEMU(t, dir, kernel, base, spare, proto.Params{Token: token, Upper: proto.UpperTmpfs, Hostname: "cad"})
	ctx := ctxT(t, 3*time.Minute)
	c := vm.dial(t, ctx, token)
	defer c.Close()
	if _, err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	mon, err := net.Dial("unix", vm.monitor)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	if _, err := io.WriteString(mon, "sendkey ctrl-alt-delete\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-vm.exited:
		if err != nil {
			t.Fatalf("qemu after ctrl-alt-del: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the VM did not end after ctrl-alt-del")
	}
	b, _ := os.ReadFile(vm.console)
	if !bytes.Contains(b, []byte("signal received, shutting down")) || !bytes.Contains(b, []byte("services stopped")) {
		t.Fatalf("ctrl-alt-del did not shut the guest down through the agent; console:\n%s", b)
	}
}
