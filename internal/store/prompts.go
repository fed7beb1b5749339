package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Prompt states. queued and running are live; the others are final.
const (
	PromptQueued    = "queued"
	PromptRunning   = "running"
	PromptCompleted = "completed"
	PromptFailed    = "failed"
	PromptCancelled = "cancelled"
)

// Prompt is one prompt run by a provider's CLI in a CLI VM. Error never
// holds secrets.
type Prompt struct {
	ID         string
	OwnerID    string
	VMID       string
	Provider   string
	State      string
	Prompt     string
	Cwd        string
	Model      string
	TimeoutS   int
	ExitCode   *int
	Error      string
	Reason     string // why it failed, a short code (api.Reason*)
	Usage      []byte // JSON: token counts where the CLI reports them
	CreatedAt  time.Time
	StartedAt  time.Time // zero until it runs
	FinishedAt time.Time // zero while live
	UpdatedAt  time.Time
}

// PromptFilter selects prompts, newest first.
type PromptFilter struct {
	OwnerID string // "" for everyone's
	State   string // "" for any
	// Before pages: only prompts created before this one (its id).
	Before string
	Limit  int
}

// PromptEvent is one common event of a prompt; Seq counts from 1 per
// prompt and is the SSE id.
type PromptEvent struct {
	PromptID  string
	Seq       int64
	Type      string
	Data      []byte // JSON object, never a token
	CreatedAt time.Time
}

// Lease is the single-writer lease of a user's credential for one provider:
// the VM that may hold the credential files, and until when.
type Lease struct {
	OwnerID    string
	Provider   string
	VMID       string
	Holder     string // the daemon instance that renews it
	AcquiredAt time.Time
	ExpiresAt  time.Time
}

const promptCols = "id, owner_id, vm_id, provider, state, prompt, cwd, model, timeout_s, exit_code, error, reason, usage, created_at, started_at, finished_at, updated_at"

func scanPrompt(sc interface{ Scan(...any) error }) (Prompt, error) {
	var p Prompt
	var code sql.NullInt64
	err := sc.Scan(&p.ID, &p.OwnerID, strCol{&p.VMID}, &p.Provider, &p.State, &p.Prompt, &p.Cwd, &p.Model, &p.TimeoutS,
		&code, &p.Error, &p.Reason, bytesCol{&p.Usage}, timeCol{&p.CreatedAt}, timeCol{&p.StartedAt}, timeCol{&p.FinishedAt}, timeCol{&p.UpdatedAt})
	if code.Valid {
		c := int(code.Int64)
		p.ExitCode = &c
	}
	return p, err
}

func exitArg(c *int) any {
	if c == nil {
		return nil
	}
	return int64(*c)
}

