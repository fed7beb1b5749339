package agent

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

func TestRingKeepsNewestWithinBudget(t *testing.T) {
	r := &ring{limit: 1000}
	for i := range 500 {
		r.add(proto.LogLine{Line: strings.Repeat("x", 90) + string(rune('a'+i%26))})
	}
	total := 0
	lines := r.snapshot()
	for _, l := range lines {
		total += cost(l)
	}
	if want := 1000 / (91 + lineOverhead); total > 1000 || len(lines) != want {
		t.Fatalf("%d bytes in %d lines, want %d lines", total, len(lines), want)
	}
	if last := lines[len(lines)-1].Line; last[len(last)-1] != byte('a'+499%26) {
		t.Fatalf("newest line lost: %q", last)
	}
}

// TestRingBoundedUnderEmptyLineFlood: empty lines cost their overhead, so
// a service printing nothing but newlines cannot grow the agent (PID 1)
// without bound.
func TestRingBoundedUnderEmptyLineFlood(t *testing.T) {
	const budget = 64 << 10
	h := newLogHub(budget, nil, time.Now)
	for range 1_000_000 {
		h.add("flood", "")
	}
	h.mu.Lock()
	r := h.rings["flood"]
	kept, capacity := len(r.lines)-r.head, cap(r.lines)
	h.mu.Unlock()
	if max := budget / lineOverhead; kept > max || kept == 0 {
		t.Fatalf("ring keeps %d empty lines, want 1..%d within %d bytes", kept, max, budget)
	}
	// The slice behind the ring stays near what is kept (compaction).
	if capacity > 4*(budget/lineOverhead)+128 {
		t.Fatalf("ring's slice has capacity %d for %d kept lines", capacity, kept)
	}
}

func TestSplitPath(t *testing.T) {
	for p, ok := range map[string]bool{
		"/home/hangar/.codex/auth.json": true,
		"/a/./b//c":                     true,
		"relative/path":                 false,
		"/a/../b":                       false,
		"/..":                           false,
		"/":                             false,
		"/a\x00b":                       false,
	} {
		_, err := splitPath(p)
		if (err == nil) != ok {
			t.Errorf("%q: err=%v, want ok=%v", p, err, ok)
		}
	}
}

func TestValidateServices(t *testing.T) {
	ok := []proto.ServiceSpec{{Name: "a", Argv: []string{"x"}}, {Name: "b", Argv: []string{"x"}, After: []string{"a"}}}
	if err := validateServices(ok); err != nil {
		t.Fatal(err)
	}
	for name, specs := range map[string][]proto.ServiceSpec{
		"cycle":    {{Name: "a", Argv: []string{"x"}, After: []string{"b"}}, {Name: "b", Argv: []string{"x"}, After: []string{"a"}}},
		"unknown":  {{Name: "a", Argv: []string{"x"}, After: []string{"zz"}}},
		"dup":      {{Name: "a", Argv: []string{"x"}}, {Name: "a", Argv: []string{"y"}}},
		"reserved": {{Name: "agent", Argv: []string{"x"}}},
		"restart":  {{Name: "a", Argv: []string{"x"}, Restart: "sometimes"}},
		"ready":    {{Name: "a", Argv: []string{"x"}, Ready: &proto.ReadyCheck{TCP: "1:2", File: "/x"}}},
		"argv":     {{Name: "a"}},
	} {
		if err := validateServices(specs); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

// TestReaperDispatchesAndReapsOrphans: with the agent as child subreaper
// (what PID 1 is implicitly), an orphaned grandchild is reaped, and the
// statuses of the agent's own children still reach their waiters.
func TestReaperDispatchesAndReapsOrphans(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skip("PR_SET_CHILD_SUBREAPER unavailable: ", err)
	}
	defer func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) }()
	p := newProcTable(slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.run(ctx)
	// sh exits at once; its background sleep is orphaned onto us.
	cmd := exec.Command("sh", "-c", "sleep 0.2 & echo $!")
	out := &strings.Builder{}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = w
	ch, err := p.start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	buf := make([]byte, 64)
	n, _ := r.Read(buf)
	out.Write(buf[:n])
	select {
	case ws := <-ch:
		if !ws.Exited() || ws.ExitStatus() != 0 {
			t.Fatalf("status %v", ws)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("own child's status not delivered")
	}
	var orphan int
	for _, c := range strings.TrimSpace(out.String()) {
		orphan = orphan*10 + int(c-'0')
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Once reaped, the pid no longer exists (not even as a zombie).
		if err := unix.Kill(orphan, 0); err == unix.ESRCH {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d not reaped", orphan)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
