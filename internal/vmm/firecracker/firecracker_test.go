package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/vmm"
)

// shortDir is a run dir short enough for Unix socket paths.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "hfc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// fakeDriver runs this test binary as the fake Firecracker.
func fakeDriver(t *testing.T) *Driver {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Hypervisors get a minimal environment, so the switch goes in Env.
	return New(Config{Binary: exe, StopGrace: 2 * time.Second, Env: []string{"HANGAR_FAKE_FIRECRACKER=1"}})
}

func testSpec(t *testing.T) vmm.Spec {
	run := shortDir(t)
	upper := filepath.Join(run, "upper.img")
	if err := os.WriteFile(upper, []byte("upper"), 0o600); err != nil {
		t.Fatal(err)
	}
	return vmm.Spec{
		ID:         "fc-vm-1",
		RunDir:     run,
		KernelPath: "/images/kernel-abc/vmlinux",
		KernelArgs: "hangar.upper=/dev/vdb",
		BaseDisk:   "/images/base-cli.ext4",
		UpperDisk:  upper,
		VCPUs:      2,
		MemoryMiB:  1024,
		Net:        &vmm.NetSpec{TapName: "tap0", MAC: "02:fc:00:00:00:05"},
	}
}

func readRequests(t *testing.T, dir string) []recorded {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "fake-requests.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []recorded
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r recorded
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// golden loads testdata/<name>.json with {{RUN}} and {{SNAP}} replaced.
func golden(t *testing.T, name string, vars map[string]string) any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for k, v := range vars {
		s = strings.ReplaceAll(s, "{{"+k+"}}", v)
	}
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("golden %s: %v", name, err)
	}
	return v
}

// expect is one expected request: method, path, golden body (or "").
type expect struct{ method, path, golden string }

func checkRequests(t *testing.T, got []recorded, want []expect, vars map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		var g []string
		for _, r := range got {
			g = append(g, r.Method+" "+r.Path)
		}
		t.Fatalf("requests %q, want %d: %v", g, len(want), want)
	}
	for i, w := range want {
		r := got[i]
		if r.Method != w.method || r.Path != w.path {
			t.Errorf("request %d: %s %s, want %s %s", i, r.Method, r.Path, w.method, w.path)
			continue
		}
		if w.golden == "" {
			if len(r.Body) != 0 {
				t.Errorf("request %d %s %s: unexpected body %s", i, r.Method, r.Path, r.Body)
			}
			continue
		}
		var body any
		if err := json.Unmarshal(r.Body, &body); err != nil {
			t.Errorf("request %d: body %q: %v", i, r.Body, err)
			continue
		}
		if g := golden(t, w.golden, vars); !reflect.DeepEqual(body, g) {
			gb, _ := json.Marshal(g)
			t.Errorf("request %d %s %s:\n body   %s\n golden %s (testdata/%s.json)", i, r.Method, r.Path, r.Body, gb, w.golden)
		}
	}
}

func TestStartPauseSnapshotStopSequence(t *testing.T) {
	d := fakeDriver(t)
	spec := testSpec(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Kill() })
	vars := map[string]string{"RUN": spec.RunDir}
	checkRequests(t, readRequests(t, spec.RunDir), []expect{
		{"PUT", "/logger", "logger"},
		{"PUT", "/machine-config", "machine-config"},
		{"PUT", "/boot-source", "boot-source"},
		{"PUT", "/drives/rootfs", "drive-rootfs"},
		{"PUT", "/drives/upper", "drive-upper"},
		{"PUT", "/vsock", "vsock"},
		{"PUT", "/network-interfaces/eth0", "network-interface"},
		{"PUT", "/entropy", "entropy"},
		{"PUT", "/actions", "action-instance-start"},
	}, vars)
	if t.Failed() {
		return
	}
	st := h.State()
	if st.Driver != DriverName || st.Agent.Kind != vmm.AgentVsockUDS || st.Agent.Path != filepath.Join(spec.RunDir, "vsock.sock") || st.Agent.Port != DefaultAgentPort {
		t.Fatalf("state %+v", st)
	}
	// The guest console is the process's stdout.
	if b, _ := os.ReadFile(h.ConsolePath()); !strings.Contains(string(b), "booted") {
		t.Fatalf("console %q", b)
	}
	// The vsock socket exists where the agent link will dial.
	if c, err := net.Dial("unix", h.Agent().Path); err != nil {
		t.Fatalf("dial vsock uds: %v", err)
	} else {
		c.Close()
	}

	if err := h.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(shortDir(t), "snap")
	meta, err := h.Snapshot(ctx, snap, vmm.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if meta.StateFile != "vmstate" || meta.MemoryFile != "memory" || meta.SizeBytes == 0 || !meta.HasUpperDisk || !meta.HasNet {
		t.Fatalf("meta %+v", meta)
	}
	if err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not stopped")
	}
	if err := h.ExitErr(); err != nil {
		t.Fatalf("stop exit error %v", err)
	}
	vars["SNAP"] = snap
	checkRequests(t, readRequests(t, spec.RunDir)[9:], []expect{
		{"PATCH", "/vm", "vm-paused"},
		{"PATCH", "/vm", "vm-resumed"},
		{"PATCH", "/vm", "vm-paused"},
		{"PUT", "/snapshot/create", "snapshot-create"},
		{"PUT", "/actions", "action-ctrl-alt-del"},
	}, vars)

}

