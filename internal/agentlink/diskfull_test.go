package agentlink_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// TestPutFileOnAFullDisk: writing a file to a full filesystem is reported
// as no_space (507), not as a bad request. The agent runs in a helper
// process in its own mount namespace with a 256 KiB tmpfs, so nothing is
// mounted on the host.
func TestPutFileOnAFullDisk(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and unshare(1)")
	}
	dir, err := os.MkdirTemp("", "hdf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	small := filepath.Join(dir, "small")
	if err := os.Mkdir(small, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs -o size=256k tmpfs "$1" && exec "$0" -test.run='^$'`, os.Args[0], small)
	cmd.Env = append(os.Environ(), "HANGAR_TEST_AGENT_SOCK="+sock)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var c *agentlink.Client
	for c == nil {
		c, err = agentlink.DialQEMU(ctx, sock, agentlink.Options{Token: testToken})
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("dial the helper agent: %v\n%s", err, stderr.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	defer c.Close()
	// Within the space: written.
	if _, err := c.PutFile(ctx, agentlink.PutFileRequest{Path: filepath.Join(small, "fits")}, bytes.NewReader(make([]byte, 64<<10))); err != nil {
		t.Fatalf("a file that fits: %v", err)
	}
	_, err = c.PutFile(ctx, agentlink.PutFileRequest{Path: filepath.Join(small, "too-big")}, bytes.NewReader(make([]byte, 1<<20)))
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Code != proto.CodeNoSpace || pe.Status != 507 {
		t.Fatalf("PutFile on a full disk = %v, want no_space (507)", err)
	}
}
