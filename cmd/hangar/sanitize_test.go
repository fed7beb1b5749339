package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/hangar-vm/hangar/pkg/api"
)

// hostile is what guest root can put in a console line or a CLI's output:
// a window-title change (OSC), a screen clear (CSI), a bell, a C1 CSI and
// a bidirectional override.
const hostile = "boom\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil\ttab\xff"

func TestGuestTextIsPrintedSanitised(t *testing.T) {
	o := &rootOptions{}
	var out bytes.Buffer
	if err := o.printVM(&out, api.VM{ID: "vm-1", State: api.VMFailed, LastError: "vm failed; last console lines:\n" + hostile}); err != nil {
		t.Fatal(err)
	}
	if err := table(&out, "ID\tERROR", [][]string{{"s-1", hostile}}); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, bad := range []string{"\x1b", "\x07", "\x9b", "\u202e", "\xff"} {
		if strings.Contains(got, bad) {
			t.Fatalf("output holds %q raw:\n%q", bad, got)
		}
	}
	for _, want := range []string{`boom\x1b]0;pwned\x07\x1b[2J`, `\x9b31m`, `\u202e`, `\xff`, "last console lines:\n"} {
		if !strings.Contains(got, want) {
			t.Fatalf("output lacks %q (escapes must stay visible):\n%s", want, got)
		}
	}
	// Plain text is untouched.
	if s := sanitize("line one\n\tindented — ünïcode", true); s != "line one\n\tindented — ünïcode" {
		t.Fatalf("sanitize changed plain text: %q", s)
	}
}
