package vm

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// TestCreateRefusedWithoutHeadroom: a create the data disk cannot hold is
// refused at once with a no-space error and leaves no record, instead of
// reporting ready and pausing on the guest's first large write. The disk
// here is the real one; the VM's disk is made larger than its free space.
func TestCreateRefusedWithoutHeadroom(t *testing.T) {
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	freeMiB := int(st.Bavail * uint64(st.Bsize) >> 20)
	ctx := context.Background()
	s, err := store.Open(ctx, filepath.Join(dir, "hangar.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := New(Config{DataDir: dir, UpperDiskMiB: freeMiB + 1024}, s, nil, nil, nil, slog.New(slog.DiscardHandler))
	owner := store.User{ID: "u1", Role: "admin"}
	_, err = m.Create(ctx, owner, api.CreateVMRequest{Kind: api.KindCLI})
	var e *errs.Error
	if !errors.As(err, &e) || e.Kind != errs.NoSpace {
		t.Fatalf("create with %d MiB free for a %d MiB disk = %v, want a no-space error", freeMiB, freeMiB+1024, err)
	}
	if vs, err := s.ListVMs(ctx, ""); err != nil || len(vs) != 0 {
		t.Fatalf("refused create left records: %v, %v", vs, err)
	}
	// With room, the headroom check passes.
	m.cfg.UpperDiskMiB = 1
	if err := m.checkHeadroom(api.KindCLI); err != nil {
		t.Fatalf("headroom with room: %v", err)
	}
}
