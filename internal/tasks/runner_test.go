package tasks_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/tasks"
	"github.com/hangar-vm/hangar/internal/testutil"
)

func newStore(t *testing.T) store.Store {
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "h.db"), testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func waitState(t *testing.T, st store.Store, id int64, state string, within time.Duration) store.Task {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, err := st.GetTask(context.Background(), id)
		if err == nil && got.State == state {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %d is %q (err %v), want %q within %s", id, got.State, err, state, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRunnerRetriesThenSucceeds(t *testing.T) {
	st := newStore(t)
	r := tasks.NewRunner(st, testutil.Logger(t), 2*time.Second)
	r.Poll = 20 * time.Millisecond
	var calls atomic.Int32
	r.Register("flaky", func(ctx context.Context, task store.Task) error {
		if calls.Add(1) == 1 {
			return errors.New("first attempt fails")
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	task, err := r.Enqueue(ctx, "flaky", map[string]string{"x": "y"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	got := waitState(t, st, task.ID, store.TaskDone, 10*time.Second)
	if calls.Load() != 2 || got.Attempts != 2 || got.LastError != "first attempt fails" {
		t.Fatalf("calls=%d task=%+v, want 2 attempts with the first error recorded", calls.Load(), got)
	}
}

func TestRunnerPermanentErrorIsDead(t *testing.T) {
	st := newStore(t)
	r := tasks.NewRunner(st, testutil.Logger(t), 2*time.Second)
	r.Poll = 20 * time.Millisecond
	var calls atomic.Int32
	r.Register("broken", func(ctx context.Context, task store.Task) error {
		calls.Add(1)
		return tasks.Permanent(errors.New("payload names no vm"))
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	task, _ := r.Enqueue(ctx, "broken", nil, time.Time{})
	got := waitState(t, st, task.ID, store.TaskDead, 5*time.Second)
	time.Sleep(200 * time.Millisecond)
	if calls.Load() != 1 || got.LastError != "payload names no vm" {
		t.Fatalf("calls=%d task=%+v, want one call and dead", calls.Load(), got)
	}
}

// A handler that runs longer than its lease keeps the task: the runner
// extends the lease, so a second runner never starts it too.
func TestRunnerExtendsLease(t *testing.T) {
	st := newStore(t)
	var running, overlap atomic.Int32
	h := func(ctx context.Context, task store.Task) error {
		if running.Add(1) > 1 {
			overlap.Add(1)
		}
		defer running.Add(-1)
		select {
		case <-time.After(3500 * time.Millisecond):
		case <-ctx.Done():
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var first store.Task
	for i := 0; i < 2; i++ {
		r := tasks.NewRunner(st, testutil.Logger(t), time.Second)
		r.Poll = 20 * time.Millisecond
		r.Register("long", h)
		if i == 0 {
			var err error
			if first, err = r.Enqueue(ctx, "long", nil, time.Time{}); err != nil {
				t.Fatal(err)
			}
		}
		go r.Run(ctx)
	}
	got := waitState(t, st, first.ID, store.TaskDone, 15*time.Second)
	if overlap.Load() != 0 || got.Attempts != 1 {
		t.Fatalf("task ran concurrently (%d) or more than once (attempts %d)", overlap.Load(), got.Attempts)
	}
}

func TestBackoff(t *testing.T) {
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second}
	for i, w := range want {
		if got := tasks.Backoff(i + 1); got != w {
			t.Errorf("Backoff(%d) = %s, want %s", i+1, got, w)
		}
	}
	if got := tasks.Backoff(30); got != 5*time.Minute {
		t.Errorf("Backoff(30) = %s, want the 5m cap", got)
	}
}
