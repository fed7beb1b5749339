package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/image"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/internal/vm"
	"github.com/hangar-vm/hangar/pkg/api"
)

// runHangar runs the CLI in-process and returns its output and error.
func runHangar(args ...string) (string, error) {
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

// TestDoctorAndGCLeftovers builds a data directory whose store knows one
// live VM (stopped) and one destroyed VM, plus a stray hypervisor process
// (a real process named qemu-system-x86_64 in an unknown VM's run
// directory) and run directories of the destroyed and the unknown VM; as
// root also a stray slot namespace and host link in a test namespace.
// doctor reports exactly the leftovers, gc refuses while an API answers at
// the configured address, then removes them and leaves the live VM's
// directory alone.
func TestDoctorAndGCLeftovers(t *testing.T) {
	// The data dir comes from the config file here, which the environment
	// would override.
	t.Setenv("HANGAR_DATA_DIR", "")
	ctx := context.Background()
	dataDir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dataDir, "hangar.db"), testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	u := store.User{ID: store.NewID("usr"), Name: "u", Role: store.RoleUser, CreatedAt: now}
	if err := st.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	for _, v := range []store.VM{
		{ID: "vm_live", OwnerID: u.ID, Kind: "base", State: api.VMStopped, CreatedAt: now, UpdatedAt: now},
		{ID: "vm_gone", OwnerID: u.ID, Kind: "base", State: api.VMDestroyed, CreatedAt: now, UpdatedAt: now},
	} {
		if err := st.CreateVM(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	for _, id := range []string{"vm_live", "vm_gone", "vm_unknown"} {
		if err := os.MkdirAll(filepath.Join(dataDir, "vms", id), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	stray := &exec.Cmd{Path: "/bin/sleep", Args: []string{"qemu-system-x86_64", "300"}, Dir: filepath.Join(dataDir, "vms", "vm_unknown")}
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = stray.Wait(); close(exited) }()
	t.Cleanup(func() { _ = stray.Process.Kill(); <-exited })

	prefix := fmt.Sprintf("gc%d", os.Getpid()%100000)
	netCfg := map[string]any{"prefix": prefix}
	rootNet := os.Geteuid() == 0
	if rootNet {
		hostNS := prefix + "h"
		t.Cleanup(func() {
			_ = exec.Command("ip", "netns", "del", hostNS).Run()
			_ = exec.Command("ip", "netns", "del", prefix+"-7").Run()
		})
		for _, args := range [][]string{
			{"netns", "add", hostNS}, {"netns", "add", prefix + "-7"},
			{"-n", hostNS, "link", "add", prefix + "v7", "type", "veth", "peer", "name", prefix + "p7"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v %s", args, err, out)
			}
		}
		netCfg["host_netns"] = "/run/netns/" + hostNS
	} else {
		t.Log("not root: the network slot part of this test is skipped (it needs to create namespaces)")
	}

	// An API answering at the configured address makes gc refuse.
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer api.Close()
	writeCfg := func(listen string) string {
		b, _ := json.Marshal(map[string]any{"listen": listen, "data_dir": dataDir, "network": netCfg})
		p := filepath.Join(t.TempDir(), "config.json")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	running := writeCfg(strings.TrimPrefix(api.URL, "http://"))
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	stopped := writeCfg(ln.Addr().String())
	ln.Close()

	out, _ := runHangar("doctor", "--json", "--config", stopped)
	var checks []image.Check
	if err := json.Unmarshal([]byte(out), &checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	var got []string
	for _, ch := range checks {
		if strings.HasPrefix(ch.Name, "leftover ") {
			got = append(got, ch.Name)
			if ch.OK || !ch.Warn || !strings.Contains(ch.Fix, "hangar gc") {
				t.Errorf("%s: want a warning that names hangar gc, got %+v", ch.Name, ch)
			}
		}
	}
	want := []string{
		"leftover process ",
		"leftover run_dir " + filepath.Join(dataDir, "vms", "vm_gone"),
		"leftover run_dir " + filepath.Join(dataDir, "vms", "vm_unknown"),
	}
	if rootNet {
		want = append(want, "leftover link "+prefix+"v7", "leftover netns "+prefix+"-7")
	}
	if len(got) != len(want) {
		t.Fatalf("doctor reports %d leftovers, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || strings.HasPrefix(g, w)
		}
		if !found {
			t.Errorf("doctor does not report %q; it reports:\n%s", w, strings.Join(got, "\n"))
		}
	}

	out, err = runHangar("gc", "--config", running)
	if err == nil || !strings.Contains(err.Error(), "stop the daemon first, or let it reconcile") {
		t.Fatalf("gc with an API answering: err %v, out %s", err, out)
	}
	if procs, _ := vm.ScanHypervisors(dataDir); len(procs) != 1 {
		t.Fatalf("the refused gc changed something: %d stray processes", len(procs))
	}

	out, err = runHangar("gc", "--config", stopped)
	if err != nil {
		t.Fatalf("gc: %v\n%s", err, out)
	}
	t.Logf("gc:\n%s", out)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("gc did not kill the stray hypervisor process")
	}
	for id, keep := range map[string]bool{"vm_live": true, "vm_gone": false, "vm_unknown": false} {
		_, err := os.Stat(filepath.Join(dataDir, "vms", id))
		if keep != (err == nil) {
			t.Errorf("run dir %s: exists=%v, want %v", id, err == nil, keep)
		}
	}
	if rootNet {
		if _, err := os.Stat("/run/netns/" + prefix + "-7"); err == nil {
			t.Error("gc left the stray slot namespace")
		}
		if out, _ := exec.Command("ip", "-n", prefix+"h", "link", "show", prefix+"v7").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
			t.Errorf("gc left the stray host link: %s", out)
		}
	}
	out, err = runHangar("gc", "--config", stopped)
	if err != nil || !strings.Contains(out, "nothing to remove") {
		t.Errorf("second gc: %v %s", err, out)
	}
}
