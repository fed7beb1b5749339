package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/image"
	"github.com/hangar-vm/hangar/internal/vm"
	"github.com/hangar-vm/hangar/internal/vmm"
	"github.com/hangar-vm/hangar/internal/vmm/firecracker"
	"github.com/hangar-vm/hangar/internal/vmm/qemu"
)

// imageSource adapts the image cache to the VM manager: it builds what is
// missing (a VM create waits for its image) and remembers what it verified,
// so only the first VM of a kind pays for the lookup.
type imageSource struct {
	cache *image.Cache
	log   *slog.Logger
	// vmlinux selects the uncompressed ELF kernel (Firecracker) instead
	// of the bzImage (QEMU).
	vmlinux bool

	mu     sync.Mutex // guards images
	images map[string]image.Image
}

func (s *imageSource) ensure(ctx context.Context, flavor string) (image.Image, error) {
	s.mu.Lock()
	img, ok := s.images[flavor]
	s.mu.Unlock()
	if ok {
		if _, err := os.Stat(img.Rootfs); err == nil {
			return img, nil
		}
	}
	img, err := s.cache.Ensure(ctx, flavor, image.SlogProgress{Log: s.log.With("flavor", flavor)})
	if err != nil {
		return image.Image{}, errs.Wrap(errs.Unavailable, err, "image %s is not available", flavor)
	}
	s.mu.Lock()
	s.images[flavor] = img
	s.mu.Unlock()
	return img, nil
}

// Boot implements vm.Images: the image of kind and the kernel it carries.
func (s *imageSource) Boot(ctx context.Context, kind string) (vm.BootImage, error) {
	img, err := s.ensure(ctx, kind)
	if err != nil {
		return vm.BootImage{}, err
	}
	kernel := img.Kernel.BzImage
	if s.vmlinux {
		kernel = img.Kernel.Vmlinux
	}
	return vm.BootImage{ID: img.ID, Rootfs: img.Rootfs, Kernel: kernel, KernelRelease: img.Kernel.Version}, nil
}

// newImageCache builds the agent from the source tree when the daemon runs
// inside one (as `hangar image build` does, so both agree on image ids);
// elsewhere it uses the hangar-agent installed beside the hangar binary.
func newImageCache(dataDir string, log *slog.Logger) *image.Cache {
	var opts []image.Option
	if _, err := image.FindSourceDir(); err != nil {
		if exe, err := os.Executable(); err == nil {
			agent := filepath.Join(filepath.Dir(exe), "hangar-agent")
			if _, err := os.Stat(agent); err == nil {
				opts = append(opts, image.WithAgentBinary(agent))
			}
		}
	}
	return image.NewCache(dataDir, log, opts...)
}

// newDriver picks the hypervisor: Firecracker needs its binary and usable
// KVM; QEMU runs everywhere else (with KVM when usable, else TCG).
func newDriver(cfg config.Config, log *slog.Logger) (vmm.Driver, error) {
	switch cfg.Hypervisor {
	case "firecracker":
		if err := firecracker.Available(""); err != nil {
			return nil, fmt.Errorf("hypervisor firecracker: %w", err)
		}
		log.Warn("the Firecracker driver has not been verified against a real Firecracker yet (see README)")
		return firecracker.New(firecracker.Config{Logger: log}), nil
	case "auto":
		if err := firecracker.Available(""); err == nil {
			log.Warn("the Firecracker driver has not been verified against a real Firecracker yet (see README)")
			return firecracker.New(firecracker.Config{Logger: log}), nil
		} else {
			log.Info("using QEMU", "firecracker", err.Error())
		}
		return qemu.New(qemu.Config{Accel: cfg.Accel, Logger: log})
	case "qemu":
		return qemu.New(qemu.Config{Accel: cfg.Accel, Logger: log})
	default:
		return nil, fmt.Errorf("unknown hypervisor %q", cfg.Hypervisor)
	}
}
