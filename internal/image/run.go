package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BuildError is a failed build step: it names the artifact and step, carries
// the last lines of output and says where the whole build log is.
type BuildError struct {
	Artifact string
	Step     string
	LogPath  string
	Tail     []string
	Err      error
}

func (e *BuildError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "build %s: step %q failed: %v", e.Artifact, e.Step, e.Err)
	if len(e.Tail) > 0 {
		fmt.Fprintf(&b, "\nlast %d lines of output:\n", len(e.Tail))
		for _, l := range e.Tail {
			b.WriteString("    " + l + "\n")
		}
	}
	if e.LogPath != "" {
		fmt.Fprintf(&b, "\nfull build log: %s", e.LogPath)
	}
	return b.String()
}

func (e *BuildError) Unwrap() error { return e.Err }

const tailLines = 25

// build is the state of one artifact build: its on-disk log, the tail of
// recent output for error messages, progress and step timings.
type build struct {
	artifact string
	progress Progress
	logPath  string

	mu    sync.Mutex // guards logF, tail and steps: command output arrives from two pipes
	logF  *os.File
	tail  []string
	steps map[string]float64 // step name → seconds
}

func newBuild(logDir, artifact string, p Progress) (*build, error) {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	name := strings.NewReplacer(" ", "-", "/", "-").Replace(artifact)
	path := filepath.Join(logDir, fmt.Sprintf("%s-%s.log", name, time.Now().UTC().Format("20060102T150405.000Z")))
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create build log: %w", err)
	}
	if p == nil {
		p = NopProgress{}
	}
	return &build{artifact: artifact, progress: p, logPath: path, logF: f, steps: map[string]float64{}}, nil
}

func (b *build) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.logF != nil {
		b.logF.Close()
		b.logF = nil
	}
}

// logf writes a line to the build log (and the error tail).
func (b *build) logf(format string, args ...any) {
	b.line(fmt.Sprintf(format, args...))
}

func (b *build) line(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.logF != nil {
		fmt.Fprintln(b.logF, s)
	}
	b.tail = append(b.tail, s)
	if len(b.tail) > 4*tailLines {
		b.tail = append(b.tail[:0], b.tail[len(b.tail)-tailLines:]...)
	}
}

func (b *build) lastLines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.tail
	if len(t) > tailLines {
		t = t[len(t)-tailLines:]
	}
	return append([]string(nil), t...)
}

// stepCtx is handed to a running step for count updates.
type stepCtx struct {
	b     *build
	name  string
	start time.Time
}

// count reports progress of a countable step.
func (s *stepCtx) count(done, total int64, unit string) {
	s.b.progress.Report(StepEvent{Artifact: s.b.artifact, Step: s.name, State: StepRunning,
		Done: done, Total: total, Unit: unit, Elapsed: time.Since(s.start)})
}

// step runs fn as a named step: timing, progress and, on failure, a
// *BuildError with the output tail and the log path.
func (b *build) step(name string, fn func(s *stepCtx) error) error {
	s := &stepCtx{b: b, name: name, start: time.Now()}
	b.logf("==> %s: %s (started %s)", b.artifact, name, s.start.UTC().Format(time.RFC3339))
	b.progress.Report(StepEvent{Artifact: b.artifact, Step: name, State: StepStarted})
	err := fn(s)
	el := time.Since(s.start)
	b.mu.Lock()
	b.steps[name] += el.Seconds()
	b.mu.Unlock()
	if err != nil {
		b.logf("==> %s: %s FAILED after %s: %v", b.artifact, name, el.Round(time.Millisecond), err)
		b.progress.Report(StepEvent{Artifact: b.artifact, Step: name, State: StepFailed, Elapsed: el, Err: err})
		var be *BuildError
		if errors.As(err, &be) {
			return err
		}
		return &BuildError{Artifact: b.artifact, Step: name, LogPath: b.logPath, Tail: b.lastLines(), Err: err}
	}
	b.logf("==> %s: %s done in %s", b.artifact, name, el.Round(time.Millisecond))
	b.progress.Report(StepEvent{Artifact: b.artifact, Step: name, State: StepDone, Elapsed: el})
	return nil
}

// run executes cmd with its output going to the build log; each output line
// is also passed to onLine (when not nil) for progress counting.
func (b *build) run(ctx context.Context, cmd *exec.Cmd, onLine func(string)) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	b.logf("$ %s", strings.Join(cmd.Args, " "))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("stdout pipe: %w", err)
	}
	cmd.Stderr = cmd.Stdout
	// Own process group, so that cancelling kills make's compiler children
	// and apt's dpkg too, not just the direct child.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", cmd.Args[0], err)
	}
	stop := context.AfterFunc(ctx, func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	defer stop()
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		l := sc.Text()
		b.line(l)
		if onLine != nil {
			onLine(l)
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", filepath.Base(cmd.Args[0]), ctx.Err())
		}
		return fmt.Errorf("%s: %w", filepath.Base(cmd.Args[0]), err)
	}
	return nil
}
