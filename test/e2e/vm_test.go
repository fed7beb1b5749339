package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// TestBaseVMLifecycle: a base VM boots to ready, runs commands, moves files,
// shows a broken service's error within seconds, fails visibly when its
// hypervisor is killed, and leaves nothing but its logs when deleted.
func TestBaseVMLifecycle(t *testing.T) {
	requireVMs(t, "base")
	h := startDaemon(t, nil)
	ctx := context.Background()
	alice, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	ac := client.New(h.url, alice.APIKey)

	vm := h.createReady(ac, api.KindBase, 3*time.Minute)
	p := vm.BootPhases
	if p == nil || p.TotalMS <= 0 || p.KernelMS <= 0 || p.SpawnMS <= 0 {
		t.Fatalf("boot phases not recorded: %+v", p)
	}
	t.Logf("base vm %s ready: total %dms (spawn %dms, kernel %dms, agent %dms, services %dms), %s/%s",
		vm.ID, p.TotalMS, p.SpawnMS, p.KernelMS, p.AgentUpMS, p.ServicesReadyMS, vm.Hypervisor, vm.Acceleration)
	if vm.KernelVersion == "" || vm.ImageID == "" || vm.Hypervisor != "qemu" {
		t.Fatalf("vm lacks kernel/image/hypervisor: %+v", vm)
	}

	t.Run("exec uname", func(t *testing.T) {
		out := h.exec(ac, vm.ID, "uname", "-r")
		if out.ExitCode != 0 || strings.TrimSpace(out.Stdout) != vm.KernelVersion {
			t.Fatalf("uname -r = %q (exit %d, stderr %q), want the hangar kernel %q", out.Stdout, out.ExitCode, out.Stderr, vm.KernelVersion)
		}
		out = h.exec(ac, vm.ID, "sh", "-c", "echo oops >&2; exit 7")
		if out.ExitCode != 7 || out.Stderr != "oops\n" {
			t.Fatalf("exit code/stderr not carried: %+v", out)
		}
	})

	t.Run("owner scoping", func(t *testing.T) {
		bob, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "bob"})
		if err != nil {
			t.Fatal(err)
		}
		bc := client.New(h.url, bob.APIKey)
		if _, err := bc.GetVM(ctx, vm.ID); !isStatus(err, 404) {
			t.Fatalf("bob reads alice's vm: %v, want 404", err)
		}
		if _, err := bc.Exec(ctx, vm.ID, api.ExecRequest{Argv: []string{"true"}}); !isStatus(err, 404) {
			t.Fatalf("bob execs in alice's vm: %v, want 404", err)
		}
		if err := bc.DeleteVM(ctx, vm.ID); !isStatus(err, 404) {
			t.Fatalf("bob deletes alice's vm: %v, want 404", err)
		}
		if list, err := bc.ListVMs(ctx); err != nil || len(list) != 0 {
			t.Fatalf("bob's list = %v, %v; want empty", list, err)
		}
		if list, err := h.admin.ListVMs(ctx); err != nil || len(list) != 1 {
			t.Fatalf("admin's list = %v, %v; want alice's vm", list, err)
		}
	})

	t.Run("files", func(t *testing.T) {
		data := make([]byte, 1<<20)
		rand.Read(data)
		if err := ac.PutFile(ctx, vm.ID, "/root/blob.bin", 0o600, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		var back bytes.Buffer
		mode, err := ac.GetFile(ctx, vm.ID, "/root/blob.bin", &back)
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(back.Bytes()) != sha256.Sum256(data) || mode&0o777 != 0o600 {
			t.Fatalf("read back %d bytes mode %o; checksum differs or mode wrong", back.Len(), mode)
		}
		sum := h.exec(ac, vm.ID, "sha256sum", "/root/blob.bin")
		if !strings.HasPrefix(sum.Stdout, fmt.Sprintf("%x", sha256.Sum256(data))) {
			t.Fatalf("guest checksum %q differs", sum.Stdout)
		}
		err = ac.PutFile(ctx, vm.ID, "/root/../etc/evil", 0o644, strings.NewReader("x"))
		if !isStatus(err, 400) {
			t.Fatalf("path with ..: %v, want 400", err)
		}
		if _, err := ac.GetFile(ctx, vm.ID, "/root/../etc/shadow", &back); !isStatus(err, 400) {
			t.Fatalf("get path with ..: %v, want 400", err)
		}
	})

	t.Run("broken service is visible", func(t *testing.T) {
		// A service the VM's root declares (persisted on its upper disk)
		// that fails at start with a message.
		svc := `{"name":"broken","argv":["/bin/sh","-c","echo 'broken: cannot open /etc/broken.conf: No such file' >&2; exit 3"],"restart":"always"}`
		if err := ac.PutFile(ctx, vm.ID, "/etc/hangar/services.d/90-broken.json", 0o644, strings.NewReader(svc)); err != nil {
			t.Fatal(err)
		}
		if _, err := ac.StopVM(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := ac.StartVM(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		ready, err := ac.WaitVM(wctx, vm.ID, api.VMReady)
		if err != nil {
			t.Fatal(err)
		}
		bootedAt := time.Now()
		var logs string
		if err := eventually(10*time.Second, func() bool {
			var b strings.Builder
			_ = ac.Logs(ctx, vm.ID, "broken", false, &b)
			logs = b.String()
			return strings.Contains(logs, "cannot open /etc/broken.conf")
		}); err != nil {
			t.Fatalf("the service's error is not in its log 10s after ready; log:\n%s", logs)
		}
		t.Logf("service error readable %s after ready", time.Since(bootedAt).Round(time.Millisecond))
		var console strings.Builder
		_ = ac.Logs(ctx, vm.ID, "", false, &console)
		if !strings.Contains(console.String(), "[broken] broken: cannot open") {
			t.Fatalf("the console lacks the prefixed service line")
		}
		seen := map[string]bool{}
		if err := eventually(90*time.Second, func() bool {
			v, err := ac.GetVM(ctx, vm.ID)
			if err != nil {
				return false
			}
			for _, s := range v.Services {
				if s.Name == "broken" {
					seen[s.State] = true
					return s.State == "failed"
				}
			}
			return false
		}); err != nil {
			t.Fatalf("broken service never marked failed; states seen %v", seen)
		}
		t.Logf("broken service states seen: %v (boot %dms)", seen, ready.BootPhases.TotalMS)
		if out := h.exec(ac, vm.ID, "echo", "still here"); out.Stdout != "still here\n" {
			t.Fatalf("exec after the service failed: %+v", out)
		}
	})

	t.Run("kill -9 of the hypervisor", func(t *testing.T) {
		pid := h.d.VMs().HypervisorPID(vm.ID)
		if pid <= 0 {
			t.Fatal("no hypervisor pid")
		}
		evctx, evcancel := context.WithTimeout(ctx, 15*time.Second)
		defer evcancel()
		gotEvent := make(chan api.Event, 1)
		go ac.Events(evctx, 0, func(e api.Event) error {
			if e.Type == "vm_failed" && e.Subject == vm.ID {
				gotEvent <- e
				return fmt.Errorf("done")
			}
			return nil
		})
		killed := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var failed api.VM
		if err := eventually(5*time.Second, func() bool {
			failed, _ = ac.GetVM(ctx, vm.ID)
			return failed.State == api.VMFailed
		}); err != nil {
			t.Fatalf("vm is %q 5s after kill -9, want failed", failed.State)
		}
		t.Logf("failed %s after kill -9: %s", time.Since(killed).Round(time.Millisecond), strings.SplitN(failed.LastError, "\n", 2)[0])
		if !strings.Contains(failed.LastError, "hypervisor") {
			t.Fatalf("last_error does not say why: %q", failed.LastError)
		}
		select {
		case e := <-gotEvent:
			if !strings.Contains(string(e.Data), "reason") {
				t.Fatalf("vm_failed event without a reason: %s", e.Data)
			}
		case <-evctx.Done():
			t.Fatal("no vm_failed event")
		}
		var console strings.Builder
		if err := ac.Logs(ctx, vm.ID, "", false, &console); err != nil || !strings.Contains(console.String(), "Linux version") {
			t.Fatalf("console log after failure: %v, %d bytes", err, console.Len())
		}
		// The kernel prints its command line, agent token included; the
		// API must never show it.
		sv, _ := h.d.Store().GetVM(ctx, vm.ID, "")
		var rt struct {
			Token string `json:"token"`
		}
		_ = json.Unmarshal(sv.Runtime, &rt)
		if rt.Token == "" || strings.Contains(console.String(), rt.Token) || strings.Contains(failed.LastError, rt.Token) {
			t.Fatalf("agent token missing from the store (%v) or shown in the console/last_error", rt.Token == "")
		}
	})

	t.Run("delete leaves only logs", func(t *testing.T) {
		if err := ac.DeleteVM(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := ac.GetVM(ctx, vm.ID); err != nil {
			t.Logf("get after delete: %v", err)
		}
		runDir := filepath.Join(h.dataDir, "vms", vm.ID)
		if _, err := os.Stat(runDir); !os.IsNotExist(err) {
			entries, _ := os.ReadDir(runDir)
			t.Fatalf("runtime dir left after delete: %v %v", err, entries)
		}
		if procs := qemuProcsFor(vm.ID); len(procs) > 0 {
			t.Fatalf("hypervisor processes left: %v", procs)
		}
		var console strings.Builder
		if err := ac.Logs(ctx, vm.ID, "", false, &console); err != nil || console.Len() == 0 {
			t.Fatalf("preserved console log after delete: %v (%d bytes)", err, console.Len())
		}
		v, err := h.d.Store().GetVM(ctx, vm.ID, "")
		if err != nil || v.State != api.VMDestroyed {
			t.Fatalf("stored vm after delete: %+v %v", v, err)
		}
		_ = store.ErrNotFound
	})
}

// qemuProcsFor lists processes whose command line mentions the VM id.
func qemuProcsFor(id string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, "qemu") && strings.Contains(cmd, id) {
			out = append(out, e.Name()+": "+cmd)
		}
	}
	return out
}
