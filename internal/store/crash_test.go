package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Environment of the re-executed test binary in TestTaskCrashRecovery.
const (
	helperEnv    = "HANGAR_STORE_HELPER"
	helperDSNEnv = "HANGAR_STORE_HELPER_DSN"
	crashLease   = 2 * time.Second
)

// TestMain turns the test binary into the crash test's child process when
// TestTaskCrashRecovery re-executes it with helperEnv set (a TestMain rather
// than a helper test, so normal runs carry no always-skipped test).
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "claim" {
		claimAndHang()
		return
	}
	os.Exit(m.Run())
}

// claimAndHang is the child of TestTaskCrashRecovery: it opens the store,
// claims the one due task with a 2 s lease, reports it on stdout and then
// hangs, holding the lease, until the parent SIGKILLs it.
func claimAndHang() {
	ctx := context.Background()
	s, err := Open(ctx, os.Getenv(helperDSNEnv), nil)
	if err != nil {
		fmt.Printf("ERROR open: %v\n", err)
		os.Exit(2)
	}
	owner := fmt.Sprintf("child-%d", os.Getpid())
	task, ok, err := s.ClaimTask(ctx, owner, crashLease)
	if err != nil || !ok {
		fmt.Printf("ERROR claim: ok=%v err=%v\n", ok, err)
		os.Exit(2)
	}
	fmt.Printf("CLAIMED %d %s %s\n", task.ID, owner, task.LeaseUntil.Format(time.RFC3339Nano))
	// Hold the lease as a worker busy with the task would, until killed.
	time.Sleep(10 * time.Minute)
	os.Exit(3)
}

// TestTaskCrashRecovery: a process that claimed a task is SIGKILLed while it
// holds the lease. Nobody can claim the task until the lease expires; then
// exactly one claimer gets it (its second attempt), completes it, and the
// queue is empty. The dead process's owner can no longer complete it.
func TestTaskCrashRecovery(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			dsn := b.newDSN(t)
			testCrashRecovery(t, dsn)
		})
	}
}

func testCrashRecovery(t *testing.T, dsn string) {
	ctx := t.Context()
	s := openTest(t, dsn)
	enq, err := s.EnqueueTask(ctx, Task{Kind: "vm_destroy", Payload: []byte(`{"vm":"vm_crash"}`)})
	must(t, err, "enqueue")

	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// -test.run matches nothing: TestMain takes over before any test runs.
	cmd := exec.CommandContext(cctx, os.Args[0], "-test.run=^$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=claim", helperDSNEnv+"="+dsn)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	lines := make(chan string, 1)
	cmd.Stdout = &reportWriter{lines: lines}
	must(t, cmd.Start(), "start child")
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})

	// Wait for the child's report that it holds the lease.
	var line string
	select {
	case line = <-lines:
	case <-time.After(60 * time.Second):
		t.Fatalf("child did not report a claim within 60 s; stderr: %s", stderr.String())
	}
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != "CLAIMED" {
		t.Fatalf("child: %q; stderr: %s", line, stderr.String())
	}
	id, err := strconv.ParseInt(f[1], 10, 64)
	must(t, err, "parse task id %q", f[1])
	childOwner := f[2]
	leaseUntil, err := time.Parse(time.RFC3339Nano, f[3])
	must(t, err, "parse lease %q", f[3])
	if id != enq.ID {
		t.Fatalf("child claimed task %d, want %d", id, enq.ID)
	}
	held, err := s.GetTask(ctx, id)
	must(t, err, "get task")
	if held.State != TaskRunning || held.LeaseOwner != childOwner || held.Attempts != 1 {
		t.Fatalf("task held by the child = %+v", held)
	}

	// SIGKILL while the lease is held: no deferred cleanup, no rollback.
	must(t, cmd.Process.Signal(syscall.SIGKILL), "kill child")
	err = cmd.Wait()
	killed = true
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL (it must still have been holding the lease): %v; stderr: %s", err, stderr.String())
	}
	t.Logf("child %s killed holding task %d, lease ends in %v", childOwner, id, time.Until(leaseUntil).Round(time.Millisecond))

	// Until the lease ends the task stays with the dead process.
	early := 0
	for time.Until(leaseUntil) > 100*time.Millisecond {
		claimNone(t, s, "early-claimer", "the dead child's lease has not expired yet")
		early++
		time.Sleep(50 * time.Millisecond)
	}
	if early == 0 {
		t.Fatalf("the 2 s lease expired before the parent could check it (machine too slow?)")
	}
	time.Sleep(time.Until(leaseUntil) + 50*time.Millisecond)

	// After it, several claimers race on two store handles: one wins.
	other := openTest(t, dsn)
	var (
		mu      sync.Mutex // guards winners and errs
		winners []Task
		errs    []error
		wg      sync.WaitGroup
	)
	for i := range 6 {
		st := s
		if i%2 == 1 {
			st = other
		}
		wg.Go(func() {
			task, ok, err := st.ClaimTask(ctx, fmt.Sprintf("rescuer-%d", i), time.Minute)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
			if ok {
				winners = append(winners, task)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if len(winners) != 1 {
		t.Fatalf("%d claims succeeded after the lease expired, want exactly 1: %+v", len(winners), winners)
	}
	w := winners[0]
	if w.ID != id || w.Attempts != 2 {
		t.Fatalf("reclaimed task = %+v, want task %d on its second attempt", w, id)
	}
	t.Logf("early claims refused: %d; reclaimed by %s", early, w.LeaseOwner)

	isNotFound(t, s.CompleteTask(ctx, id, childOwner), "complete by the killed child's owner")
	must(t, s.CompleteTask(ctx, id, w.LeaseOwner), "complete by the rescuer")
	claimNone(t, s, "late-claimer", "the task ran once more and is done")
	final, err := s.GetTask(ctx, id)
	must(t, err, "get task")
	if final.State != TaskDone || final.Attempts != 2 {
		t.Fatalf("final task = %+v, want done after 2 attempts", final)
	}
}

// reportWriter is the child's stdout: it passes the first CLAIMED or ERROR
// line to lines and discards the rest.
type reportWriter struct {
	mu    sync.Mutex // guards buf and sent
	buf   []byte
	sent  bool
	lines chan<- string
}

func (w *reportWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sent {
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		l := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		if strings.HasPrefix(l, "CLAIMED ") || strings.HasPrefix(l, "ERROR ") {
			w.lines <- l
			w.sent = true
			w.buf = nil
			break
		}
	}
	return len(p), nil
}

// syncBuffer is a bytes.Buffer safe to read while exec's copier writes it.
type syncBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
