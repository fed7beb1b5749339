package e2e

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/pkg/api"
)

// TestFrozenVMIsReportedUnresponsive freezes a ready VM's hypervisor
// (SIGSTOP, as a hung QEMU or a host under pressure would look) and checks
// what a user sees: an exec with timeout_s 5 fails with 503 soon after its
// timeout instead of hanging, the VM is marked unresponsive, calls then
// fail fast, and after a thaw the VM answers again through a redialled
// link.
func TestFrozenVMIsReportedUnresponsive(t *testing.T) {
	requireVMs(t, "base")
	h := startDaemon(t, nil)
	ctx := context.Background()
	vm := h.createReady(h.admin, api.KindBase, 3*time.Minute)
	procs := qemuProcsFor(vm.ID)
	if len(procs) != 1 {
		t.Fatalf("qemu processes for %s: %q", vm.ID, procs)
	}
	pid, err := strconv.Atoi(strings.SplitN(procs[0], ":", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	defer thaw()
	frozenAt := time.Now()

	began := time.Now()
	_, err = h.admin.Exec(ctx, vm.ID, api.ExecRequest{Argv: []string{"true"}, TimeoutS: 5})
	took := time.Since(began)
	t.Logf("MEASURED exec timeout_s=5 against a frozen VM: %v after %v", err, took.Round(time.Millisecond))
	if !isStatus(err, 503) || took > 15*time.Second {
		t.Fatalf("exec against a frozen VM: %v after %v; want 503 within 15 s", err, took)
	}

	var got api.VM
	if err := eventually(60*time.Second, func() bool {
		got, err = h.admin.GetVM(ctx, vm.ID)
		return err == nil && got.Unresponsive
	}); err != nil {
		t.Fatalf("frozen VM not reported unresponsive within 60 s: %+v", got)
	}
	t.Logf("MEASURED frozen VM reported unresponsive after %v (since %v)", time.Since(frozenAt).Round(time.Second), got.UnresponsiveSince)
	if got.State != api.VMReady || got.UnresponsiveSince == nil {
		t.Fatalf("unresponsive VM: %+v", got)
	}
	began = time.Now()
	_, err = h.admin.Exec(ctx, vm.ID, api.ExecRequest{Argv: []string{"true"}, TimeoutS: 5})
	if !isStatus(err, 503) || time.Since(began) > 2*time.Second || !strings.Contains(errString(err), "unresponsive") {
		t.Fatalf("exec against an unresponsive VM: %v after %v; want a fast 503 saying unresponsive", err, time.Since(began))
	}

	thaw()
	thawAt := time.Now()
	if err := eventually(60*time.Second, func() bool {
		got, err = h.admin.GetVM(ctx, vm.ID)
		return err == nil && !got.Unresponsive
	}); err != nil {
		t.Fatalf("thawed VM still unresponsive after 60 s: %+v", got)
	}
	t.Logf("MEASURED thawed VM responsive again after %v", time.Since(thawAt).Round(time.Second))
	out := h.exec(h.admin, vm.ID, "echo", "back")
	if out.ExitCode != 0 || out.Stdout != "back\n" {
		t.Fatalf("exec after thaw: %+v", out)
	}
}

// TestStopSurvivesClientDisconnect: a client that asks for a stop and goes
// away at once (a closed laptop, a CLI killed with Ctrl-C) still gets a
// graceful stop: the guest syncs, so a file written just before is there
// after the next start. On the request's context the stop became a kill
// and the unsynced write was lost.
func TestStopSurvivesClientDisconnect(t *testing.T) {
	requireVMs(t, "base")
	h := startDaemon(t, nil)
	ctx := context.Background()
	vm := h.createReady(h.admin, api.KindBase, 3*time.Minute)
	// Written to the page cache only: ext4 commits every 5 s, and the stop
	// follows at once.
	if out := h.exec(h.admin, vm.ID, "sh", "-c", "echo survived > /root/marker"); out.ExitCode != 0 {
		t.Fatalf("write marker: %+v", out)
	}
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := h.admin.StopVM(sctx, vm.ID)
	cancel()
	t.Logf("stop with a client that left after 300ms: %v", err)
	if _, err := h.admin.WaitVM(ctx, vm.ID, api.VMStopped); err != nil {
		t.Fatal(err)
	}
	if logs := h.logs.String(); strings.Contains(logs, "graceful shutdown through the agent failed") || strings.Contains(logs, "did not power off in time") {
		t.Fatalf("the stop was not graceful; daemon log:\n%s", tailOf(h.logs.String(), 3000))
	}
	if _, err := h.admin.StartVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer wcancel()
	if _, err := h.admin.WaitVM(wctx, vm.ID, api.VMReady); err != nil {
		t.Fatal(err)
	}
	if out := h.exec(h.admin, vm.ID, "cat", "/root/marker"); out.Stdout != "survived\n" {
		t.Fatalf("marker after stop and start: %+v; the stop lost unsynced data", out)
	}
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
