package vmm

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// DetectKVM reports whether hardware virtualization is usable: /dev/kvm
// opens read-write AND the CPU advertises vmx or svm. Both are needed: on
// this project's development hosts /dev/kvm exists but the (nested) CPU
// lacks the flags, and guests never get past early boot under KVM there.
// The reason says what was found, for logs and `hangar doctor`.
func DetectKVM() (usable bool, reason string) {
	return detectKVM("/dev/kvm", "/proc/cpuinfo")
}

func detectKVM(dev, cpuinfo string) (bool, string) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("%s not usable: %v", dev, err)
	}
	f.Close()
	flag, err := virtFlag(cpuinfo)
	if err != nil {
		return false, fmt.Sprintf("read %s: %v", cpuinfo, err)
	}
	if flag == "" {
		return false, fmt.Sprintf("%s opens but the CPU has no vmx/svm flag in %s (nested virtualization not exposed)", dev, cpuinfo)
	}
	return true, fmt.Sprintf("%s usable, CPU flag %s", dev, flag)
}

func virtFlag(cpuinfo string) (string, error) {
	f, err := os.Open(cpuinfo)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "flags") {
			continue
		}
		_, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		for _, fl := range strings.Fields(v) {
			if fl == "vmx" || fl == "svm" {
				return fl, nil
			}
		}
		// The first CPU's flags are representative.
		return "", nil
	}
	return "", sc.Err()
}

// Acceleration modes.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// ResolveAccel turns a configured mode ("auto", "kvm", "tcg", or empty for
// auto) into "kvm" or "tcg". Asking for kvm where it is not usable is an
// error, not a silent fallback.
func ResolveAccel(mode string) (accel, reason string, err error) {
	usable, why := DetectKVM()
	switch mode {
	case "", AccelAuto:
		if usable {
			return AccelKVM, why, nil
		}
		return AccelTCG, why, nil
	case AccelKVM:
		if !usable {
			return "", why, fmt.Errorf("acceleration kvm requested but %s", why)
		}
		return AccelKVM, why, nil
	case AccelTCG:
		return AccelTCG, "tcg requested by configuration", nil
	default:
		return "", "", fmt.Errorf("unknown acceleration %q (want auto, kvm or tcg)", mode)
	}
}
