// Command guestinit is PID 1 of the QEMU driver's boot tests: a static
// program packed into an initramfs. It prints markers on the serial
// console and behaves as the kernel command line's hangartest.mode says:
//
//	poweroff  print the marker and power the VM off
//	counter   print "hangartest tick N" every 100 ms, and echo every line
//	          received on the org.hangar.agent virtio-serial port back
//	          upper-cased
//	exit      print the marker and exit (PID 1 dying panics the kernel)
package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	_ = os.MkdirAll("/proc", 0o755)
	_ = os.MkdirAll("/sys", 0o755)
	_ = os.MkdirAll("/dev", 0o755)
	_ = syscall.Mount("proc", "/proc", "proc", 0, "")
	_ = syscall.Mount("sysfs", "/sys", "sysfs", 0, "")
	_ = syscall.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	cmdline, _ := os.ReadFile("/proc/cmdline")
	uptime, _ := os.ReadFile("/proc/uptime")
	mode := "poweroff"
	for _, f := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(f, "hangartest.mode="); ok {
			mode = v
		}
	}
	up := strings.Fields(string(uptime))
	if len(up) == 0 {
		up = []string{"?"}
	}
	fmt.Printf("HANGARTEST-INIT-UP mode=%s uptime=%s\n", mode, up[0])
	switch mode {
	case "poweroff":
		syscall.Sync()
		_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	case "exit":
		os.Exit(3)
	case "counter":
		ifaces, _ := os.ReadDir("/sys/class/net")
		var names []string
		for _, i := range ifaces {
			names = append(names, i.Name())
		}
		fmt.Printf("HANGARTEST-NET %s\n", strings.Join(names, ","))
		go echoAgentPort()
		for i := 1; ; i++ {
			fmt.Printf("hangartest tick %d\n", i)
			time.Sleep(100 * time.Millisecond)
		}
	}
	select {}
}

// echoAgentPort finds the virtio-serial port by name through sysfs (there
// is no udev to create /dev/virtio-ports/<name> symlinks) and echoes lines.
func echoAgentPort() {
	var dev string
	for dev == "" {
		names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, n := range names {
			b, _ := os.ReadFile(n)
			if strings.TrimSpace(string(b)) == "org.hangar.agent" {
				dev = "/dev/" + filepath.Base(filepath.Dir(n))
			}
		}
		if dev == "" {
			time.Sleep(50 * time.Millisecond)
		}
	}
	fmt.Printf("HANGARTEST-AGENT-PORT %s\n", dev)
	for {
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			fmt.Printf("HANGARTEST-AGENT-PORT-ERROR %v\n", err)
			time.Sleep(time.Second)
			continue
		}
		r := bufio.NewReader(f)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				// The host side closed (or was not connected yet).
				time.Sleep(50 * time.Millisecond)
				break
			}
			_, _ = f.WriteString(strings.ToUpper(line))
		}
		f.Close()
	}
}
