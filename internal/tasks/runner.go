// Package tasks runs the durable task queue kept in the store. A task is
// claimed with a lease that the runner extends while the handler works; if
// the daemon dies, the lease expires and the next daemon claims the task
// again. Handlers must therefore be idempotent: "destroy VM x" run twice
// must be as good as once.
package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
)

// Handler does the work of one task kind. A returned error is retried with
// backoff until the task's attempts are used up; Permanent(err) ends it at
// once.
type Handler func(ctx context.Context, t store.Task) error

type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// Permanent marks an error that retrying cannot fix.
func Permanent(err error) error { return permanentError{err} }

// Runner claims and runs tasks.
type Runner struct {
	store store.Store
	log   *slog.Logger
	owner string
	lease time.Duration
	// Poll is how often an idle runner looks for due tasks.
	Poll time.Duration

	mu       sync.Mutex // guards handlers
	handlers map[string]Handler

	wake chan struct{}
}

// NewRunner returns a runner whose leases last lease. The owner id names
// this process in the store (host and pid), so a stuck lease can be traced.
func NewRunner(st store.Store, log *slog.Logger, lease time.Duration) *Runner {
	host, _ := os.Hostname()
	return &Runner{
		store:    st,
		log:      log,
		owner:    fmt.Sprintf("%s/%d/%s", host, os.Getpid(), store.NewID("run")),
		lease:    lease,
		Poll:     500 * time.Millisecond,
		handlers: map[string]Handler{},
		wake:     make(chan struct{}, 1),
	}
}

// Register sets the handler for kind.
func (r *Runner) Register(kind string, h Handler) {
	r.mu.Lock()
	r.handlers[kind] = h
	r.mu.Unlock()
}

// Enqueue stores a task of kind with payload (marshalled to JSON) to run at
// runAt (zero: now) and wakes the runner.
func (r *Runner) Enqueue(ctx context.Context, kind string, payload any, runAt time.Time) (store.Task, error) {
	raw, err := json.Marshal(payload)
	if err != nil {
		return store.Task{}, fmt.Errorf("marshal %s payload: %w", kind, err)
	}
	t, err := r.store.EnqueueTask(ctx, store.Task{Kind: kind, Payload: raw, RunAt: runAt})
	if err != nil {
		return store.Task{}, err
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return t, nil
}

// Backoff is the delay before retry number attempt (1-based): 2s, 4s, 8s…
// capped at five minutes.
func Backoff(attempt int) time.Duration {
	d := 2 * time.Second
	for i := 1; i < attempt && d < 5*time.Minute; i++ {
		d *= 2
	}
	return min(d, 5*time.Minute)
}

// Run claims and runs tasks one at a time until ctx ends. One at a time is
// deliberate for now: the tasks are VM lifecycle steps on a small host.
func (r *Runner) Run(ctx context.Context) {
	r.log.Info("task runner started", "owner", r.owner, "lease", r.lease)
	for ctx.Err() == nil {
		t, ok, err := r.store.ClaimTask(ctx, r.owner, r.lease)
		if err != nil {
			if ctx.Err() == nil {
				r.log.Error("claim task", "err", err)
			}
		} else if ok {
			r.runOne(ctx, t)
			continue
		}
		select {
		case <-ctx.Done():
		case <-r.wake:
		case <-time.After(r.Poll):
		}
	}
}

func (r *Runner) runOne(ctx context.Context, t store.Task) {
	log := r.log.With("task_id", t.ID, "kind", t.Kind, "attempt", t.Attempts)
	r.mu.Lock()
	h := r.handlers[t.Kind]
	r.mu.Unlock()
	if h == nil {
		// Maybe a newer daemon registered it; leave it for later rather
		// than burn its attempts.
		log.Warn("no handler for task kind; retrying later")
		if _, err := r.store.FailTask(ctx, t.ID, r.owner, "no handler for kind "+t.Kind, time.Now().Add(time.Minute)); err != nil {
			log.Error("release task", "err", err)
		}
		return
	}
	log.Info("task started")
	start := time.Now()

	// Keep the lease alive while the handler runs.
	hctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(r.lease / 3)
		defer tick.Stop()
		for {
			select {
			case <-hctx.Done():
				return
			case <-tick.C:
				if err := r.store.ExtendLease(hctx, t.ID, r.owner, r.lease); err != nil && hctx.Err() == nil {
					log.Error("extend lease; stopping task", "err", err)
					cancel()
					return
				}
			}
		}
	}()
	err := h(hctx, t)
	cancel()
	<-done

	if ctx.Err() != nil {
		// Shutting down: leave the lease to expire so the next daemon
		// takes the task over.
		log.Info("task interrupted by shutdown", "duration_ms", time.Since(start).Milliseconds())
		return
	}
	if err == nil {
		if err := r.store.CompleteTask(ctx, t.ID, r.owner); err != nil {
			log.Error("complete task", "err", err)
			return
		}
		log.Info("task done", "duration_ms", time.Since(start).Milliseconds())
		return
	}
	retryAt := time.Now().Add(Backoff(t.Attempts))
	var perm permanentError
	if errors.As(err, &perm) {
		// A zero retry time tells the store the task is dead now.
		retryAt = time.Time{}
	}
	nt, ferr := r.store.FailTask(ctx, t.ID, r.owner, err.Error(), retryAt)
	if ferr != nil {
		log.Error("record task failure", "task_err", err, "err", ferr)
		return
	}
	if nt.State == store.TaskDead {
		log.Error("task dead after its last attempt", "err", err)
	} else {
		log.Warn("task failed; will retry", "err", err, "retry_at", retryAt.Format(time.RFC3339))
	}
}
