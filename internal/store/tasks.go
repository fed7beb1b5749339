package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// DefaultMaxAttempts is the MaxAttempts of a task enqueued without one.
const DefaultMaxAttempts = 5

// claimScanLimit bounds how many lease-expired tasks that have used all
// their attempts one ClaimTask call buries before it gives up for this call.
const claimScanLimit = 100

const taskCols = "id, kind, payload, state, attempts, max_attempts, run_at, lease_owner, lease_until, last_error, created_at, updated_at"

func scanTask(sc interface{ Scan(...any) error }) (Task, error) {
	var t Task
	err := sc.Scan(&t.ID, &t.Kind, bytesCol{&t.Payload}, &t.State, &t.Attempts, &t.MaxAttempts,
		timeCol{&t.RunAt}, &t.LeaseOwner, timeCol{&t.LeaseUntil}, &t.LastError,
		timeCol{&t.CreatedAt}, timeCol{&t.UpdatedAt})
	return t, err
}

func (s *sqlStore) EnqueueTask(ctx context.Context, t Task) (Task, error) {
	if t.Kind == "" {
		return Task{}, errors.New("enqueue task: kind is required")
	}
	now := s.clock()
	if t.RunAt.IsZero() {
		t.RunAt = now
	}
	if t.MaxAttempts <= 0 {
		t.MaxAttempts = DefaultMaxAttempts
	}
	row := s.db.QueryRowContext(ctx, s.q(`INSERT INTO tasks
		(kind, payload, state, attempts, max_attempts, run_at, lease_owner, lease_until, last_error, created_at, updated_at)
		VALUES (?, ?, ?, 0, ?, ?, '', NULL, '', ?, ?) RETURNING `+taskCols),
		t.Kind, jsonArg(t.Payload), TaskPending, t.MaxAttempts, s.ts(t.RunAt), s.ts(now), s.ts(now))
	out, err := scanTask(row)
	if err != nil {
		return Task{}, mapErr("enqueue task "+t.Kind, err)
	}
	return out, nil
}

// ClaimTask takes the oldest due task in one write transaction. On Postgres
// the candidate row is locked with FOR UPDATE SKIP LOCKED, so concurrent
// claimers pass over each other's rows instead of waiting or double-claiming;
// on SQLite the transaction holds the database write lock from BEGIN.
//
// A running task whose lease expired belongs to a process that died. If it
// has attempts left it is claimed again; if not it is marked dead here, since
// no FailTask will ever come for it.
//
// owner must be unique per process (not just per host): a restarted daemon
// must not be able to complete the lease its dead predecessor held.
func (s *sqlStore) ClaimTask(ctx context.Context, owner string, lease time.Duration) (Task, bool, error) {
	if owner == "" {
		return Task{}, false, errors.New("claim task: owner is required")
	}
	if lease <= 0 {
		return Task{}, false, errors.New("claim task: lease must be positive")
	}
	lock := ""
	if s.dialect == DialectPostgres {
		lock = " FOR UPDATE SKIP LOCKED"
	}
	var (
		claimed Task
		ok      bool
	)
	err := s.withTx(ctx, "claim task", func(tx *sql.Tx) error {
		now := s.clock()
		for range claimScanLimit {
			var (
				id                 int64
				state              string
				attempts, maxTries int
			)
			err := tx.QueryRowContext(ctx, s.q(`SELECT id, state, attempts, max_attempts FROM tasks
				WHERE (state = ? AND run_at <= ?) OR (state = ? AND lease_until < ?)
				ORDER BY run_at, id LIMIT 1`+lock),
				TaskPending, s.ts(now), TaskRunning, s.ts(now)).Scan(&id, &state, &attempts, &maxTries)
			if errors.Is(err, sql.ErrNoRows) {
				return nil
			}
			if err != nil {
				return mapErr("claim task: select", err)
			}
			if state == TaskRunning && attempts >= maxTries {
				if _, err := tx.ExecContext(ctx, s.q(`UPDATE tasks SET state = ?, lease_until = NULL, last_error = ?, updated_at = ? WHERE id = ?`),
					TaskDead, "lease expired on the last attempt ("+strconv.Itoa(attempts)+" of "+strconv.Itoa(maxTries)+")",
					s.ts(now), id); err != nil {
					return mapErr("claim task: bury", err)
				}
				s.log.Warn("task dead after its lease expired", "task_id", id, "attempts", attempts)
				continue
			}
			row := tx.QueryRowContext(ctx, s.q(`UPDATE tasks SET state = ?, lease_owner = ?, lease_until = ?,
				attempts = attempts + 1, updated_at = ? WHERE id = ? RETURNING `+taskCols),
				TaskRunning, owner, s.ts(now.Add(lease)), s.ts(now), id)
			t, err := scanTask(row)
			if err != nil {
				return mapErr("claim task: update", err)
			}
			if state == TaskRunning {
				s.log.Info("task reclaimed after lease expiry", "task_id", id, "kind", t.Kind, "attempt", t.Attempts)
			}
			claimed, ok = t, true
			return nil
		}
		return nil
	})
	if err != nil {
		return Task{}, false, err
	}
	return claimed, ok, nil
}

