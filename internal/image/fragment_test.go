package image

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

func TestParseConfigForms(t *testing.T) {
	opts, err := ParseConfig(strings.NewReader(`# a comment
CONFIG_A=y

CONFIG_B="-hangar"
# CONFIG_C is not set
CONFIG_D=64
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []ConfigOption{{"CONFIG_A", "y", 2}, {"CONFIG_B", `"-hangar"`, 4}, {"CONFIG_C", "n", 5}, {"CONFIG_D", "64", 6}}
	if len(opts) != len(want) {
		t.Fatalf("got %d options %v, want %v", len(opts), opts, want)
	}
	for i := range want {
		if opts[i] != want[i] {
			t.Errorf("option %d = %+v, want %+v", i, opts[i], want[i])
		}
	}
}

func TestParseConfigRejectsTyposAndDuplicates(t *testing.T) {
	for name, in := range map[string]string{
		"missing =":    "CONFIG_A y\n",
		"lower prefix": "config_a=y\n",
		"duplicate":    "CONFIG_A=y\n# CONFIG_A is not set\n",
	} {
		if _, err := ParseConfig(strings.NewReader(in)); err == nil {
			t.Errorf("%s: %q parsed without error", name, in)
		}
	}
}

func TestVerifyConfigDetectsDroppedAndChangedOptions(t *testing.T) {
	frag, _ := ParseConfig(strings.NewReader("CONFIG_KEPT=y\nCONFIG_DROPPED=y\nCONFIG_STR=\"-hangar\"\n# CONFIG_OFF is not set\nCONFIG_MOD=y\n"))
	final, _ := ParseConfig(strings.NewReader("CONFIG_KEPT=y\nCONFIG_STR=\"-other\"\nCONFIG_OFF=y\nCONFIG_MOD=m\nCONFIG_EXTRA=y\n"))
	bad := VerifyConfig(frag, final)
	got := map[string]string{}
	for _, m := range bad {
		got[m.Option.Name] = m.Got
	}
	want := map[string]string{"CONFIG_DROPPED": "n", "CONFIG_STR": `"-other"`, "CONFIG_OFF": "y", "CONFIG_MOD": "m"}
	if len(got) != len(want) {
		t.Fatalf("mismatches %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %q, want %q", k, got[k], v)
		}
	}
	err := (&ConfigMismatchError{Mismatches: bad}).Error()
	if !strings.Contains(err, "CONFIG_DROPPED=y (fragment line 2) ended up as n") {
		t.Errorf("error does not name the dropped option with its line: %s", err)
	}
	// "is not set" is satisfied by absence.
	if bad := VerifyConfig([]ConfigOption{{Name: "CONFIG_OFF", Value: "n"}}, nil); len(bad) != 0 {
		t.Errorf("absent option should satisfy 'is not set', got %v", bad)
	}
}

// The fragment is the project's record of why the guest kernel has each
// option: it must parse, and every option must have a comment right above.
func TestKernelFragmentParsesAndEveryOptionIsExplained(t *testing.T) {
	data, err := embedded(kernelFragment)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := ParseConfig(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(opts) < 80 {
		t.Fatalf("fragment has only %d options", len(opts))
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		lines = append(lines, strings.TrimSpace(sc.Text()))
	}
	for _, o := range opts {
		above := lines[o.Line-2]
		if !strings.HasPrefix(above, "#") || unsetRe.MatchString(above) || above == "#" {
			t.Errorf("%s (line %d) has no explaining comment above it", o.Name, o.Line)
		}
	}
	required := []string{"CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "CONFIG_VIRTIO_VSOCKETS",
		"CONFIG_VIRTIO_CONSOLE", "CONFIG_VIRTIO_BLK", "CONFIG_EXT4_FS", "CONFIG_OVERLAY_FS", "CONFIG_TMPFS",
		"CONFIG_DEVTMPFS", "CONFIG_USER_NS", "CONFIG_SECCOMP_FILTER", "CONFIG_CGROUPS", "CONFIG_HW_RANDOM_VIRTIO",
		"CONFIG_SERIAL_8250_CONSOLE", "CONFIG_ADVISE_SYSCALLS", "CONFIG_FILE_LOCKING", "CONFIG_SYSVIPC"}
	have := map[string]string{}
	for _, o := range opts {
		have[o.Name] = o.Value
	}
	for _, r := range required {
		if have[r] != "y" {
			t.Errorf("fragment lacks %s=y", r)
		}
	}
}
