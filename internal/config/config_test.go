package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultsAreValid(t *testing.T) {
	c := Default()
	c.DataDir = t.TempDir()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if c.DSN() != c.DataDir+"/hangar.db" {
		t.Fatalf("default DSN %q", c.DSN())
	}
}

// TestOrder: file overrides defaults, environment overrides the file.
func TestOrder(t *testing.T) {
	c := Default()
	f := filepath.Join(t.TempDir(), "hangar.json")
	if err := os.WriteFile(f, []byte(`{"max_vcpus_per_user": 8, "max_browser_vms_per_user": 2, "boot_timeout": "90s", "listen": "127.0.0.1:5000"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.LoadFile(f); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"HANGAR_MAX_VCPUS_PER_USER": "4", "HANGAR_MAX_DISK_MIB_PER_USER": "1024", "HANGAR_LISTEN": ""}
	if err := c.LoadEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if c.MaxVCPUsPerUser != 4 || c.MaxBrowserVMsPerUser != 2 || c.MaxDiskMiBPerUser != 1024 ||
		time.Duration(c.BootTimeout) != 90*time.Second || c.Listen != "127.0.0.1:5000" || c.MaxMemoryMiBPerUser != 32768 {
		t.Fatalf("config after file and env = %+v", c)
	}
}

func TestFileRefusesUnknownKeys(t *testing.T) {
	c := Default()
	f := filepath.Join(t.TempDir(), "hangar.json")
	if err := os.WriteFile(f, []byte(`{"max_vcpu_per_user": 8}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.LoadFile(f); err == nil || !strings.Contains(err.Error(), "max_vcpu_per_user") {
		t.Fatalf("misspelt key: %v, want an error naming it", err)
	}
}

func TestEnvRefusesBadNumbers(t *testing.T) {
	c := Default()
	err := c.LoadEnv(func(k string) (string, bool) {
		if k == "HANGAR_MAX_MEMORY_MIB_PER_USER" {
			return "lots", true
		}
		return "", false
	})
	if err == nil || !strings.Contains(err.Error(), "HANGAR_MAX_MEMORY_MIB_PER_USER") {
		t.Fatalf("bad number: %v, want an error naming the variable", err)
	}
}

// TestValidateNamesEveryProblem: all problems at once, each by its key.
func TestValidateNamesEveryProblem(t *testing.T) {
	c := Default()
	c.DataDir = ""
	c.Listen = "nope"
	c.Database = "mysql://x"
	c.RateLimit = "fast"
	c.MaxVCPUsPerUser = 0
	c.MaxMemoryMiBPerUser = 64
	c.MaxBrowserVMsPerUser = -1
	c.MaxDiskMiBPerUser = -1
	c.VMShutdownPolicy = "pause"
	c.Network.Egress = map[string]EgressPolicy{"gpu": {Mode: "full"}, "cli": {Mode: "full", Allow: []string{"x.test"}}}
	err := c.Validate()
	if err == nil {
		t.Fatal("invalid config validated")
	}
	for _, want := range []string{"data_dir", "listen", "database", "rate_limit", "max_vcpus_per_user", "max_memory_mib_per_user",
		"max_browser_vms_per_user", "max_disk_mib_per_user", "vm_shutdown_policy", `unknown vm kind "gpu"`, "network.egress.cli: allow entries need mode allow"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("validation error does not name %q:\n%v", want, err)
		}
	}
}

func TestParseRateLimit(t *testing.T) {
	n, w, err := ParseRateLimit("1000/15m")
	if err != nil || n != 1000 || w != 15*time.Minute {
		t.Fatalf("1000/15m = %d, %v, %v", n, w, err)
	}
	for _, bad := range []string{"", "1000", "0/1m", "-1/1m", "10/0s", "x/1m", "10/forever"} {
		if _, _, err := ParseRateLimit(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
