package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/internal/vm"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// These tests run `hangar serve` as a separate process so it can be killed
// with SIGKILL or stopped with SIGTERM, and restarted on the same data dir.

func buildHangar(t *testing.T) string {
	t.Helper()
	return testutil.BuildBinary(t, "../../cmd/hangar")
}

// serveProc is one `hangar serve` process on a data dir.
type serveProc = testutil.DaemonProcess

// startServeProc starts the daemon on dataDir with extra HANGAR_* env and
// waits until it serves.
func startServeProc(t *testing.T, dataDir string, env ...string) *serveProc {
	t.Helper()
	return startServeProcIn(t, "", dataDir, env...)
}

// startServeProcIn is startServeProc with the daemon inside the named
// network namespace ns (empty: the test's own). Only the network
// namespace is entered (nsenter --net, no new mount namespace), so the
// slot namespaces the daemon bind-mounts under /run/netns stay visible to
// the test and to the next daemon. The API then listens on the loopback of
// ns; the returned URL is a relay to it from the test's loopback.
func startServeProcIn(t *testing.T, ns, dataDir string, env ...string) *serveProc {
	t.Helper()
	argv := []string{buildHangar(t), "serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0"}
	if ns != "" {
		argv = append([]string{"nsenter", "--net=/run/netns/" + ns, "--"}, argv...)
	}
	base := []string{"HANGAR_BUILD_IMAGES=false", "HANGAR_LOG_LEVEL=debug", "HANGAR_BROWSER_POOL_SIZE=0"}
	if ns == "" {
		// Networking defaults to on, in the daemon's namespace, which is
		// the machine's here: only a daemon in a test namespace gets it.
		base = append(base, "HANGAR_NETWORK=false")
	}
	p := testutil.StartDaemonProcess(t, argv, append(base, env...), 90*time.Second)
	if ns != "" {
		p.URL = "http://" + relayInto(t, ns, strings.TrimPrefix(p.URL, "http://"))
	}
	return p
}

func newCrashDataDir(t *testing.T) string {
	t.Helper()
	dataDir := t.TempDir()
	if err := os.Symlink(imagesDir(), filepath.Join(dataDir, "images")); err != nil {
		t.Fatal(err)
	}
	return dataDir
}

