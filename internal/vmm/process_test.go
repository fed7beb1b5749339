package vmm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseStartTime(t *testing.T) {
	// comm may hold spaces and parentheses; starttime is field 22.
	stat := "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n"
	got, err := parseStartTime([]byte(stat))
	if err != nil || got != 987654 {
		t.Fatalf("parseStartTime = %d, %v; want 987654", got, err)
	}
	if _, err := parseStartTime([]byte("1234 (x) S 1")); err == nil {
		t.Fatal("short stat parsed without error")
	}
}

func TestStartProcessOwnSessionAndKill(t *testing.T) {
	dir := t.TempDir()
	p, err := StartProcess([]string{"sleep", "60"}, ProcessOptions{Dir: dir, OutputPath: filepath.Join(dir, "out.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	if !p.Child() {
		t.Fatal("started process not marked as child")
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID()) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	// fields[3] is field 6, the session id: Setsid makes it the pid.
	if f[3] != strconv.Itoa(p.PID()) {
		t.Fatalf("session id %s, want own session %d", f[3], p.PID())
	}
	st, _ := ProcStartTime(p.PID())
	if st == 0 || st != p.StartTime() {
		t.Fatalf("start time %d, recorded %d", st, p.StartTime())
	}
	select {
	case <-p.Done():
		t.Fatal("done before exit")
	case <-time.After(100 * time.Millisecond):
	}
	began := time.Now()
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(time.Second):
		t.Fatal("exit not noticed within 1 s of SIGKILL")
	}
	t.Logf("SIGKILL noticed after %v", time.Since(began))
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("exit error %v, want it to say killed", err)
	}
	// Signalling an exited process is not an error.
	if err := p.Kill(); err != nil {
		t.Fatalf("kill after exit: %v", err)
	}
}

func TestStartProcessExitStatusAndStderrTail(t *testing.T) {
	dir := t.TempDir()
	p, err := StartProcess([]string{"sh", "-c", "echo first >&2; echo 'bad kernel image' >&2; exit 3"},
		ProcessOptions{Dir: dir, OutputPath: filepath.Join(dir, "out.log")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = p.Wait(ctx)
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "bad kernel image") {
		t.Fatalf("exit error %v, want exit status 3 and the stderr tail", err)
	}
	ok, err := StartProcess([]string{"true"}, ProcessOptions{Dir: dir, OutputPath: filepath.Join(dir, "out2.log")})
	if err != nil {
		t.Fatal(err)
	}
	if err := ok.Wait(ctx); err != nil {
		t.Fatalf("clean exit reported %v", err)
	}
}

func TestStartProcessMissingBinary(t *testing.T) {
	dir := t.TempDir()
	_, err := StartProcess([]string{filepath.Join(dir, "no-such-qemu")}, ProcessOptions{Dir: dir, OutputPath: filepath.Join(dir, "out.log")})
	if err == nil {
		t.Fatal("missing binary started")
	}
}

// startForeign starts a process the way another daemon would have: it is
// not the Process's child.
func startForeign(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(waited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-waited })
	return cmd
}

func TestAttachProcessNonChild(t *testing.T) {
	cmd := startForeign(t)
	pid := cmd.Process.Pid
	st, err := ProcStartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	boot, _ := BootID()
	p, err := AttachProcess(pid, st, boot, "")
	if err != nil {
		t.Fatal(err)
	}
	if p.Child() {
		t.Fatal("attached process marked as child")
	}
	began := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(time.Second):
		t.Fatal("exit of a non-child not noticed within 1 s")
	}
	t.Logf("non-child exit noticed after %v", time.Since(began))
	if !errors.Is(p.Err(), ErrExitUnknown) {
		t.Fatalf("exit error %v, want ErrExitUnknown", p.Err())
	}
}

func TestAttachProcessRefusesReusedOrDeadPID(t *testing.T) {
	cmd := startForeign(t)
	pid := cmd.Process.Pid
	st, _ := ProcStartTime(pid)
	boot, _ := BootID()
	// A different start time is what a reused pid looks like.
	if _, err := AttachProcess(pid, st+1, boot, ""); !errors.Is(err, ErrPIDReused) {
		t.Fatalf("attach with other start time: %v, want ErrPIDReused", err)
	}
	if _, err := AttachProcess(pid, st, "another-boot", ""); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("attach after reboot: %v, want ErrProcessGone", err)
	}
	// A pid that surely does not exist (above pid_max's default).
	if _, err := AttachProcess(1<<22+12345, 1, boot, ""); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("attach to missing pid: %v, want ErrProcessGone", err)
	}
	_ = cmd.Process.Kill()
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, err := AttachProcess(pid, st, boot, "")
		if errors.Is(err, ErrProcessGone) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("attach to killed pid: %v, want ErrProcessGone", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestReleaseLeavesProcessRunning(t *testing.T) {
	dir := t.TempDir()
	p, err := StartProcess([]string{"sleep", "60"}, ProcessOptions{Dir: dir, OutputPath: filepath.Join(dir, "out.log")})
	if err != nil {
		t.Fatal(err)
	}
	pid, st := p.PID(), p.StartTime()
	p.Release()
	if err := p.Kill(); !errors.Is(err, ErrReleased) {
		t.Fatalf("kill after release: %v, want ErrReleased", err)
	}
	time.Sleep(50 * time.Millisecond)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("process gone after release: %v", err)
	}
	// A new daemon re-attaches and can stop it.
	p2, err := AttachProcess(pid, st, p.BootID(), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p2.Done():
	case <-time.After(time.Second):
		t.Fatal("re-attached process not seen exiting")
	}
}

