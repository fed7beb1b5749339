package image

import (
	"strings"
	"testing"
)

// The browser baseline must start the same programs hangar's agent starts,
// in the same order, and signal only when the same readiness conditions
// hold; otherwise the comparison measures a different boot.
func TestBrowserUnitsMirrorServiceDeclarations(t *testing.T) {
	units, err := browserUnits()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"xvfb.service", "x11vnc.service", "chromium.service", "hangar-baseline-ready.service"} {
		if units[name] == "" {
			t.Fatalf("no %s in %v", name, keys(units))
		}
	}
	if u := units["chromium.service"]; !strings.Contains(u, "ExecStart=/usr/bin/chromium ") ||
		!strings.Contains(u, "--remote-debugging-port=9222") || !strings.Contains(u, "User=hangar") ||
		!strings.Contains(u, "After=xvfb.service") || !strings.Contains(u, "Environment=DISPLAY=:99") ||
		!strings.Contains(u, "Restart=always") {
		t.Fatalf("chromium unit:\n%s", u)
	}
	ready := units["hangar-baseline-ready.service"]
	for _, want := range []string{"/dev/tcp/127.0.0.1/9222", "/dev/tcp/127.0.0.1/5900", "[ -e /tmp/.X11-unix/X99 ]", "echo " + BaselineReadyLine, "After=multi-user.target"} {
		if !strings.Contains(ready, want) {
			t.Fatalf("readiness unit lacks %q:\n%s", want, ready)
		}
	}
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