func adminClient(t *testing.T, dataDir, url string) *client.Client {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(dataDir, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	return client.New(url, strings.TrimSpace(string(key)))
}

// cleanupVMs kills whatever hypervisors of dataDir are left, so a failing
// test does not leave processes behind.
func cleanupVMs(t *testing.T, dataDir string) {
	t.Cleanup(func() {
		procs, _ := vm.ScanHypervisors(dataDir)
		for _, p := range procs {
			_ = vm.KillProcess(p, 5*time.Second)
		}
	})
}

// checkNoOrphans asserts that every hypervisor process of dataDir belongs
// to a VM the API reports ready (one each), and every run directory to a
// VM that is not destroyed.
func checkNoOrphans(t *testing.T, dataDir string, vms []api.VM) {
	t.Helper()
	live := map[string]bool{}
	exists := map[string]bool{}
	for _, v := range vms {
		exists[v.ID] = v.State != api.VMDestroyed
		live[v.ID] = v.State == api.VMReady
	}
	procs, err := vm.ScanHypervisors(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, p := range procs {
		per[p.VMID]++
		if !live[p.VMID] {
			t.Errorf("orphan hypervisor process %d (%s) for vm %s, which is not ready", p.PID, p.Exe, p.VMID)
		}
	}
	for id, n := range per {
		if n > 1 {
			t.Errorf("vm %s has %d hypervisor processes", id, n)
		}
	}
	for id, ok := range live {
		if ok && per[id] != 1 {
			t.Errorf("ready vm %s has %d hypervisor processes, want 1", id, per[id])
		}
	}
	ents, _ := os.ReadDir(filepath.Join(dataDir, "vms"))
	for _, e := range ents {
		if !exists[e.Name()] {
			t.Errorf("run directory %s has no live vm", e.Name())
		}
	}
}

// TestKillDuringCreate kills the daemon with SIGKILL while five VMs are
// being created, restarts it, and checks that within 60 s every VM is ready
// or failed with a reason and nothing is orphaned.
//
// The daemon runs with networking on inside a namespace the test made, so
// the check covers slots too: no slot namespace, host veth or nftables
// table that no live VM (or the idle pool) accounts for, and none at all
// once every VM is deleted and the daemon stopped.
func TestKillDuringCreate(t *testing.T) {
	requireVMs(t, "base")
	dataDir := newCrashDataDir(t)
	cleanupVMs(t, dataDir)
	hostNS := "e2ek" + strconv.Itoa(os.Getpid()%100000)
	ipCmd(t, "netns", "add", hostNS)
	t.Cleanup(func() { cleanupSlots(hostNS, "e2ek") })
	ipCmd(t, "-n", hostNS, "link", "set", "lo", "up")
	env := []string{"HANGAR_RECONCILE_INTERVAL=5s", "HANGAR_NETWORK=true", "HANGAR_NETWORK_PREFIX=e2ek"}
	p := startServeProcIn(t, hostNS, dataDir, env...)
	c := adminClient(t, dataDir, p.URL)
	ctx := context.Background()

	var ids []string
	for range 5 {
		v, err := c.CreateVM(ctx, api.CreateVMRequest{Kind: api.KindBase})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.ID)
	}
	// Let some hypervisors spawn, but not boot: kill in the middle.
	if err := eventually(30*time.Second, func() bool {
		procs, _ := vm.ScanHypervisors(dataDir)
		return len(procs) >= 2
	}); err != nil {
		t.Fatal("no hypervisor spawned within 30s")
	}
	procs, _ := vm.ScanHypervisors(dataDir)
	p.Stop(t, syscall.SIGKILL, 60*time.Second)
	t.Logf("killed the daemon with %d hypervisor processes running", len(procs))

	restart := time.Now()
	p = startServeProcIn(t, hostNS, dataDir, env...)
	c = adminClient(t, dataDir, p.URL)
	var vms []api.VM
	err := eventually(60*time.Second, func() bool {
		vms = vms[:0]
		for _, id := range ids {
			v, err := c.GetVM(ctx, id)
			if err != nil {
				return false
			}
			if v.State != api.VMReady && v.State != api.VMFailed {
				return false
			}
			vms = append(vms, v)
		}
		return true
	})
	if err != nil {
		for _, id := range ids {
			v, _ := c.GetVM(ctx, id)
			t.Logf("vm %s: %s %s", id, v.State, v.LastError)
		}
		t.Fatal("not every vm was ready or failed within 60s of the restart")
	}
	ready := 0
	for _, v := range vms {
		if v.State == api.VMFailed && strings.TrimSpace(v.LastError) == "" {
			t.Errorf("vm %s failed without a reason", v.ID)
		}
		if v.State == api.VMReady {
			ready++
			out, err := c.Exec(ctx, v.ID, api.ExecRequest{Argv: []string{"true"}, TimeoutS: 30})
			if err != nil || out.ExitCode != 0 {
				t.Errorf("exec in re-attached or rebooted vm %s: %v %+v", v.ID, err, out)
			}
		}
	}
	t.Logf("after restart: %d of 5 ready, the rest failed; settled in %s", ready, time.Since(restart).Round(time.Millisecond))
	// The periodic pass (5 s here) catches what the start pass could not.
	time.Sleep(6 * time.Second)
	checkNoOrphans(t, dataDir, vms)
	checkSlots(t, hostNS, "e2ek", dataDir, vms, 2)

	for _, id := range ids {
		if err := c.DeleteVM(ctx, id); err != nil {
			t.Errorf("delete %s: %v", id, err)
		}
	}
	p.Stop(t, syscall.SIGTERM, 60*time.Second)
	checkSlots(t, hostNS, "e2ek", dataDir, nil, 0)
	if tables := nftTables(t, hostNS); len(tables) != 0 {
		t.Errorf("nftables tables left in the daemon's namespace after every vm is gone and the daemon stopped: %v", tables)
	}
	if procs, _ := vm.ScanHypervisors(dataDir); len(procs) != 0 {
		t.Errorf("hypervisor processes left after deleting every vm: %+v", procs)
	}
	if ents, _ := os.ReadDir(filepath.Join(dataDir, "vms")); len(ents) != 0 {
		t.Errorf("%d run directories left after deleting every vm", len(ents))
	}
}

// guestUptime reads /proc/uptime in the VM.
func guestUptime(t *testing.T, c *client.Client, id string) float64 {
	t.Helper()
	out, err := c.Exec(context.Background(), id, api.ExecRequest{Argv: []string{"cat", "/proc/uptime"}, TimeoutS: 30})
	if err != nil || out.ExitCode != 0 {
		t.Fatalf("exec in %s: %v %+v", id, err, out)
	}
	f := strings.Fields(out.Stdout)
	if len(f) == 0 {
		t.Fatalf("uptime output %q", out.Stdout)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestSIGTERMReattach stops the daemon with SIGTERM while CLI VMs run
// (shutdown policy leave), restarts it, and checks the VMs are re-attached,
// still ready, and exec works without a reboot.
func TestSIGTERMReattach(t *testing.T) {
	requireVMs(t, "cli")
	dataDir := newCrashDataDir(t)
	cleanupVMs(t, dataDir)
	p := startServeProc(t, dataDir)
	c := adminClient(t, dataDir, p.URL)
	ctx := context.Background()

	var ids []string
	for range 2 {
		v, err := c.CreateVM(ctx, api.CreateVMRequest{Kind: api.KindCLI})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.ID)
	}
	up := map[string]float64{}
	pids := map[string]int{}
	for _, id := range ids {
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		if _, err := c.WaitVM(wctx, id, api.VMReady); err != nil {
			cancel()
			t.Fatalf("vm %s not ready: %v", id, err)
		}
		cancel()
		up[id] = guestUptime(t, c, id)
	}
	procs, _ := vm.ScanHypervisors(dataDir)
	for _, pr := range procs {
		pids[pr.VMID] = pr.PID
	}
	p.Stop(t, syscall.SIGTERM, 60*time.Second)
	if procs, _ := vm.ScanHypervisors(dataDir); len(procs) != len(ids) {
		t.Fatalf("after SIGTERM %d hypervisors run, want %d (policy leave)", len(procs), len(ids))
	}

	p = startServeProc(t, dataDir)
	c = adminClient(t, dataDir, p.URL)
	for _, id := range ids {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		v, err := c.WaitVM(wctx, id, api.VMReady)
		cancel()
		if err != nil {
			t.Fatalf("vm %s after restart: %v", id, err)
		}
		if v.BootPhases == nil || v.BootPhases.TotalMS == 0 {
			t.Errorf("vm %s lost its boot phases", id)
		}
		now := guestUptime(t, c, id)
		if now < up[id] {
			t.Errorf("vm %s uptime %.1fs after restart < %.1fs before: it rebooted", id, now, up[id])
		}
		t.Logf("vm %s: uptime %.1fs before, %.1fs after the daemon restart", id, up[id], now)
	}
	procs, _ = vm.ScanHypervisors(dataDir)
	for _, pr := range procs {
		if pids[pr.VMID] != pr.PID {
			t.Errorf("vm %s runs in pid %d, was %d", pr.VMID, pr.PID, pids[pr.VMID])
		}
	}
	for _, id := range ids {
		if err := c.DeleteVM(ctx, id); err != nil {
			t.Errorf("delete %s: %v", id, err)
		}
	}
}

// TestDestroyTaskSurvivesKill claims a vm.destroy task, kills the daemon
// while the task runs (the VM is frozen with SIGSTOP, so its graceful
// shutdown hangs), restarts, and checks the task runs to completion.
func TestDestroyTaskSurvivesKill(t *testing.T) {
	requireVMs(t, "base")
	dataDir := newCrashDataDir(t)
	cleanupVMs(t, dataDir)
	env := []string{"HANGAR_TASK_LEASE=3s"}
	p := startServeProc(t, dataDir, env...)
	c := adminClient(t, dataDir, p.URL)
	ctx := context.Background()
	v, err := c.CreateVM(ctx, api.CreateVMRequest{Kind: api.KindBase})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	if _, err := c.WaitVM(wctx, v.ID, api.VMReady); err != nil {
		cancel()
		t.Fatal(err)
	}
	cancel()
	procs, _ := vm.ScanHypervisors(dataDir)
	if len(procs) != 1 {
		t.Fatalf("%d hypervisors, want 1", len(procs))
	}
	qemu := procs[0].PID
	if err := syscall.Kill(qemu, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(qemu, syscall.SIGCONT)

	// Enqueue through the store, as the login code does in-process.
	st, err := store.Open(ctx, filepath.Join(dataDir, "hangar.db"), testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(vm.DestroyTask{VMID: v.ID})
	task, err := st.EnqueueTask(ctx, store.Task{Kind: vm.DestroyTaskKind, Payload: payload})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	err = eventually(20*time.Second, func() bool {
		tk, err := st.GetTask(ctx, task.ID)
		return err == nil && tk.State == store.TaskRunning
	})
	st.Close()
	if err != nil {
		t.Fatal("the daemon did not claim the vm.destroy task within 20s")
	}
	p.Stop(t, syscall.SIGKILL, 60*time.Second)
	t.Log("killed the daemon while it ran the vm.destroy task")
	_ = syscall.Kill(qemu, syscall.SIGCONT)

	p = startServeProc(t, dataDir, env...)
	c = adminClient(t, dataDir, p.URL)
	err = eventually(90*time.Second, func() bool {
		got, err := c.GetVM(ctx, v.ID)
		return isStatus(err, 404) || err == nil && got.State == api.VMDestroyed
	})
	if err != nil {
		got, _ := c.GetVM(ctx, v.ID)
		t.Fatalf("vm not destroyed after restart: %s %s", got.State, got.LastError)
	}
	if procs, _ := vm.ScanHypervisors(dataDir); len(procs) != 0 {
		t.Errorf("hypervisor left after the destroy task: %+v", procs)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "vms", v.ID)); !os.IsNotExist(err) {
		t.Errorf("run directory left after the destroy task: %v", err)
	}
}

// slotObjects lists the slot namespaces ("<prefix>-<n>") and the host veths
// ("<prefix>v<n>" in hostNS), by slot index.
func slotObjects(t *testing.T, hostNS, prefix string) (nss, links map[string]bool) {
	t.Helper()
	nss, links = map[string]bool{}, map[string]bool{}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if n, ok := strings.CutPrefix(e.Name(), prefix+"-"); ok {
			nss[n] = true
		}
	}
	out, err := exec.Command("ip", "-n", hostNS, "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip -n %s link: %v", hostNS, err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if n, ok := strings.CutPrefix(name, prefix+"v"); ok {
			links[n] = true
		}
	}
	return nss, links
}

// nftTables lists the nftables tables of namespace ns.
func nftTables(t *testing.T, ns string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables in %s: %v %s", ns, err, out)
	}
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(out)), "\n", ","))
}

