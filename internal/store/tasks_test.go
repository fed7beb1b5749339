package store

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestTaskQueue(t *testing.T) {
	forEachBackend(t, []storeCase{
		{"claim_complete", testClaimComplete},
		{"not_due_yet", testNotDueYet},
		{"oldest_due_first", testOldestDueFirst},
		{"fail_retry_at", testFailRetry},
		{"dead_after_max_attempts", testDeadAfterMaxAttempts},
		{"expired_lease_reclaim", testExpiredLeaseReclaim},
		{"expired_lease_on_last_attempt_is_dead", testExpiredLeaseLastAttempt},
		{"extend_lease", testExtendLease},
		{"concurrent_claimers", testConcurrentClaimers},
	})
}

func claimOne(t *testing.T, s Store, owner string, lease time.Duration) Task {
	t.Helper()
	task, ok, err := s.ClaimTask(t.Context(), owner, lease)
	must(t, err, "claim by %s", owner)
	if !ok {
		t.Fatalf("claim by %s: nothing due", owner)
	}
	return task
}

func claimNone(t *testing.T, s Store, owner string, why string) {
	t.Helper()
	task, ok, err := s.ClaimTask(t.Context(), owner, time.Minute)
	must(t, err, "claim by %s", owner)
	if ok {
		t.Fatalf("claim by %s got task %d (%s, attempt %d); want none: %s", owner, task.ID, task.State, task.Attempts, why)
	}
}

func testClaimComplete(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	before := time.Now().Add(-time.Second)
	enq, err := s.EnqueueTask(ctx, Task{Kind: "vm_destroy", Payload: []byte(`{"vm":"vm_1"}`)})
	must(t, err, "enqueue")
	if enq.ID == 0 || enq.State != TaskPending || enq.MaxAttempts != DefaultMaxAttempts || enq.Attempts != 0 {
		t.Fatalf("enqueued = %+v", enq)
	}
	if enq.RunAt.Before(before) || enq.RunAt.After(time.Now().Add(time.Second)) {
		t.Fatalf("zero RunAt became %v, want now", enq.RunAt)
	}

	got := claimOne(t, s, "worker-a", time.Minute)
	if got.ID != enq.ID || got.State != TaskRunning || got.Attempts != 1 || got.LeaseOwner != "worker-a" {
		t.Fatalf("claimed = %+v", got)
	}
	if d := time.Until(got.LeaseUntil); d < 50*time.Second || d > 61*time.Second {
		t.Fatalf("lease until %v is %v away, want about a minute", got.LeaseUntil, d)
	}
	jsonEqual(t, got.Payload, enq.Payload, "claimed payload")
	claimNone(t, s, "worker-b", "the only task is leased")

	isNotFound(t, s.CompleteTask(ctx, got.ID, "worker-b"), "complete by a non-owner")
	must(t, s.CompleteTask(ctx, got.ID, "worker-a"), "complete by the owner")
	isNotFound(t, s.CompleteTask(ctx, got.ID, "worker-a"), "complete twice")
	_, err = s.FailTask(ctx, got.ID, "worker-a", "late", time.Now())
	isNotFound(t, err, "fail a done task")

	done, err := s.GetTask(ctx, got.ID)
	must(t, err, "get task")
	if done.State != TaskDone || done.Attempts != 1 {
		t.Fatalf("completed task = %+v", done)
	}
	claimNone(t, s, "worker-b", "the task is done")
	_, err = s.GetTask(ctx, 987654)
	isNotFound(t, err, "get missing task")

	list, err := s.ListTasks(ctx, TaskDone)
	must(t, err, "list done")
	if len(list) != 1 || list[0].ID != got.ID {
		t.Fatalf("done tasks = %+v", list)
	}
	list, err = s.ListTasks(ctx, TaskPending)
	must(t, err, "list pending")
	if len(list) != 0 {
		t.Fatalf("pending tasks = %+v", list)
	}
}

