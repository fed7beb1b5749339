package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// TestHibernateResume: a hibernated VM has no hypervisor and a private
// snapshot on disk; an exec resumes it transparently with a process started
// before still running, a file written before intact and its clock
// corrected; a truncated snapshot fails the VM with the reason, starts no
// hypervisor, and keeps the disk, from which the VM boots again.
func TestHibernateResume(t *testing.T) {
	requireVMs(t, "base")
	h := startDaemon(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	alice, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	ac := client.New(h.url, alice.APIKey)
	vm := h.createReady(ac, api.KindBase, 3*time.Minute)

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
