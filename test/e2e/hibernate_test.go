package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/vm"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// TestHibernateResume: a hibernated CLI VM (1 GiB) has no hypervisor and a private
// snapshot on disk; an exec resumes it transparently with a process started
// before still running, a file written before intact and its clock
// corrected; a truncated snapshot fails the VM with the reason, starts no
// hypervisor, and keeps the disk, from which the VM boots again.
func TestHibernateResume(t *testing.T) {
	requireVMs(t, "cli")
	h := startDaemon(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	alice, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	ac := client.New(h.url, alice.APIKey)
	created, err := ac.CreateVM(ctx, api.CreateVMRequest{Kind: api.KindCLI, MemoryMiB: 1024})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := ac.WaitVM(ctx, created.ID, api.VMReady)
	if err != nil {
		t.Fatal(err)
	}

	var rnd [16]byte
	_, _ = rand.Read(rnd[:])
	content := hex.EncodeToString(rnd[:])
	out := h.exec(ac, vm.ID, "sh", "-c", "echo "+content+" > /var/tmp/before.txt && setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!")
	pid, err := strconv.Atoi(strings.TrimSpace(out.Stdout))
	if out.ExitCode != 0 || err != nil {
		t.Fatalf("start background process: %+v", out)
	}

	began := time.Now()
	hv, err := ac.HibernateVM(ctx, vm.ID)
	hibernateTook := time.Since(began)
	if err != nil {
		t.Fatalf("hibernate: %v", err)
	}
	if hv.State != api.VMHibernated || hv.Hibernation == nil || hv.Hibernation.SnapshotBytes <= 0 {
		t.Fatalf("after hibernate: state %q, hibernation %+v", hv.State, hv.Hibernation)
	}
	if ps := qemuProcsFor(vm.ID); len(ps) != 0 {
		t.Fatalf("hypervisor still runs after hibernate: %v", ps)
	}
	snapDir := filepath.Join(h.dataDir, "vms", vm.ID, "hibernation")
	checkPrivate(t, snapDir)
	t.Logf("MEASURED (qemu %s, %d MiB guest) hibernate: %v for the API call, vcpus frozen %dms, snapshot %d MiB",
		hv.Acceleration, hv.MemoryMiB, hibernateTook.Round(time.Millisecond), hv.Hibernation.DurationMS, hv.Hibernation.SnapshotBytes>>20)

	// Let the guest's clock fall behind, then resume through an exec.
	time.Sleep(3 * time.Second)
	began = time.Now()
	out = h.exec(ac, vm.ID, "sh", "-c", "kill -0 "+strconv.Itoa(pid)+" && cat /var/tmp/before.txt && date +%s.%N")
	resumeTook := time.Since(began)
	host := float64(time.Now().UnixNano()) / 1e9
	lines := strings.Split(strings.TrimSpace(out.Stdout), "\n")
	if out.ExitCode != 0 || len(lines) != 2 {
		t.Fatalf("after resume, process %d or file gone: %+v", pid, out)
	}
	if lines[0] != content {
		t.Fatalf("file written before hibernation reads %q, want %q", lines[0], content)
	}
	guest, err := strconv.ParseFloat(lines[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	if d := host - guest; d > 1 || d < -1 {
		t.Fatalf("guest clock off by %.2fs after resume, want within 1s", d)
	}
	t.Logf("MEASURED resume through exec: %v until the exec's answer (clock skew %.3fs)", resumeTook.Round(time.Millisecond), host-guest)
	rv, err := ac.GetVM(ctx, vm.ID)
	if err != nil || rv.State != api.VMReady || rv.Hibernation != nil {
		t.Fatalf("after resume: %+v, %v", rv, err)
	}
	if _, err := os.Stat(snapDir); !os.IsNotExist(err) {
		t.Fatalf("snapshot dir kept after a successful resume: %v", err)
	}

	// A second cycle through the explicit resume call.
	if _, err := ac.HibernateVM(ctx, vm.ID); err != nil {
		t.Fatalf("hibernate again: %v", err)
	}
	began = time.Now()
	if rv, err = ac.ResumeVM(ctx, vm.ID); err != nil || rv.State != api.VMReady {
		t.Fatalf("resume: %+v, %v", rv, err)
	}
	t.Logf("MEASURED resume through the API: %v", time.Since(began).Round(time.Millisecond))
	if out := h.exec(ac, vm.ID, "kill", "-0", strconv.Itoa(pid)); out.ExitCode != 0 {
		t.Fatalf("process %d gone after the second resume: %+v", pid, out)
	}

	// A truncated snapshot: a clear failure, no hypervisor, disk kept.
	if _, err := ac.HibernateVM(ctx, vm.ID); err != nil {
		t.Fatalf("hibernate a third time: %v", err)
	}
	truncateLargest(t, snapDir)
	_, err = ac.ResumeVM(ctx, vm.ID)
	if err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("resume from a truncated snapshot: %v, want a checksum failure", err)
	}
	fv, err := ac.GetVM(ctx, vm.ID)
	if err != nil || fv.State != api.VMFailed || !strings.Contains(fv.LastError, "corrupt or truncated") {
		t.Fatalf("after a corrupt resume: state %q, last_error %q, %v", fv.State, fv.LastError, err)
	}
	if ps := qemuProcsFor(vm.ID); len(ps) != 0 {
		t.Fatalf("a hypervisor was started from a corrupt snapshot: %v", ps)
	}
	if _, err := os.Stat(filepath.Join(h.dataDir, "vms", vm.ID, "upper.ext4")); err != nil {
		t.Fatalf("disk not kept: %v", err)
	}
	if _, err := ac.StartVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := ac.WaitVM(ctx, vm.ID, api.VMReady); err != nil {
		t.Fatal(err)
	}
	out = h.exec(ac, vm.ID, "cat", "/var/tmp/before.txt")
	if strings.TrimSpace(out.Stdout) != content {
		t.Fatalf("after a cold boot from the kept disk the file reads %+v", out)
	}
}

// checkPrivate fails unless dir is 0700 and every file in it 0600.
func checkPrivate(t *testing.T, dir string) {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("snapshot dir mode %v, want 0700", fi.Mode().Perm())
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) == 0 {
		t.Fatalf("snapshot dir empty: %v", err)
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("snapshot file %s mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
}

// truncateLargest cuts the biggest file of dir (the memory state) in half.
func truncateLargest(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var big string
	var size int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Size() > size {
			big, size = filepath.Join(dir, e.Name()), fi.Size()
		}
	}
	if err := os.Truncate(big, size/2); err != nil {
		t.Fatal(err)
	}
}

// TestIdleHibernateAndDestroy: with short idle limits, an unused base VM
// hibernates by itself through the durable queue, an exec wakes it with its
// process still running, and once it has slept for idle_destroy it is
// destroyed (its owner told first).
func TestIdleHibernateAndDestroy(t *testing.T) {
	requireVMs(t, "base")
	h := startDaemon(t, func(c *config.Config) {
		c.IdleHibernate = config.Duration(4 * time.Second)
		c.IdleDestroy = config.Duration(25 * time.Second)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	vm := h.createReady(h.admin, api.KindBase, 3*time.Minute)
	out := h.exec(h.admin, vm.ID, "sh", "-c", "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!")
	pid := strings.TrimSpace(out.Stdout)
	// A long exec keeps the VM awake past the idle limit.
	began := time.Now()
	if out := h.exec(h.admin, vm.ID, "sleep", "7"); out.ExitCode != 0 {
		t.Fatalf("sleep: %+v", out)
	}
	if v, err := h.admin.GetVM(ctx, vm.ID); err != nil || v.State != api.VMReady {
		t.Fatalf("vm hibernated during a %v exec: %+v, %v", time.Since(began), v.State, err)
	}
	waitState := func(state string, within time.Duration) api.VM {
		t.Helper()
		var v api.VM
		err := eventually(within, func() bool {
			var err error
			v, err = h.admin.GetVM(ctx, vm.ID)
			return err == nil && v.State == state || isStatus(err, 404) && state == api.VMDestroyed
		})
		if err != nil {
			t.Fatalf("vm not %s within %v: %s %s", state, within, v.State, v.LastError)
		}
		return v
	}
	idleFrom := time.Now()
	waitState(api.VMHibernated, 30*time.Second)
	t.Logf("idle vm hibernated %v after its last use (idle_hibernate 4s)", time.Since(idleFrom).Round(100*time.Millisecond))
	if ps := qemuProcsFor(vm.ID); len(ps) != 0 {
		t.Fatalf("hypervisor still runs: %v", ps)
	}
	if out := h.exec(h.admin, vm.ID, "kill", "-0", pid); out.ExitCode != 0 {
		t.Fatalf("process gone after the idle hibernation: %+v", out)
	}
	slept := waitState(api.VMHibernated, 30*time.Second)
	waitState(api.VMDestroyed, 60*time.Second)
	t.Logf("hibernated vm destroyed %v after it hibernated (idle_destroy 25s)", time.Since(slept.UpdatedAt).Round(time.Second))
	if !strings.Contains(h.logs.String(), "vm idle too long; destroying it") {
		t.Fatal("no idle-destroy decision in the daemon log")
	}
	if ps := qemuProcsFor(vm.ID); len(ps) != 0 {
		t.Fatalf("hypervisor left: %v", ps)
	}
}

// TestHibernatedSurvivesKill: kill -9 of the daemon while a VM is
// hibernated and the warm browser pool is full leaves no stray process and
// loses nothing: after a restart the VM is still hibernated and resumes on
// exec with its process and file, and the same pool VM (same hypervisor
// process) is adopted without a new template or clone.
func TestHibernatedSurvivesKill(t *testing.T) {
	requireVMs(t, "base", "browser")
	dataDir := newCrashDataDir(t)
	cleanupVMs(t, dataDir)
	pool := "HANGAR_BROWSER_POOL_SIZE=1"
	p := startServeProc(t, dataDir, pool)
	c := adminClient(t, dataDir, p.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	v, err := c.CreateVM(ctx, api.CreateVMRequest{Kind: api.KindBase})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitVM(ctx, v.ID, api.VMReady); err != nil {
		t.Fatal(err)
	}
	res, err := c.Exec(ctx, v.ID, api.ExecRequest{Argv: []string{"sh", "-c", "echo kept > /var/tmp/kept && setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!"}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("exec: %+v %v", res, err)
	}
	pid := strings.TrimSpace(res.Stdout)
	if _, err := c.HibernateVM(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	poolReady := func(url string) bool {
		resp, err := http.Get(url + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "\nhangar_browser_pool_ready 1\n")
	}
	if err := eventually(8*time.Minute, func() bool { return poolReady(p.URL) }); err != nil {
		t.Fatal("warm pool not full within 8m")
	}
	procs, _ := vm.ScanHypervisors(dataDir)
	if len(procs) != 1 || procs[0].VMID == v.ID {
		t.Fatalf("hypervisors before the kill: %+v, want only the pool vm's", procs)
	}
	poolVM := procs[0]
	p.Stop(t, syscall.SIGKILL, 30*time.Second)

	p = startServeProc(t, dataDir, pool)
	c = adminClient(t, dataDir, p.URL)
	got, err := c.GetVM(ctx, v.ID)
	if err != nil || got.State != api.VMHibernated || got.Hibernation == nil {
		t.Fatalf("after restart: %+v, %v", got, err)
	}
	res, err = c.Exec(ctx, v.ID, api.ExecRequest{Argv: []string{"sh", "-c", "kill -0 " + pid + " && cat /var/tmp/kept"}})
	if err != nil || res.ExitCode != 0 || strings.TrimSpace(res.Stdout) != "kept" {
		t.Fatalf("after restart and resume: %+v, %v", res, err)
	}
	if !poolReady(p.URL) {
		t.Fatal("the warm pool is not ready after the restart")
	}
	if strings.Contains(p.Logs(), "template build: booting") || strings.Contains(p.Logs(), "vm cloned from template") {
		t.Fatal("the restarted daemon built a template or cloned again instead of adopting its pool")
	}
	procs, _ = vm.ScanHypervisors(dataDir)
	found := false
	for _, pr := range procs {
		found = found || pr.VMID == poolVM.VMID && pr.PID == poolVM.PID
	}
	if !found {
		t.Fatalf("pool vm %s (pid %d) not kept across the restart: %+v", poolVM.VMID, poolVM.PID, procs)
	}
	vms, err := c.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkNoOrphans(t, dataDir, append(vms, api.VM{ID: poolVM.VMID, State: api.VMReady}))
	if err := c.DeleteVM(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
}

// TestHibernateDiskFull: when the snapshot does not fit on its file system
// the hibernation fails with the reason, the VM keeps running (same
// process, exec works) and no partial snapshot is left.
func TestHibernateDiskFull(t *testing.T) {
	requireVMs(t, "base")
	h := startDaemon(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	v := h.createReady(h.admin, api.KindBase, 3*time.Minute)
	dir := filepath.Join(h.dataDir, "vms", v.ID, "hibernation")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// 4 MiB: far less than the ~40 MiB a base VM's state takes.
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=4m,mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	out := h.exec(h.admin, v.ID, "sh", "-c", "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!")
	pid := strings.TrimSpace(out.Stdout)
	before := qemuProcsFor(v.ID)
	_, err := h.admin.HibernateVM(ctx, v.ID)
	if err == nil || !strings.Contains(err.Error(), "keeps running") || !strings.Contains(err.Error(), "MiB free") {
		t.Fatalf("hibernate onto a full disk: %v, want a failure saying the vm keeps running", err)
	}
	t.Logf("hibernate onto a full disk: %v", err)
	got, err := h.admin.GetVM(ctx, v.ID)
	if err != nil || got.State != api.VMReady {
		t.Fatalf("after a failed hibernation: %+v, %v", got.State, err)
	}
	if after := qemuProcsFor(v.ID); len(after) != 1 || len(before) != 1 || after[0] != before[0] {
		t.Fatalf("hypervisor changed: before %v, after %v", before, after)
	}
	if out := h.exec(h.admin, v.ID, "kill", "-0", pid); out.ExitCode != 0 {
		t.Fatalf("process gone after a failed hibernation: %+v", out)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Fatalf("partial snapshot left: %v", ents)
	}
}
