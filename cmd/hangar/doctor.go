package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/image"
)

// minFreeBytes is what a cold `hangar image build --all` needs in the data
// directory: a kernel tree (~1.5 GB while building), three root trees and
// three images (~5 GB), with room to spare.
const minFreeBytes = 10 << 30

func newDoctorCmd(o *rootOptions) *cobra.Command {
	var configFile string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what this host has and lacks for building images and running VMs",
		Long: `Checks the tools the image builds need (kernel build tools, debootstrap,
e2fsprogs, npm, Go), what running VMs needs (QEMU, Firecracker, a usable
/dev/kvm) and free disk in the data directory, each with how to fix it.
Also reports leftovers no VM record owns (hypervisor processes, run
directories, network slot namespaces and links, hangar's nftables table);
` + "`hangar gc`" + ` removes them with the daemon stopped.
Exits non-zero when something required is missing; Firecracker and KVM are
optional (without them VMs run on QEMU with TCG emulation, much slower).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(o, configFile)
			if err != nil {
				return err
			}
			dataDir := cfg.DataDir
			checks := image.KernelToolChecks("/usr/src/linux-source-6.1.tar.xz")
			checks = append(checks, image.RootfsToolChecks()...)
			checks = append(checks, runChecks()...)
			checks = append(checks, diskCheck(dataDir))
			checks = append(checks, leftoverChecks(cmd.Context(), cfg)...)
			if o.json {
				return writeJSON(cmd.OutOrStdout(), checks)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "STATUS\tCHECK\tNEEDED FOR\tDETAIL\tFIX")
			missing := 0
			for _, ch := range checks {
				status, fix := "OK", ""
				switch {
				case !ch.OK && ch.Warn:
					status, fix = "WARN", ch.Fix
				case !ch.OK:
					status, fix = "MISSING", ch.Fix
					missing++
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", status, ch.Name, ch.For, ch.Info, fix)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if missing > 0 {
				return fmt.Errorf("%d required prerequisite(s) missing", missing)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "the daemon's JSON config file (for its data dir and network prefix)")
	return cmd
}

func lookCmd(name, pkg, forWhat string, warn bool) image.Check {
	ch := image.Check{Name: name, For: forWhat, Fix: "apt-get install " + pkg, Warn: warn}
	for _, dir := range append(filepath.SplitList(os.Getenv("PATH")), "/usr/sbin", "/usr/local/bin") {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			ch.OK, ch.Info = true, p
			return ch
		}
	}
	ch.Info = "not found"
	return ch
}

func runChecks() []image.Check {
	const w = "run VMs"
	checks := []image.Check{
		lookCmd("qemu-system-x86_64", "qemu-system-x86", w, false),
		lookCmd("qemu-img", "qemu-utils", w+" (overlay disks)", false),
	}
	fc := lookCmd("firecracker", "", w+" (production backend)", true)
	fc.Fix = "install the release binary from github.com/firecracker-microvm/firecracker/releases into /usr/local/bin (optional: QEMU is used without it)"
	checks = append(checks, fc, kvmCheck())
	for _, dev := range []struct{ path, what, fix string }{
		{"/dev/vhost-vsock", "vsock agent link (QEMU vhost-vsock)", "modprobe vhost_vsock (the QEMU backend falls back to virtio-serial)"},
		{"/dev/net/tun", "VM networking (TAP devices)", "modprobe tun"},
	} {
		ch := image.Check{Name: dev.path, For: dev.what, Fix: dev.fix, Warn: true}
		if _, err := os.Stat(dev.path); err == nil {
			ch.OK, ch.Info = true, "present"
		} else {
			ch.Info = "absent"
		}
		checks = append(checks, ch)
	}
	return checks
}

// kvmCheck says whether hardware virtualization is usable: /dev/kvm must
// open read-write and the CPU must advertise vmx or svm. Some hosts expose
// /dev/kvm without the flags; guests there never get past early boot, so
// hangar must use TCG.
func kvmCheck() image.Check {
	ch := image.Check{Name: "kvm", For: "fast VMs (else QEMU TCG emulation)", Warn: true,
		Fix: "run on a host with hardware virtualization (nested virt enabled) and access to /dev/kvm; without it VMs use TCG"}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		ch.Info = fmt.Sprintf("/dev/kvm not usable: %v; VMs will run on QEMU TCG", err)
		return ch
	}
	f.Close()
	cpu, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		ch.Info = fmt.Sprintf("read /proc/cpuinfo: %v", err)
		return ch
	}
	for _, l := range strings.Split(string(cpu), "\n") {
		if !strings.HasPrefix(l, "flags") {
			continue
		}
		fl := " " + l + " "
		if strings.Contains(fl, " vmx ") || strings.Contains(fl, " svm ") {
			ch.OK, ch.Info = true, "/dev/kvm usable, CPU has hardware virtualization"
			return ch
		}
		break
	}
	ch.Info = "/dev/kvm exists but the CPU lacks vmx/svm flags: KVM guests cannot boot here; VMs will run on QEMU TCG"
	return ch
}

func diskCheck(dataDir string) image.Check {
	ch := image.Check{Name: "free disk", For: "image cache in " + dataDir,
		Fix: fmt.Sprintf("free at least %d GiB on the data directory's file system or use --data-dir elsewhere", minFreeBytes>>30)}
	dir := dataDir
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil {
			free := int64(st.Bavail) * int64(st.Bsize)
			ch.Info = fmt.Sprintf("%.1f GiB free on %s", float64(free)/(1<<30), dir)
			ch.OK = free >= minFreeBytes
			return ch
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			ch.Info = "cannot stat " + dataDir
			return ch
		}
		dir = parent // the data dir may not exist yet
	}
}