func testNotDueYet(t *testing.T, s Store, _ string) {
	runAt := time.Now().Add(400 * time.Millisecond)
	enq, err := s.EnqueueTask(t.Context(), Task{Kind: "hibernate", RunAt: runAt, MaxAttempts: 2})
	must(t, err, "enqueue")
	if enq.MaxAttempts != 2 {
		t.Fatalf("max attempts = %d, want 2", enq.MaxAttempts)
	}
	claimNone(t, s, "w", "run_at is in the future")
	time.Sleep(time.Until(runAt) + 20*time.Millisecond)
	if got := claimOne(t, s, "w", time.Minute); got.ID != enq.ID {
		t.Fatalf("claimed %d, want %d", got.ID, enq.ID)
	}
}

func testOldestDueFirst(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	now := time.Now()
	late, err := s.EnqueueTask(ctx, Task{Kind: "late", RunAt: now.Add(-time.Second)})
	must(t, err, "enqueue late")
	early, err := s.EnqueueTask(ctx, Task{Kind: "early", RunAt: now.Add(-time.Hour)})
	must(t, err, "enqueue early")
	if got := claimOne(t, s, "w", time.Minute); got.ID != early.ID {
		t.Fatalf("first claim = %s, want the task due an hour ago", got.Kind)
	}
	if got := claimOne(t, s, "w", time.Minute); got.ID != late.ID {
		t.Fatalf("second claim = %s, want late", got.Kind)
	}
}

func testFailRetry(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	enq, err := s.EnqueueTask(ctx, Task{Kind: "vm_destroy"})
	must(t, err, "enqueue")
	got := claimOne(t, s, "w1", time.Minute)

	_, err = s.FailTask(ctx, got.ID, "w2", "not mine", time.Now())
	isNotFound(t, err, "fail by a non-owner")

	retryAt := time.Now().Add(400 * time.Millisecond)
	failed, err := s.FailTask(ctx, got.ID, "w1", "qemu did not exit", retryAt)
	must(t, err, "fail")
	if failed.State != TaskPending || failed.LastError != "qemu did not exit" || failed.LeaseOwner != "" ||
		!failed.LeaseUntil.IsZero() || failed.Attempts != 1 {
		t.Fatalf("failed task = %+v", failed)
	}
	if !failed.RunAt.Equal(retryAt.UTC().Truncate(time.Microsecond)) {
		t.Fatalf("run_at = %v, want retryAt %v", failed.RunAt, retryAt)
	}
	claimNone(t, s, "w2", "the retry is not due yet")
	time.Sleep(time.Until(retryAt) + 20*time.Millisecond)
	again := claimOne(t, s, "w2", time.Minute)
	if again.ID != enq.ID || again.Attempts != 2 || again.LastError != "qemu did not exit" {
		t.Fatalf("retried task = %+v", again)
	}
	isNotFound(t, s.CompleteTask(ctx, got.ID, "w1"), "complete by the previous owner")
	must(t, s.CompleteTask(ctx, got.ID, "w2"), "complete the retry")
}

func testDeadAfterMaxAttempts(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	enq, err := s.EnqueueTask(ctx, Task{Kind: "vm_destroy", MaxAttempts: 3})
	must(t, err, "enqueue")
	for attempt := 1; attempt <= 3; attempt++ {
		got := claimOne(t, s, "w", time.Minute)
		if got.Attempts != attempt {
			t.Fatalf("attempt %d: task reports %d attempts", attempt, got.Attempts)
		}
		failed, err := s.FailTask(ctx, enq.ID, "w", fmt.Sprintf("failure %d", attempt), time.Now().Add(-time.Millisecond))
		must(t, err, "fail attempt %d", attempt)
		want := TaskPending
		if attempt == 3 {
			want = TaskDead
		}
		if failed.State != want {
			t.Fatalf("after failure %d state = %s, want %s", attempt, failed.State, want)
		}
	}
	claimNone(t, s, "w", "the task is dead")
	dead, err := s.ListTasks(ctx, TaskDead)
	must(t, err, "list dead")
	if len(dead) != 1 || dead[0].LastError != "failure 3" {
		t.Fatalf("dead tasks = %+v", dead)
	}
}