func (s *sqlStore) CreatePrompt(ctx context.Context, p Prompt) error {
	if p.ID == "" || p.OwnerID == "" || p.Provider == "" || p.State == "" {
		return errors.New("create prompt: id, owner, provider and state are required")
	}
	if p.CreatedAt.IsZero() {
		p.CreatedAt = s.clock()
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO prompts (`+promptCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		p.ID, p.OwnerID, nullStr(p.VMID), p.Provider, p.State, p.Prompt, p.Cwd, p.Model, p.TimeoutS, exitArg(p.ExitCode), p.Error, p.Reason,
		jsonArg(p.Usage), s.ts(p.CreatedAt), s.nts(p.StartedAt), s.nts(p.FinishedAt), s.ts(p.CreatedAt))
	return mapErr("create prompt "+p.ID, err)
}

func (s *sqlStore) GetPrompt(ctx context.Context, id, ownerID string) (Prompt, error) {
	query := `SELECT ` + promptCols + ` FROM prompts WHERE id = ?`
	args := []any{id}
	if ownerID != "" {
		query += ` AND owner_id = ?`
		args = append(args, ownerID)
	}
	p, err := scanPrompt(s.rdb.QueryRowContext(ctx, s.q(query), args...))
	return p, mapErr("get prompt "+id, err)
}

func (s *sqlStore) ListPrompts(ctx context.Context, f PromptFilter) ([]Prompt, error) {
	query := `SELECT ` + promptCols + ` FROM prompts WHERE 1 = 1`
	var args []any
	if f.OwnerID != "" {
		query += ` AND owner_id = ?`
		args = append(args, f.OwnerID)
	}
	if f.State != "" {
		query += ` AND state = ?`
		args = append(args, f.State)
	}
	if f.Before != "" {
		// Keyset paging on (created_at, id): stable while new prompts arrive.
		query += ` AND (created_at, id) < (SELECT created_at, id FROM prompts WHERE id = ?)`
		args = append(args, f.Before)
	}
	query += ` ORDER BY created_at DESC, id DESC`
	if f.Limit > 0 {
		query += fmt.Sprintf(` LIMIT %d`, f.Limit)
	}
	rows, err := s.rdb.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, mapErr("list prompts", err)
	}
	return collect(rows, "list prompts", scanPrompt)
}

func (s *sqlStore) UpdatePrompt(ctx context.Context, p Prompt, fromState string) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE prompts SET vm_id = ?, state = ?, exit_code = ?, error = ?, reason = ?, usage = ?,
		started_at = ?, finished_at = ?, updated_at = ? WHERE id = ? AND state = ?`),
		nullStr(p.VMID), p.State, exitArg(p.ExitCode), p.Error, p.Reason, jsonArg(p.Usage), s.nts(p.StartedAt), s.nts(p.FinishedAt),
		s.ts(s.clock()), p.ID, fromState)
	if err != nil {
		return mapErr("update prompt "+p.ID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		var cur string
		err := s.rdb.QueryRowContext(ctx, s.q(`SELECT state FROM prompts WHERE id = ?`), p.ID).Scan(&cur)
		if err != nil {
			return mapErr("update prompt "+p.ID, err)
		}
		return fmt.Errorf("update prompt %s: it is %s, not %s: %w", p.ID, cur, fromState, ErrConflict)
	}
	return nil
}

func (s *sqlStore) AppendPromptEvent(ctx context.Context, e PromptEvent) (PromptEvent, error) {
	if e.PromptID == "" || e.Type == "" {
		return e, errors.New("append prompt event: prompt and type are required")
	}
	e.CreatedAt = s.clock()
	op := "append prompt event " + e.PromptID
	err := s.withTx(ctx, op, func(tx *sql.Tx) error {
		if s.dialect == DialectPostgres {
			// Concurrent appenders of one prompt serialise on its row, or
			// two would compute the same next number. (SQLite's single
			// writer connection serialises them already.)
			var id string
			if err := tx.QueryRowContext(ctx, s.q(`SELECT id FROM prompts WHERE id = ? FOR UPDATE`), e.PromptID).Scan(&id); err != nil {
				return mapErr(op, err)
			}
		}
		if err := tx.QueryRowContext(ctx, s.q(`SELECT COALESCE(MAX(seq), 0) + 1 FROM prompt_events WHERE prompt_id = ?`), e.PromptID).Scan(&e.Seq); err != nil {
			return mapErr(op, err)
		}
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO prompt_events (prompt_id, seq, type, data, created_at) VALUES (?, ?, ?, ?, ?)`),
			e.PromptID, e.Seq, e.Type, jsonArg(e.Data), s.ts(e.CreatedAt))
		return mapErr(op, err)
	})
	return e, err
}

func (s *sqlStore) ListPromptEvents(ctx context.Context, promptID string, afterSeq int64, limit int) ([]PromptEvent, error) {
	query := `SELECT prompt_id, seq, type, data, created_at FROM prompt_events WHERE prompt_id = ? AND seq > ? ORDER BY seq`
	if limit > 0 {
		query += fmt.Sprintf(` LIMIT %d`, limit)
	}
	rows, err := s.rdb.QueryContext(ctx, s.q(query), promptID, afterSeq)
	if err != nil {
		return nil, mapErr("list prompt events", err)
	}
	return collect(rows, "list prompt events", func(sc interface{ Scan(...any) error }) (PromptEvent, error) {
		var e PromptEvent
		err := sc.Scan(&e.PromptID, &e.Seq, &e.Type, bytesCol{&e.Data}, timeCol{&e.CreatedAt})
		return e, err
	})
}

// ---- credential leases ----

const leaseCols = "owner_id, provider, vm_id, holder, acquired_at, expires_at"

func scanLease(sc interface{ Scan(...any) error }) (Lease, error) {
	var l Lease
	err := sc.Scan(&l.OwnerID, &l.Provider, &l.VMID, &l.Holder, timeCol{&l.AcquiredAt}, timeCol{&l.ExpiresAt})
	return l, err
}

func (s *sqlStore) AcquireLease(ctx context.Context, l Lease) (Lease, error) {
	if l.OwnerID == "" || l.Provider == "" || l.VMID == "" || l.ExpiresAt.IsZero() {
		return Lease{}, errors.New("acquire lease: owner, provider, vm and expiry are required")
	}
	op := fmt.Sprintf("acquire lease %s/%s for %s", l.OwnerID, l.Provider, l.VMID)
	now := s.clock()
	var out Lease
	err := s.withTx(ctx, op, func(tx *sql.Tx) error {
		// Make sure a row exists, then lock it: two acquirers of a free
		// lease serialise on the row instead of both inserting.
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO credential_leases (`+leaseCols+`) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (owner_id, provider) DO NOTHING`),
			l.OwnerID, l.Provider, l.VMID, l.Holder, s.ts(now), s.ts(l.ExpiresAt)); err != nil {
			return mapErr(op, err)
		}
		lock := ""
		if s.dialect == DialectPostgres {
			lock = " FOR UPDATE"
		}
		cur, err := scanLease(tx.QueryRowContext(ctx, s.q(`SELECT `+leaseCols+` FROM credential_leases WHERE owner_id = ? AND provider = ?`+lock), l.OwnerID, l.Provider))
		if err != nil {
			return mapErr(op, err)
		}
		if cur.VMID != l.VMID && cur.ExpiresAt.After(now) {
			out = cur
			return fmt.Errorf("%s: held by %s until %s: %w", op, cur.VMID, cur.ExpiresAt.Format(time.RFC3339), ErrConflict)
		}
		acquired := cur.AcquiredAt
		if cur.VMID != l.VMID {
			acquired = now
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE credential_leases SET vm_id = ?, holder = ?, acquired_at = ?, expires_at = ?
			WHERE owner_id = ? AND provider = ?`), l.VMID, l.Holder, s.ts(acquired), s.ts(l.ExpiresAt), l.OwnerID, l.Provider); err != nil {
			return mapErr(op, err)
		}
		out = Lease{OwnerID: l.OwnerID, Provider: l.Provider, VMID: l.VMID, Holder: l.Holder, AcquiredAt: acquired, ExpiresAt: normTime(l.ExpiresAt)}
		return nil
	})
	return out, err
}

func (s *sqlStore) RenewLease(ctx context.Context, ownerID, provider, vmID string, until time.Time) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE credential_leases SET expires_at = ? WHERE owner_id = ? AND provider = ? AND vm_id = ?`),
		s.ts(until), ownerID, provider, vmID)
	return affected(fmt.Sprintf("renew lease %s/%s for %s", ownerID, provider, vmID), res, err)
}

func (s *sqlStore) ReleaseLease(ctx context.Context, ownerID, provider, vmID string) error {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM credential_leases WHERE owner_id = ? AND provider = ? AND vm_id = ?`),
		ownerID, provider, vmID)
	return affected(fmt.Sprintf("release lease %s/%s for %s", ownerID, provider, vmID), res, err)
}

func (s *sqlStore) GetLease(ctx context.Context, ownerID, provider string) (Lease, error) {
	l, err := scanLease(s.rdb.QueryRowContext(ctx, s.q(`SELECT `+leaseCols+` FROM credential_leases WHERE owner_id = ? AND provider = ?`), ownerID, provider))
	return l, mapErr("get lease "+ownerID+"/"+provider, err)
}

func (s *sqlStore) ListLeases(ctx context.Context, ownerID string) ([]Lease, error) {
	query := `SELECT ` + leaseCols + ` FROM credential_leases`
	var args []any
	if ownerID != "" {
		query += ` WHERE owner_id = ?`
		args = append(args, ownerID)
	}
	query += ` ORDER BY owner_id, provider`
	rows, err := s.rdb.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, mapErr("list leases", err)
	}
	return collect(rows, "list leases", scanLease)
}
