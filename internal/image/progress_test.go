package image

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestTextProgressPlainLines(t *testing.T) {
	var buf bytes.Buffer
	p := NewTextProgress(&buf, false)
	p.Report(StepEvent{Artifact: "image cli", Step: "apt install", State: StepStarted})
	for i := int64(0); i <= 100; i++ {
		p.Report(StepEvent{Artifact: "image cli", Step: "apt install", State: StepRunning, Done: i, Total: 100, Unit: "package ops", Elapsed: time.Second})
	}
	p.Report(StepEvent{Artifact: "image cli", Step: "apt install", State: StepDone, Elapsed: 90 * time.Second})
	p.Report(StepEvent{Artifact: "image cli", Step: "mkfs", State: StepFailed, Elapsed: time.Second, Err: errors.New("x")})
	out := buf.String()
	if strings.Contains(out, "\r") || strings.Contains(out, "\033") {
		t.Fatal("plain progress wrote terminal control characters")
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	// start + one line per 10% (11) + done + failed
	if len(lines) < 12 || len(lines) > 15 {
		t.Errorf("%d lines of plain progress for 101 updates, want about 14:\n%s", len(lines), out)
	}
	for _, want := range []string{"[image cli] apt install ...", "100% 100/100 package ops", "[image cli] apt install done in 1m30s", "[image cli] mkfs FAILED after 1s"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

func TestTextProgressTerminalBar(t *testing.T) {
	var buf bytes.Buffer
	p := NewTextProgress(&buf, true)
	p.Report(StepEvent{Artifact: "kernel", Step: "compile", State: StepStarted})
	p.Report(StepEvent{Artifact: "kernel", Step: "compile", State: StepRunning, Done: 700, Total: 1400, Unit: "objects", Elapsed: time.Minute})
	out := buf.String()
	if !strings.Contains(out, "\r\033[K[kernel] compile [############............]  50% 700/1400 objects 1m0s") {
		t.Errorf("no redrawn bar in %q", out)
	}
}