func testExpiredLeaseReclaim(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	enq, err := s.EnqueueTask(ctx, Task{Kind: "vm_destroy"})
	must(t, err, "enqueue")
	const lease = 400 * time.Millisecond
	first := claimOne(t, s, "dying-worker", lease)
	claimNone(t, s, "rescuer", "the lease is still held")
	time.Sleep(time.Until(first.LeaseUntil) + 20*time.Millisecond)

	second := claimOne(t, s, "rescuer", time.Minute)
	if second.ID != enq.ID || second.Attempts != 2 || second.LeaseOwner != "rescuer" {
		t.Fatalf("reclaimed task = %+v", second)
	}
	// The old owner woke up: every write it tries is refused.
	isNotFound(t, s.CompleteTask(ctx, enq.ID, "dying-worker"), "complete by the expired owner")
	_, err = s.FailTask(ctx, enq.ID, "dying-worker", "x", time.Now())
	isNotFound(t, err, "fail by the expired owner")
	isNotFound(t, s.ExtendLease(ctx, enq.ID, "dying-worker", time.Minute), "extend by the expired owner")
	must(t, s.CompleteTask(ctx, enq.ID, "rescuer"), "complete by the new owner")
	claimNone(t, s, "rescuer", "the task is done")
}

func testExpiredLeaseLastAttempt(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	enq, err := s.EnqueueTask(ctx, Task{Kind: "vm_destroy", MaxAttempts: 1})
	must(t, err, "enqueue")
	first := claimOne(t, s, "dying-worker", 300*time.Millisecond)
	time.Sleep(time.Until(first.LeaseUntil) + 20*time.Millisecond)
	claimNone(t, s, "rescuer", "the expired task had no attempts left")
	got, err := s.GetTask(ctx, enq.ID)
	must(t, err, "get task")
	if got.State != TaskDead || got.LastError == "" {
		t.Fatalf("task after its last lease expired = %+v", got)
	}
}

func testExtendLease(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	_, err := s.EnqueueTask(ctx, Task{Kind: "image_build"})
	must(t, err, "enqueue")
	got := claimOne(t, s, "w1", 300*time.Millisecond)
	isNotFound(t, s.ExtendLease(ctx, got.ID, "w2", time.Minute), "extend by a non-owner")
	must(t, s.ExtendLease(ctx, got.ID, "w1", 5*time.Second), "extend")
	time.Sleep(time.Until(got.LeaseUntil) + 100*time.Millisecond)
	claimNone(t, s, "w2", "the extended lease still holds")
	extended, err := s.GetTask(ctx, got.ID)
	must(t, err, "get task")
	if !extended.LeaseUntil.After(got.LeaseUntil.Add(3 * time.Second)) {
		t.Fatalf("lease until %v, was %v before extending", extended.LeaseUntil, got.LeaseUntil)
	}
	must(t, s.CompleteTask(ctx, got.ID, "w1"), "complete")
	isNotFound(t, s.ExtendLease(ctx, got.ID, "w1", time.Minute), "extend a done task")
}

