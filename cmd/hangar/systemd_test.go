package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/testutil"
)

// TestSystemdUnitVerifies runs systemd-analyze verify on the shipped unit,
// with ExecStart pointing at the binary just built (verify checks that it
// exists and is executable).
func TestSystemdUnitVerifies(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	testutil.Require(t, err == nil, "systemd-analyze is not installed (apt-get install systemd)")
	unit, err := os.ReadFile("../../deploy/systemd/hangar.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "hangar.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/hangar", hangarBin(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	// verify also reports unrelated units of the host it runs on; only
	// lines about this unit count.
	var ours []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "hangar.service") {
			ours = append(ours, l)
		}
	}
	if len(ours) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, strings.Join(ours, "\n"))
	}
	for _, want := range []string{"Type=notify", "KillMode=process", "ExecReload="} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("the unit lacks %s", want)
		}
	}
}

// TestServeNotifiesSystemd runs the daemon with NOTIFY_SOCKET as systemd
// would and checks it reports READY=1 once serving, READY=1 again after a
// SIGHUP reload, and STOPPING=1 on SIGTERM.
func TestServeNotifiesSystemd(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	next := func(want string) {
		t.Helper()
		select {
		case m := <-msgs:
			if !strings.Contains(m, want) {
				t.Fatalf("notification %q, want %s", m, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no %s notification", want)
		}
	}
	p := startServe(t, []string{"NOTIFY_SOCKET=" + sock}, "--data-dir", t.TempDir())
	next("READY=1")
	if err := p.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	next("RELOADING=1")
	next("READY=1")
	p.Stop(t, syscall.SIGTERM, 30*time.Second)
	next("STOPPING=1")
}
