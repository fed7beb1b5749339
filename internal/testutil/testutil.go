// Package testutil holds helpers shared by tests that use real parts:
// throwaway Postgres databases and loggers that write to the test log.
package testutil

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

// InCI reports whether the tests run under CI, where a missing real part
// (Postgres, QEMU, images) is a failure, not a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require skips the test with reason, or fails it under CI.
func Require(t testing.TB, ok bool, reason string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("required under CI: %s", reason)
	}
	t.Skip("skipping: " + reason)
}

// PostgresAdminURL returns HANGAR_TEST_POSTGRES, skipping (or failing under
// CI) when it is unset.
func PostgresAdminURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("HANGAR_TEST_POSTGRES")
	Require(t, u != "", "HANGAR_TEST_POSTGRES is not set (e.g. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable); `make test` sets it")
	return u
}

// PostgresDSN creates a fresh database for this test alone and drops it when
// the test ends.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	admin := PostgresAdminURL(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "hangar_test_" + hex.EncodeToString(b[:])
	exec := func(q string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db, err := sql.Open("pgx", admin)
		if err != nil {
			return err
		}
		defer db.Close()
		_, err = db.ExecContext(ctx, q)
		return err
	}
	if err := exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		if err := exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("parse HANGAR_TEST_POSTGRES: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// Logger writes slog records to the test's log, shown with -v or on failure.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(NewWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// NewWriter returns a Writer into t's log.
func NewWriter(t testing.TB) *Writer {
	w := &Writer{T: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return w
}

// Writer is an io.Writer into t.Log that stops writing once the test has
// ended (late goroutines must not panic the test binary). Make it with
// NewWriter.
type Writer struct {
	T testing.TB

	mu   sync.Mutex // guards done
	done bool
}

// Write logs p, trimmed of its trailing newline.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.T.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

var (
	binMu    sync.Mutex // guards binPaths
	binPaths = map[string]string{}
)

// BuildBinary builds the Go main package at pkg (a path relative to the
// test's directory, such as "../../cmd/hangar") once per test binary and
// returns the executable's path. env is added to the build's environment
// (e.g. CGO_ENABLED=0 for binaries that go into a VM).
func BuildBinary(t testing.TB, pkg string, env ...string) string {
	t.Helper()
	key := pkg + "|" + strings.Join(env, " ")
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := binPaths[key]; ok {
		return p
	}
	dir, err := os.MkdirTemp("", "hangar-test-bin-")
	if err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs(pkg)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, filepath.Base(abs))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	binPaths[key] = out
	return out
}

// Buffer is a strings.Builder safe for concurrent writers (a console, a
// daemon's log) and readers.
type Buffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// DaemonProcess is `hangar serve` running as a process of its own, so that
// tests can signal it, kill it and start it again like an operator would.
type DaemonProcess struct {
	Cmd *exec.Cmd
	// URL is where it serves, read from its "hangar is serving" log line.
	URL string
	// Done is closed when the process has exited.
	Done chan struct{}
	logs Buffer
}

// Logs is everything the daemon logged so far.
func (p *DaemonProcess) Logs() string { return p.logs.String() }

// Stop sends sig and waits up to within for the process to exit.
func (p *DaemonProcess) Stop(t testing.TB, sig syscall.Signal, within time.Duration) {
	t.Helper()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done:
	case <-time.After(within):
		t.Fatalf("hangar serve did not exit within %s of %v", within, sig)
	}
}

var servingRE = regexp.MustCompile(`msg="hangar is serving" url=(http://\S+)`)

// StartDaemonProcess runs argv (a hangar serve command line, possibly
// behind a wrapper such as nsenter) with env added to the environment,
// copies its log into the test's, and waits up to within until it serves.
// The process is killed when the test ends.
func StartDaemonProcess(t testing.TB, argv, env []string, within time.Duration) *DaemonProcess {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &DaemonProcess{Cmd: cmd, Done: make(chan struct{})}
	urlc := make(chan string, 1)
	tw := NewWriter(t)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.logs.Write([]byte(line + "\n"))
			fmt.Fprintln(tw, "daemon:", line)
			if m := servingRE.FindStringSubmatch(line); m != nil {
				select {
				case urlc <- m[1]:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(p.Done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.Done
	})
	select {
	case p.URL = <-urlc:
	case <-p.Done:
		t.Fatalf("hangar serve exited before serving:\n%s", p.Logs())
	case <-time.After(within):
		t.Fatalf("hangar serve did not start within %s:\n%s", within, p.Logs())
	}
	return p
}
