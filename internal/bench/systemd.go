package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hangar-vm/hangar/internal/image"
)

// SystemdBoot is one boot of the systemd baseline, timed from just before
// QEMU starts (as hangar's BootPhases.TotalMS is) to lines on its console.
type SystemdBoot struct {
	FirstOutput time.Duration // the kernel's first console line
	SystemdUp   time.Duration // systemd's "Welcome to" banner: kernel and initramfs done
	Ready       time.Duration // the readiness unit's line, after multi-user.target
	PSSKiB      int64         // QEMU's PSS once idle
}

// BootSystemd boots the baseline once with the same QEMU machine, CPU
// model, acceleration, vCPUs and memory as hangar's driver uses, the root
// disk copy-on-write (snapshot=on: each boot starts from the same pristine
// image, and the old system's per-VM full copy is measured separately), and
// the serial console on a pipe read line by line (and copied to consoleLog,
// so a baseline that never gets ready can be diagnosed). After the ready
// line it waits settle, reads QEMU's PSS and kills it.
func BootSystemd(ctx context.Context, bl image.SystemdBaseline, accel string, vcpus, memMiB int, settle time.Duration, consoleLog string, progress func(string)) (SystemdBoot, error) {
	logF, err := os.Create(consoleLog)
	if err != nil {
		return SystemdBoot{}, err
	}
	defer logF.Close()
	args := []string{
		"-name", "hangar-bench-systemd-baseline",
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-no-reboot", "-machine", "pc",
	}
	if accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg,thread=multi", "-cpu", "max")
	}
	args = append(args,
		"-smp", strconv.Itoa(vcpus), "-m", strconv.Itoa(memMiB),
		"-kernel", bl.Kernel, "-initrd", bl.Initrd,
		"-append", "console=ttyS0 root=/dev/vda rw panic=-1",
		"-drive", "if=none,id=root,file="+strings.ReplaceAll(bl.Rootfs, ",", ",,")+",format=raw,snapshot=on",
		"-device", "virtio-blk-pci,drive=root",
		"-object", "rng-random,id=rng,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng",
		"-serial", "stdio",
	)
	cctx, cancel := context.WithTimeout(ctx, 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, "qemu-system-x86_64", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return SystemdBoot{}, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return SystemdBoot{}, fmt.Errorf("start qemu: %w", err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	var b SystemdBoot
	var tail []string
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		el := time.Since(t0)
		fmt.Fprintf(logF, "%9.3f %s\n", el.Seconds(), l)
		tail = append(tail, l)
		if len(tail) > 20 {
			tail = tail[1:]
		}
		switch {
		case b.FirstOutput == 0:
			b.FirstOutput = el
			progress(fmt.Sprintf("kernel output at %s", el.Round(time.Millisecond)))
		case b.SystemdUp == 0 && strings.Contains(l, "Welcome to"):
			b.SystemdUp = el
			progress(fmt.Sprintf("systemd started at %s", el.Round(time.Millisecond)))
		}
		if strings.Contains(l, image.BaselineReadyLine) && !strings.Contains(l, "echo") {
			b.Ready = el
			progress(fmt.Sprintf("ready at %s", el.Round(time.Millisecond)))
			break
		}
	}
	if b.Ready == 0 {
		return b, fmt.Errorf("systemd baseline never signalled readiness (qemu: %s; console in %s); last console lines:\n%s",
			strings.TrimSpace(stderr.String()), consoleLog, strings.Join(tail, "\n"))
	}
	// Keep draining the console so the guest never blocks on a full pipe.
	go func() {
		for sc.Scan() {
			fmt.Fprintf(logF, "%9.3f %s\n", time.Since(t0).Seconds(), sc.Text())
		}
	}()
	select {
	case <-time.After(settle):
	case <-ctx.Done():
		return b, ctx.Err()
	}
	pss, err := PSSKiB(cmd.Process.Pid)
	if err != nil {
		return b, err
	}
	b.PSSKiB = pss
	return b, nil
}
