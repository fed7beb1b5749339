package image

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// StepState says where a build step is.
type StepState int

const (
	// StepStarted is sent once when a step begins.
	StepStarted StepState = iota
	// StepRunning carries a count update (Done/Total/Unit) while a step runs.
	StepRunning
	// StepDone is sent once when a step succeeded.
	StepDone
	// StepFailed is sent once when a step failed; Err says why.
	StepFailed
	// StepCached reports an artifact taken from the cache without building.
	StepCached
)

// StepEvent is one progress report of a build.
type StepEvent struct {
	Artifact string // "kernel", "layer base", "image browser", ...
	Step     string // "compile", "debootstrap", "mkfs", ...
	State    StepState
	Done     int64 // units done so far, when countable
	Total    int64 // units in all, 0 when unknown
	Unit     string
	Elapsed  time.Duration // since the step started
	Err      error
	Note     string // a short detail: the id of a cached artifact, the log path
}

// Progress receives build progress. Implementations must be safe for use by
// one build goroutine; Ensure never reports concurrently to the same Progress.
type Progress interface {
	Report(ev StepEvent)
}

// NopProgress discards progress.
type NopProgress struct{}

// Report implements Progress.
func (NopProgress) Report(StepEvent) {}

// SlogProgress writes step starts, ends and failures (not count updates,
// which would flood the daemon log) to a logger.
type SlogProgress struct{ Log *slog.Logger }

// Report implements Progress.
func (p SlogProgress) Report(ev StepEvent) {
	switch ev.State {
	case StepStarted:
		p.Log.Info("image build step started", "artifact", ev.Artifact, "step", ev.Step)
	case StepDone:
		p.Log.Info("image build step done", "artifact", ev.Artifact, "step", ev.Step, "elapsed", ev.Elapsed.Round(time.Millisecond).String(), "note", ev.Note)
	case StepFailed:
		p.Log.Error("image build step failed", "artifact", ev.Artifact, "step", ev.Step, "elapsed", ev.Elapsed.Round(time.Millisecond).String(), "err", ev.Err)
	case StepCached:
		p.Log.Info("image cache hit", "artifact", ev.Artifact, "note", ev.Note)
	}
}

// TextProgress renders progress for a person. On a terminal (TTY true) a
// running step is one line redrawn in place with a bar when the total is
// known; otherwise each step prints plain lines, with a count line at most
// every 10% or 15 s so CI logs stay short.
type TextProgress struct {
	W   io.Writer
	TTY bool

	mu        sync.Mutex // guards the fields below
	lastPrint time.Time
	lastPct   int64
	drawn     bool // a \r line is on screen and must be ended first
}

// NewTextProgress returns a TextProgress writing to w.
func NewTextProgress(w io.Writer, tty bool) *TextProgress {
	return &TextProgress{W: w, TTY: tty}
}

// Report implements Progress.
func (p *TextProgress) Report(ev StepEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	label := fmt.Sprintf("[%s] %s", ev.Artifact, ev.Step)
	el := fmtDur(ev.Elapsed)
	switch ev.State {
	case StepStarted:
		p.endLine()
		if !p.TTY {
			fmt.Fprintf(p.W, "%s ...\n", label)
		} else {
			fmt.Fprintf(p.W, "\r\033[K%s ...", label)
			p.drawn = true
		}
		p.lastPrint, p.lastPct = time.Now(), -1
	case StepRunning:
		count := fmtCount(ev)
		if p.TTY {
			fmt.Fprintf(p.W, "\r\033[K%s %s %s", label, count, el)
			p.drawn = true
			return
		}
		pct := int64(-1)
		if ev.Total > 0 {
			pct = ev.Done * 10 / ev.Total
		}
		if (pct >= 0 && pct != p.lastPct) || time.Since(p.lastPrint) >= 15*time.Second {
			fmt.Fprintf(p.W, "%s %s %s\n", label, count, el)
			p.lastPrint, p.lastPct = time.Now(), pct
		}
	case StepDone:
		p.endLine()
		note := ""
		if ev.Note != "" {
			note = " (" + ev.Note + ")"
		}
		fmt.Fprintf(p.W, "%s done in %s%s\n", label, el, note)
	case StepFailed:
		p.endLine()
		fmt.Fprintf(p.W, "%s FAILED after %s\n", label, el)
	case StepCached:
		p.endLine()
		fmt.Fprintf(p.W, "[%s] cached %s\n", ev.Artifact, ev.Note)
	}
}

func (p *TextProgress) endLine() {
	if p.drawn {
		fmt.Fprint(p.W, "\r\033[K")
		p.drawn = false
	}
}

func fmtCount(ev StepEvent) string {
	if ev.Total <= 0 {
		return fmt.Sprintf("%s %s", humanCount(ev.Done, ev.Unit), ev.Unit)
	}
	done := min(ev.Done, ev.Total)
	const width = 24
	fill := int(done * width / ev.Total)
	bar := "[" + strings.Repeat("#", fill) + strings.Repeat(".", width-fill) + "]"
	return fmt.Sprintf("%s %3d%% %s/%s %s", bar, done*100/ev.Total, humanCount(done, ev.Unit), humanCount(ev.Total, ev.Unit), ev.Unit)
}

func humanCount(n int64, unit string) string {
	if unit != "bytes" {
		return fmt.Sprint(n)
	}
	return humanBytes(n)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fK", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

func fmtDur(d time.Duration) string {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
