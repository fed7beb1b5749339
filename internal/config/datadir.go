package config

import (
	"os"
	"path/filepath"
)

// DefaultDataDir is /var/lib/hangar for root and ~/.local/share/hangar for
// everyone else, so that a non-root developer never needs sudo to try hangar.
func DefaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/hangar"
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "hangar")
	}
	return filepath.Join(os.TempDir(), "hangar")
}

// ResolveDataDir picks the data directory: the flag, else HANGAR_DATA_DIR,
// else the default. Commands that run without a daemon (image, doctor, gc)
// use it so that they agree with `hangar serve` on where things live.
func ResolveDataDir(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("HANGAR_DATA_DIR"); env != "" {
		return env
	}
	return DefaultDataDir()
}
