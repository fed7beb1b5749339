package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/hangar-vm/hangar/internal/image"
)

func TestDoctorReportsEveryPrerequisiteWithAFix(t *testing.T) {
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"doctor", "--json", "--data-dir", t.TempDir()})
	_ = cmd.Execute() // non-zero when this host lacks something; the report is what is tested
	var checks []image.Check
	if err := json.Unmarshal(out.Bytes(), &checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out.String())
	}
	byName := map[string]image.Check{}
	for _, ch := range checks {
		byName[ch.Name] = ch
		if !ch.OK && ch.Fix == "" {
			t.Errorf("%s is not OK and says no fix", ch.Name)
		}
		if !ch.OK && strings.HasPrefix(ch.Fix, "apt-get install ") && len(strings.Fields(ch.Fix)) < 3 {
			t.Errorf("%s: fix %q names no package", ch.Name, ch.Fix)
		}
	}
	for _, n := range []string{"debootstrap", "mkfs.ext4", "debugfs", "make", "gcc", "bc", "flex", "bison",
		"libelf headers", "linux-source-6.1", "qemu-system-x86_64", "firecracker", "kvm", "free disk"} {
		if _, ok := byName[n]; !ok {
			t.Errorf("doctor does not check %s", n)
		}
	}
	if fc := byName["firecracker"]; !fc.Warn || byName["kvm"].Warn != true {
		t.Error("firecracker and kvm must be optional (warnings): QEMU TCG works without them")
	}
}