// checkSlots asserts that every slot namespace and host veth of prefix
// belongs to a ready VM of vms (by the slot its record holds) or to the
// idle pool (at most pool of them), that each slot has both halves, that
// each ready VM's hypervisor runs inside its own slot's namespace, and
// that the daemon's namespace holds only hangar's table.
func checkSlots(t *testing.T, hostNS, prefix, dataDir string, vms []api.VM, pool int) {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(dataDir, "hangar.db"), testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	owner := map[string]string{} // slot index -> ready vm
	for _, v := range vms {
		if v.State != api.VMReady {
			continue
		}
		rec, err := st.GetVM(context.Background(), v.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		var rt struct {
			SlotID string `json:"slot_id"`
		}
		_ = json.Unmarshal(rec.Runtime, &rt)
		n, ok := strings.CutPrefix(rt.SlotID, prefix+"-")
		if !ok {
			t.Errorf("ready vm %s records no network slot (%q)", v.ID, rt.SlotID)
			continue
		}
		owner[n] = v.ID
	}
	nss, links := slotObjects(t, hostNS, prefix)
	idle := 0
	for n := range nss {
		if !links[n] {
			t.Errorf("slot namespace %s-%s has no host veth %sv%s", prefix, n, prefix, n)
		}
		if owner[n] == "" {
			idle++
		}
	}
	for n := range links {
		if !nss[n] {
			t.Errorf("host veth %sv%s is left without its slot namespace", prefix, n)
		}
	}
	if idle > pool {
		t.Errorf("%d slot namespaces belong to no live vm (the idle pool is %d): %v", idle, pool, nss)
	}
	procs, _ := vm.ScanHypervisors(dataDir)
	for n, id := range owner {
		if !nss[n] {
			t.Errorf("vm %s's slot %s-%s does not exist", id, prefix, n)
			continue
		}
		want, err := os.Stat("/run/netns/" + prefix + "-" + n)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, pr := range procs {
			if pr.VMID != id {
				continue
			}
			got, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", pr.PID))
			if err != nil || !os.SameFile(got, want) {
				t.Errorf("vm %s's hypervisor %d does not run in its slot namespace %s-%s", id, pr.PID, prefix, n)
			}
		}
	}
	if tables := nftTables(t, hostNS); len(vms) > 0 && (len(tables) != 3 || tables[2] != prefix) {
		t.Errorf("nftables tables in the daemon's namespace: %v, want only inet %s", tables, prefix)
	}
	t.Logf("slots: %d namespaces (%d of live vms, %d idle), %d host veths", len(nss), len(owner), idle, len(links))
}

// cleanupSlots removes whatever a failed test left of prefix's slots and
// the namespace hostNS itself.
func cleanupSlots(hostNS, prefix string) {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
	_ = exec.Command("ip", "netns", "del", hostNS).Run()
}
