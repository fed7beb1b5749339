package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hangar-vm/hangar/internal/vmm"
)

// migrateBandwidth lifts QEMU 7.2's default migration cap (32 MiB/s): a
// snapshot of a paused VM should go as fast as the disk takes it.
const migrateBandwidth = 64 << 30

// Snapshot implements vmm.Handle. QEMU 7.2 (Debian 12) has no "file:"
// migration URI (added in 8.2), so the state goes through
// "exec:cat > <file>"; the file is fsynced and renamed into place only
// once the migration completed. Completing a migration makes QEMU flush
// and inactivate its block devices, so the upper disk's contents on the
// host match the memory state; `cont` (Resume) re-activates them.
func (h *handle) Snapshot(ctx context.Context, dir string, opts vmm.SnapshotOptions) (vmm.SnapshotMeta, error) {
	var meta vmm.SnapshotMeta
	if err := h.Live(); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: %w", h.VMID, err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: %w", h.VMID, err)
	}
	began := time.Now()
	if err := h.qmp.Execute(ctx, "stop", nil, nil); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: pause: %w", h.VMID, err)
	}
	if err := h.qmp.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": migrateBandwidth}, nil); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: %w", h.VMID, err)
	}
	tmp := filepath.Join(dir, stateFileName+".tmp")
	final := filepath.Join(dir, stateFileName)
	_ = os.Remove(tmp)
	if err := h.qmp.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > " + shellQuote(tmp)}, nil); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: %w", h.VMID, err)
	}
	mi, err := h.waitMigration(ctx)
	if err != nil {
		// Leave no half-written state behind; the VM stays paused.
		_ = h.qmp.Execute(context.WithoutCancel(ctx), "migrate_cancel", nil, nil)
		_ = os.Remove(tmp)
		return meta, fmt.Errorf("snapshot vm %s: %w", h.VMID, err)
	}
	if err := vmm.SyncPath(tmp); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: %w", h.VMID, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: %w", h.VMID, err)
	}
	if h.spec.UpperDisk != "" {
		if err := vmm.SyncPath(h.spec.UpperDisk); err != nil {
			return meta, fmt.Errorf("snapshot vm %s: %w", h.VMID, err)
		}
	}
	meta = vmm.SnapshotMeta{
		Driver:       DriverName,
		ID:           h.VMID,
		CreatedAt:    time.Now().UTC(),
		Accel:        h.accel,
		VCPUs:        h.spec.VCPUs,
		MemoryMiB:    h.spec.MemoryMiB,
		HasUpperDisk: h.spec.UpperDisk != "",
		HasNet:       h.spec.Net != nil,
		StateFile:    stateFileName,
		SizeBytes:    vmm.FileSize(final),
		Agent:        h.Agent(),
	}
	if opts.CopyUpperDisk && h.spec.UpperDisk != "" {
		if err := vmm.CopySparse(ctx, h.spec.UpperDisk, filepath.Join(dir, "upper.img")); err != nil {
			return meta, fmt.Errorf("snapshot vm %s: %w", h.VMID, err)
		}
		meta.UpperDiskCopy = "upper.img"
	}
	meta.Duration = time.Since(began)
	if err := vmm.WriteSnapshotMeta(dir, meta); err != nil {
		return meta, fmt.Errorf("snapshot vm %s: %w", h.VMID, err)
	}
	h.d.log.Info("qemu snapshot written", "vm_id", h.VMID, "dir", dir, "size_bytes", meta.SizeBytes,
		"duration_ms", meta.Duration.Milliseconds(), "migration_ms", mi.TotalTime)
	return meta, nil
}

// waitMigration polls query-migrate until the migration ends. Polling is
// used rather than MIGRATION events because QEMU only sends those when
// the "events" capability is on, and polling works on both sides.
func (h *handle) waitMigration(ctx context.Context) (MigrationInfo, error) {
	for {
		mi, err := h.qmp.QueryMigrate(ctx)
		if err != nil {
			return mi, err
		}
		switch mi.Status {
		case "completed":
			return mi, nil
		case "failed", "cancelled":
			return mi, fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return mi, fmt.Errorf("migration %s: %w", mi.Status, ctx.Err())
		case <-h.Proc.Done():
			return mi, fmt.Errorf("migration: %w", vmm.ErrNotRunning)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// restore loads the state file into a QEMU started with -incoming defer
// -S and continues the guest.
func (h *handle) restore(ctx context.Context, stateFile string) error {
	if _, err := os.Stat(stateFile); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := h.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "exec:cat " + shellQuote(stateFile)}, nil); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if _, err := h.waitMigration(ctx); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := h.qmp.Execute(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	return nil
}

// shellQuote quotes s for /bin/sh, which QEMU runs exec: URIs with.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