func (s *sqlStore) CompleteTask(ctx context.Context, id int64, owner string) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE tasks SET state = ?, lease_until = NULL, updated_at = ?
		WHERE id = ? AND state = ? AND lease_owner = ?`),
		TaskDone, s.ts(s.clock()), id, TaskRunning, owner)
	return affected(fmt.Sprintf("complete task %d", id), res, err)
}

func (s *sqlStore) FailTask(ctx context.Context, id int64, owner, errMsg string, retryAt time.Time) (Task, error) {
	now := s.clock()
	// A zero retryAt means retrying cannot help: the task is dead now.
	dead := retryAt.IsZero()
	if dead {
		retryAt = now
	}
	row := s.db.QueryRowContext(ctx, s.q(`UPDATE tasks SET
			state = CASE WHEN attempts >= max_attempts OR ? THEN ? ELSE ? END,
			run_at = ?, last_error = ?, lease_owner = '', lease_until = NULL, updated_at = ?
		WHERE id = ? AND state = ? AND lease_owner = ? RETURNING `+taskCols),
		dead, TaskDead, TaskPending, s.ts(retryAt), errMsg, s.ts(now), id, TaskRunning, owner)
	t, err := scanTask(row)
	if err != nil {
		return Task{}, mapErr(fmt.Sprintf("fail task %d", id), err)
	}
	return t, nil
}

// ExtendLease pushes the lease of a task owner still holds to now+lease, for
// work that outlives its first lease. ErrNotFound means the lease was lost.
func (s *sqlStore) ExtendLease(ctx context.Context, id int64, owner string, lease time.Duration) error {
	if lease <= 0 {
		return errors.New("extend lease: lease must be positive")
	}
	now := s.clock()
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE tasks SET lease_until = ?, updated_at = ?
		WHERE id = ? AND state = ? AND lease_owner = ?`),
		s.ts(now.Add(lease)), s.ts(now), id, TaskRunning, owner)
	return affected(fmt.Sprintf("extend lease of task %d", id), res, err)
}

func (s *sqlStore) GetTask(ctx context.Context, id int64) (Task, error) {
	t, err := scanTask(s.rdb.QueryRowContext(ctx, s.q(`SELECT `+taskCols+` FROM tasks WHERE id = ?`), id))
	return t, mapErr(fmt.Sprintf("get task %d", id), err)
}

func (s *sqlStore) ListTasks(ctx context.Context, state string) ([]Task, error) {
	query := `SELECT ` + taskCols + ` FROM tasks`
	var args []any
	if state != "" {
		query += ` WHERE state = ?`
		args = append(args, state)
	}
	query += ` ORDER BY id`
	rows, err := s.rdb.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, mapErr("list tasks", err)
	}
	return collect(rows, "list tasks", scanTask)
}

func (s *sqlStore) DeleteFinishedTasks(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM tasks WHERE state IN (?, ?) AND updated_at < ?`),
		TaskDone, TaskDead, s.ts(before))
	if err != nil {
		return 0, mapErr("delete finished tasks", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, mapErr("delete finished tasks", err)
	}
	return n, nil
}