// testConcurrentClaimers runs workers on two Store handles of one database
// (as two daemons would) and checks that no task is ever handed to two
// workers and every task is done exactly once.
func testConcurrentClaimers(t *testing.T, s Store, dsn string) {
	ctx := t.Context()
	const tasks, workers = 60, 8
	for i := range tasks {
		_, err := s.EnqueueTask(ctx, Task{Kind: "work", Payload: fmt.Appendf(nil, `{"i":%d}`, i)})
		must(t, err, "enqueue %d", i)
	}
	other := openTest(t, dsn)

	var (
		mu      sync.Mutex // guards claims and errs
		claims  = map[int64][]string{}
		errList []error
		wg      sync.WaitGroup
	)
	for w := range workers {
		st := s
		if w%2 == 1 {
			st = other
		}
		owner := fmt.Sprintf("worker-%d", w)
		wg.Go(func() {
			for {
				task, ok, err := st.ClaimTask(ctx, owner, time.Minute)
				if err != nil {
					mu.Lock()
					errList = append(errList, fmt.Errorf("%s claim: %w", owner, err))
					mu.Unlock()
					return
				}
				if !ok {
					return
				}
				mu.Lock()
				claims[task.ID] = append(claims[task.ID], owner)
				mu.Unlock()
				if err := st.CompleteTask(ctx, task.ID, owner); err != nil {
					mu.Lock()
					errList = append(errList, fmt.Errorf("%s complete %d: %w", owner, task.ID, err))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errList...); err != nil {
		t.Fatal(err)
	}
	if len(claims) != tasks {
		t.Fatalf("%d distinct tasks claimed, want %d", len(claims), tasks)
	}
	perWorker := map[string]int{}
	for id, owners := range claims {
		if len(owners) != 1 {
			t.Fatalf("task %d claimed by %v", id, owners)
		}
		perWorker[owners[0]]++
	}
	t.Logf("tasks per worker: %v", perWorker)
	done, err := s.ListTasks(ctx, TaskDone)
	must(t, err, "list done")
	if len(done) != tasks {
		t.Fatalf("%d tasks done, want %d", len(done), tasks)
	}
}

func TestPruning(t *testing.T) {
	forEachBackend(t, []storeCase{{"finished_tasks_and_old_events", testPruning}})
}

func testPruning(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	// Four tasks: one to complete, one to fail for good, one to hold
	// claimed, one never claimed.
	for _, kind := range []string{"complete", "fail", "hold", "untouched"} {
		_, err := s.EnqueueTask(ctx, Task{Kind: kind, MaxAttempts: 1})
		must(t, err, "enqueue %s", kind)
	}
	for range 3 { // claims the first three, in enqueue order
		task := claimOne(t, s, "w", time.Minute)
		switch task.Kind {
		case "complete":
			must(t, s.CompleteTask(ctx, task.ID, "w"), "complete")
		case "fail":
			_, err := s.FailTask(ctx, task.ID, "w", "boom", time.Now())
			must(t, err, "fail")
		}
	}
	n, err := s.DeleteFinishedTasks(ctx, time.Now().Add(-time.Hour))
	must(t, err, "prune with an old cutoff")
	if n != 0 {
		t.Fatalf("pruned %d tasks finished within the last hour", n)
	}
	n, err = s.DeleteFinishedTasks(ctx, time.Now().Add(time.Second))
	must(t, err, "prune")
	if n != 2 {
		t.Fatalf("pruned %d tasks, want the done and the dead one", n)
	}
	left, err := s.ListTasks(ctx, "")
	must(t, err, "list")
	if len(left) != 2 || left[0].Kind != "hold" || left[0].State != TaskRunning ||
		left[1].Kind != "untouched" || left[1].State != TaskPending {
		t.Fatalf("tasks left = %+v", left)
	}

	old := time.Now().Add(-48 * time.Hour)
	_, err = s.AppendEvent(ctx, Event{Type: "old", CreatedAt: old})
	must(t, err, "append old")
	recent, err := s.AppendEvent(ctx, Event{Type: "recent"})
	must(t, err, "append recent")
	n, err = s.DeleteEventsBefore(ctx, time.Now().Add(-24*time.Hour))
	must(t, err, "prune events")
	evs, err := s.ListEvents(ctx, EventFilter{})
	must(t, err, "list events")
	if n != 1 || len(evs) != 1 || evs[0].ID != recent.ID {
		t.Fatalf("pruned %d events, left %+v", n, evs)
	}
}