func TestRestoreSequence(t *testing.T) {
	// Restore in another run dir: logger, load with the vsock socket
	// overridden to the new run dir and the TAP re-bound, then resume.
	d := fakeDriver(t)
	spec := testSpec(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(shortDir(t), "snap")
	if _, err := h.Snapshot(ctx, snap, vmm.SnapshotOptions{CopyUpperDisk: true}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(snap, "upper.img")); err != nil || string(b) != "upper" {
		t.Fatalf("upper disk copy: %q %v", b, err)
	}
	_ = h.Kill()
	<-h.Done()

	rs := spec
	rs.RunDir = shortDir(t)
	rs.RestoreFrom = snap
	h2, err := d.Start(ctx, rs)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Kill()
	checkRequests(t, readRequests(t, rs.RunDir), []expect{
		{"PUT", "/logger", "logger"},
		{"PUT", "/snapshot/load", "snapshot-load"},
		{"PATCH", "/vm", "vm-resumed"},
	}, map[string]string{"RUN": rs.RunDir, "SNAP": snap})

	// A spec with other sizes is refused before spawning.
	bad := rs
	bad.RunDir = shortDir(t)
	bad.VCPUs = 4
	if _, err := d.Start(ctx, bad); err == nil || !strings.Contains(err.Error(), "vcpus") {
		t.Fatalf("restore with other vcpus: %v", err)
	}
	if _, err := os.Stat(filepath.Join(bad.RunDir, "fake-requests.jsonl")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a process was started for a refused restore")
	}
}

func TestStartFaultSurfacesAndKillsProcess(t *testing.T) {
	d := fakeDriver(t)
	d.cfg.Env = append(d.cfg.Env, "HANGAR_FAKE_FC_FAIL=PUT /boot-source")
	spec := testSpec(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := d.Start(ctx, spec)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Path != "/boot-source" ||
		!strings.Contains(ae.FaultMessage, "injected failure") {
		t.Fatalf("start error %v, want the fault_message as *APIError", err)
	}
	// No request after the failed one, and the process is gone.
	reqs := readRequests(t, spec.RunDir)
	if last := reqs[len(reqs)-1]; last.Path != "/boot-source" {
		t.Fatalf("driver went on after a fault: %+v", last)
	}
	if matches, _ := filepath.Glob("/proc/[0-9]*/cmdline"); len(matches) > 0 {
		for _, m := range matches {
			b, _ := os.ReadFile(m)
			if strings.Contains(string(b), filepath.Join(spec.RunDir, "api.sock")) {
				t.Fatalf("fake firecracker still running: %s", m)
			}
		}
	}
}

func TestRecoverAndKill(t *testing.T) {
	d := fakeDriver(t)
	spec := testSpec(t)
	spec.Net = nil
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	st := h.State()
	if err := h.Release(); err != nil {
		t.Fatal(err)
	}
	// The state survives a JSON round trip (the manager persists it).
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var st2 vmm.State
	if err := json.Unmarshal(b, &st2); err != nil {
		t.Fatal(err)
	}
	d2 := fakeDriver(t)
	h2, err := d2.Recover(ctx, st2)
	if err != nil {
		t.Fatal(err)
	}
	if err := h2.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	reqs := readRequests(t, spec.RunDir)
	if r := reqs[len(reqs)-2]; r.Method != "GET" || r.Path != "/" {
		t.Fatalf("recover did not check the API: %+v", r)
	}
	began := time.Now()
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h2.Done():
	case <-time.After(time.Second):
		t.Fatal("kill -9 not noticed within 1 s")
	}
	t.Logf("kill -9 noticed after %v", time.Since(began))
	if h2.ExitErr() == nil {
		t.Fatal("unexpected kill reported as clean exit")
	}
	if _, err := d2.Recover(ctx, st2); !errors.Is(err, vmm.ErrProcessGone) {
		t.Fatalf("recover of dead VM: %v", err)
	}
}

func TestClientErrors(t *testing.T) {
	sock := filepath.Join(shortDir(t), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/":
			fmt.Fprint(w, `{"app_name":"Firecracker","id":"x","state":"Running","vmm_version":"1.16.1"}`)
		case "/plain":
			http.Error(w, "not json", http.StatusInternalServerError)
		default:
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"fault_message":"Invalid request method and/or path"}`)
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	c := NewClient(sock)
	defer c.Close()
	ctx := context.Background()
	ii, err := c.DescribeInstance(ctx)
	if err != nil || ii.State != "Running" || ii.VMMVersion != "1.16.1" {
		t.Fatalf("describe = %+v, %v", ii, err)
	}
	err = c.PatchVM(ctx, "Sleeping")
	var ae *APIError
	if !errors.As(err, &ae) || ae.FaultMessage != "Invalid request method and/or path" || ae.Method != "PATCH" {
		t.Fatalf("fault: %v", err)
	}
	if err := c.Do(ctx, "GET", "/plain", nil, nil); !errors.As(err, &ae) || ae.Status != 500 || ae.FaultMessage != "not json" {
		t.Fatalf("plain error: %v", err)
	}
	if err := c.PutDrive(ctx, Drive{}); err == nil {
		t.Fatal("drive without id accepted")
	}
}

func TestBootArgs(t *testing.T) {
	s, err := vmm.Spec{ID: "x", RunDir: "/r", KernelPath: "/k", InitrdPath: "/i"}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	if got := BootArgs(s); got != "console=ttyS0 reboot=k panic=1 pci=off" {
		t.Fatalf("initrd boot args %q", got)
	}
}

func TestAvailable(t *testing.T) {
	if err := Available(filepath.Join(t.TempDir(), "no-firecracker")); err == nil || !strings.Contains(err.Error(), "binary") {
		t.Fatalf("missing binary: %v", err)
	}
	exe, _ := os.Executable()
	err := Available(exe)
	if ok, _ := vmm.DetectKVM(); ok != (err == nil) {
		t.Fatalf("kvm usable=%v but Available = %v", ok, err)
	}
}
