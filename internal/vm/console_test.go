package vm

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/testutil"
)

func consoleManager(t *testing.T) (*Manager, string) {
	t.Helper()
	m := &Manager{cfg: Config{DataDir: t.TempDir(), ConsoleMaxBytes: 64 << 10}}
	path := m.ConsolePath("vm1")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	return m, path
}

// TestConsoleRotation: a console file over the cap is moved aside and
// emptied while the writer (holding it open with O_APPEND, as both
// hypervisors do) keeps writing at its new start, not at its old offset.
func TestConsoleRotation(t *testing.T) {
	m, path := consoleManager(t)
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	old := strings.Repeat("old line\n", 10000) // 90 KB
	w.WriteString(old)
	rotated, err := rotateConsole(path, m.consoleMax())
	if err != nil || !rotated {
		t.Fatalf("rotate = %v, %v; want rotated", rotated, err)
	}
	w.WriteString("new line\n")
	cur, _ := os.ReadFile(path)
	if string(cur) != "new line\n" {
		t.Fatalf("current console holds %d bytes after rotation (%q...), want only the new line", len(cur), cur[:min(len(cur), 20)])
	}
	if prev, _ := os.ReadFile(path + ".1"); string(prev) != old {
		t.Fatalf("rotated console holds %d bytes, want the %d old ones", len(prev), len(old))
	}
	if rotated, _ := rotateConsole(path, m.consoleMax()); rotated {
		t.Fatal("a console under the cap was rotated")
	}
	// Readers see both files, older first, and lastLines reaches into the
	// rotated one when the current is short.
	var out bytes.Buffer
	if err := m.consoleLog(context.Background(), "vm1", false, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != old+"new line\n" {
		t.Fatalf("console log = %d bytes, want old then new", out.Len())
	}
	if got := lastLines(path, 3); got != "old line\nold line\nnew line" {
		t.Fatalf("lastLines = %q", got)
	}
}

// TestConsoleLinesAreBounded: a guest that writes megabytes without a
// newline does not make the daemon hold that line; readers cut it and go
// on to the lines after it.
func TestConsoleLinesAreBounded(t *testing.T) {
	m, path := consoleManager(t)
	huge := strings.Repeat("x", 8<<20)
	content := "[svc] before\n" + huge + "\n[svc] after\n" + huge
	if err := os.WriteFile(path, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := m.consoleLog(context.Background(), "vm1", false, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(lines) != 4 || lines[0] != "[svc] before" || lines[2] != "[svc] after" {
		t.Fatalf("console log has %d lines (%d bytes); want 4 with the short ones intact", len(lines), out.Len())
	}
	for _, i := range []int{1, 3} {
		if len(lines[i]) > maxConsoleLine+64 || !strings.Contains(lines[i], "line cut") {
			t.Fatalf("line %d is %d bytes, want cut at %d with a marker", i, len(lines[i]), maxConsoleLine)
		}
	}
	out.Reset()
	if err := m.filterConsole("vm1", "svc", &out); err != nil {
		t.Fatalf("filterConsole: %v", err)
	}
	if out.String() != "[svc] before\n[svc] after\n" {
		t.Fatalf("filterConsole = %q, want both service lines", out.String())
	}
	if got := lastLines(path, 2); len(got) > 2*600 || !strings.HasSuffix(got, "[cut]") {
		t.Fatalf("lastLines = %d bytes (%.40q...)", len(got), got)
	}
}

// TestConsoleFollowAcrossRotation: a follower sees the lines written
// before and after a rotation, including those written between its last
// read and the rotation.
func TestConsoleFollowAcrossRotation(t *testing.T) {
	m, path := consoleManager(t)
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.WriteString("first\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out testutil.Buffer
	done := make(chan error, 1)
	go func() { done <- m.consoleLog(ctx, "vm1", true, &out) }()
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s; follower saw %q", what, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitUntil("first line not followed", func() bool { return out.String() == "first\n" })
	w.WriteString("missed-before-rotation\n" + strings.Repeat("f", 70<<10) + "\n")
	if _, err := rotateConsole(path, m.consoleMax()); err != nil {
		t.Fatal(err)
	}
	w.WriteString("after\n")
	waitUntil("lines around the rotation not followed", func() bool { return strings.HasSuffix(out.String(), "after\n") })
	if !strings.Contains(out.String(), "missed-before-rotation\n") {
		t.Fatalf("the lines written just before the rotation were lost: %.80q", out.String())
	}
	cancel()
	<-done
}
