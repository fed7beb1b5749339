// Package e2e boots real VMs under QEMU from the real cached images, through
// a real daemon and its HTTP API. It needs root, QEMU and the images built
// by `make images` (hangar image build --all); without them the tests skip
// with the reason, and under CI=true they fail.
package e2e

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/daemon"
	"github.com/hangar-vm/hangar/internal/image"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// imagesDir is the shared image cache the tests boot from.
func imagesDir() string {
	return filepath.Join(config.ResolveDataDir(""), "images")
}

// requireVMs skips (or fails under CI) unless this host can boot the
// flavors' images.
func requireVMs(t *testing.T, flavors ...string) {
	t.Helper()
	testutil.Require(t, os.Geteuid() == 0, "VM tests need root")
	_, err := exec.LookPath("qemu-system-x86_64")
	testutil.Require(t, err == nil, "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
	cache := image.NewCache(filepath.Dir(imagesDir()), testutil.Logger(t))
	for _, f := range flavors {
		_, err := cache.Lookup(context.Background(), f)
		testutil.Require(t, err == nil, "image "+f+" is not built in "+imagesDir()+" (run: make images): "+errString(err))
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// harness is one daemon in-process on a temporary data directory that
// shares the image cache.
type harness struct {
	t       *testing.T
	d       *daemon.Daemon
	url     string
	dataDir string
	admin   *client.Client
	stop    func()
	// logs holds everything the daemon logged, for secret scans.
	logs *syncBuffer
}

// syncBuffer is testutil.Buffer, a builder safe for concurrent writers.
type syncBuffer = testutil.Buffer

func startDaemon(t *testing.T, mutate func(*config.Config)) *harness {
	t.Helper()
	dataDir := t.TempDir()
	if err := os.Symlink(imagesDir(), filepath.Join(dataDir, "images")); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.DataDir = dataDir
	cfg.Listen = "127.0.0.1:0"
	cfg.BuildImages = false
	cfg.LogLevel = "debug"
	// Networking is on by default, in the daemon's own namespace: here
	// that would be the machine's. Tests about the network turn it on
	// with HostNetNS set to a namespace they created (network_test.go).
	cfg.Network.Enabled = false
	// The warm browser pool would boot a browser template in every test;
	// the tests about it turn it on.
	cfg.BrowserPoolSize = 0
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(testutil.NewWriter(t), logs), &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := daemon.New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	addr, err := d.Listen()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx) }()
	key, err := os.ReadFile(filepath.Join(dataDir, daemon.AdminKeyFile))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	h := &harness{t: t, d: d, url: "http://" + addr.String(), dataDir: dataDir,
		admin: client.New("http://"+addr.String(), strings.TrimSpace(string(key))), logs: logs}
	stopped := false
	h.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		<-done
	}
	t.Cleanup(func() {
		// VMs outlive a daemon by design; a test must not leave any.
		if !stopped {
			cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
			vms, _ := h.admin.ListVMs(cctx)
			for _, v := range vms {
				if err := h.admin.DeleteVM(cctx, v.ID); err != nil {
					t.Errorf("cleanup: delete %s: %v", v.ID, err)
				}
			}
			ccancel()
		}
		h.stop()
	})
	return h
}

// createReady creates a VM and waits until it is ready.
func (h *harness) createReady(c *client.Client, kind string, within time.Duration) api.VM {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	vm, err := c.CreateVM(ctx, api.CreateVMRequest{Kind: kind})
	if err != nil {
		h.t.Fatalf("create %s vm: %v", kind, err)
	}
	if vm.State != api.VMCreating {
		h.t.Fatalf("new vm state %q, want creating", vm.State)
	}
	ready, err := c.WaitVM(ctx, vm.ID, api.VMReady)
	if err != nil {
		var logs strings.Builder
		_ = c.Logs(context.Background(), vm.ID, "", false, &logs)
		h.t.Fatalf("vm %s not ready: %v\nconsole:\n%s", vm.ID, err, logs.String())
	}
	return ready
}

func (h *harness) exec(c *client.Client, id string, argv ...string) api.ExecResponse {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := c.Exec(ctx, id, api.ExecRequest{Argv: argv, TimeoutS: 60})
	if err != nil {
		h.t.Fatalf("exec %v in %s: %v", argv, id, err)
	}
	return out
}

func isStatus(err error, status int) bool { return client.IsStatus(err, status) }

var errTimeout = errors.New("timed out")

// eventually polls cond every 100ms until it holds or within passes.
func eventually(within time.Duration, cond func() bool) error {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return errTimeout
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}