func TestDetectKVM(t *testing.T) {
	dir := t.TempDir()
	cpu := filepath.Join(dir, "cpuinfo")
	write := func(flags string) {
		s := "processor\t: 0\nflags\t\t: fpu vme " + flags + " sse2\n\nprocessor\t: 1\nflags\t\t: fpu\n"
		if err := os.WriteFile(cpu, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("vmx")
	// /dev/null stands in for an openable /dev/kvm.
	if ok, why := detectKVM("/dev/null", cpu); !ok || !strings.Contains(why, "vmx") {
		t.Fatalf("vmx host: %v %q", ok, why)
	}
	write("hypervisor")
	if ok, why := detectKVM("/dev/null", cpu); ok || !strings.Contains(why, "no vmx/svm") {
		t.Fatalf("no flags: %v %q", ok, why)
	}
	write("svm")
	if ok, _ := detectKVM(filepath.Join(dir, "kvm-missing"), cpu); ok {
		t.Fatal("missing device reported usable")
	}
	if ok, _ := detectKVM("/dev/null", cpu); !ok {
		t.Fatal("svm host reported unusable")
	}
}

func TestResolveAccel(t *testing.T) {
	usable, _ := DetectKVM()
	got, _, err := ResolveAccel("auto")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[bool]string{true: AccelKVM, false: AccelTCG}[usable]; got != want {
		t.Fatalf("auto = %s, want %s", got, want)
	}
	if got, _, err := ResolveAccel("tcg"); err != nil || got != AccelTCG {
		t.Fatalf("tcg = %s, %v", got, err)
	}
	if _, _, err := ResolveAccel("kvm"); usable == (err != nil) {
		t.Fatalf("kvm with usable=%v: %v", usable, err)
	}
	if _, _, err := ResolveAccel("hvf"); err == nil {
		t.Fatal("unknown accel accepted")
	}
}

func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "upper.img")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("head"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte("x"), 8192), 40<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dst := filepath.Join(dir, "copy.img")
	if err := CopySparse(context.Background(), src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs from source")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size || st.Blocks*512 > 4<<20 {
		t.Fatalf("copy size %d, allocated %d bytes: holes not kept", st.Size, st.Blocks*512)
	}
}

func TestSpecNormalize(t *testing.T) {
	good := Spec{ID: "vm-1", RunDir: "/run/hangar/vm-1", KernelPath: "/k", BaseDisk: "/b"}
	n, err := good.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	if n.VCPUs != DefaultVCPUs || n.MemoryMiB != DefaultMemoryMiB || n.ConsoleLog != "/run/hangar/vm-1/console.log" || n.Init != DefaultInit {
		t.Fatalf("defaults not applied: %+v", n)
	}
	for name, mut := range map[string]func(*Spec){
		"bad id":        func(s *Spec) { s.ID = "a/b" },
		"relative dir":  func(s *Spec) { s.RunDir = "run" },
		"no kernel":     func(s *Spec) { s.KernelPath = "" },
		"no root":       func(s *Spec) { s.BaseDisk = "" },
		"too many cpus": func(s *Spec) { s.VCPUs = 64 },
		"tiny memory":   func(s *Spec) { s.MemoryMiB = 16 },
	} {
		s := good
		mut(&s)
		if _, err := s.Normalize(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := SocketPath("/"+strings.Repeat("d", 100), "agent.sock"); err == nil {
		t.Error("over-long socket path accepted")
	}
}

// TestStartProcessDoesNotLeakDaemonSecrets: a hypervisor runs
// guest-controlled emulation, so it must not inherit the daemon's sealing
// key or database URL.
func TestStartProcessDoesNotLeakDaemonSecrets(t *testing.T) {
	t.Setenv("HANGAR_SEAL_KEY", "seal-key-must-not-leak")
	t.Setenv("HANGAR_DATABASE", "postgres://u:pw-must-not-leak@db/h")
	dir := t.TempDir()
	out := filepath.Join(dir, "out.log")
	p, err := StartProcess([]string{"sh", "-c", "env"}, ProcessOptions{Dir: dir, OutputPath: out})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if strings.Contains(string(b), "must-not-leak") {
		t.Fatalf("the hypervisor's environment holds daemon secrets:\n%s", b)
	}
	if !strings.Contains(string(b), "PATH=") {
		t.Fatalf("the hypervisor's environment lacks PATH:\n%s", b)
	}
}
