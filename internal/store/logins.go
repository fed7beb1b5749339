package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ---- auth sessions ----

const authCols = "id, owner_id, provider, mode, state, error, vm_id, created_at, updated_at, expires_at, finished_at, details, version"

func scanAuth(sc interface{ Scan(...any) error }) (AuthSession, error) {
	var a AuthSession
	err := sc.Scan(&a.ID, &a.OwnerID, &a.Provider, &a.Mode, &a.State, &a.Error, strCol{&a.VMID},
		timeCol{&a.CreatedAt}, timeCol{&a.UpdatedAt}, timeCol{&a.ExpiresAt}, timeCol{&a.FinishedAt}, bytesCol{&a.Details}, &a.Version)
	return a, err
}

func (s *sqlStore) CreateAuthSession(ctx context.Context, a AuthSession) error {
	if a.ID == "" || a.OwnerID == "" || a.Provider == "" {
		return errors.New("create auth session: id, owner and provider are required")
	}
	if a.Mode == "" {
		a.Mode = "browser"
	}
	if a.State == "" {
		a.State = AuthPending
	}
	if a.CreatedAt.IsZero() {
		a.CreatedAt = s.clock()
	}
	if a.UpdatedAt.IsZero() {
		a.UpdatedAt = a.CreatedAt
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO auth_sessions (`+authCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)`),
		a.ID, a.OwnerID, a.Provider, a.Mode, a.State, a.Error, nullStr(a.VMID),
		s.ts(a.CreatedAt), s.ts(a.UpdatedAt), s.nts(a.ExpiresAt), s.nts(a.FinishedAt), jsonArg(a.Details))
	return mapErr("create auth session "+a.ID, err)
}

func (s *sqlStore) GetAuthSession(ctx context.Context, id, ownerID string) (AuthSession, error) {
	query := `SELECT ` + authCols + ` FROM auth_sessions WHERE id = ?`
	args := []any{id}
	if ownerID != "" {
		query += ` AND owner_id = ?`
		args = append(args, ownerID)
	}
	a, err := scanAuth(s.rdb.QueryRowContext(ctx, s.q(query), args...))
	return a, mapErr("get auth session "+id, err)
}

func (s *sqlStore) ListAuthSessions(ctx context.Context, ownerID string) ([]AuthSession, error) {
	query := `SELECT ` + authCols + ` FROM auth_sessions`
	var args []any
	if ownerID != "" {
		query += ` WHERE owner_id = ?`
		args = append(args, ownerID)
	}
	query += ` ORDER BY created_at, id`
	rows, err := s.rdb.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, mapErr("list auth sessions", err)
	}
	return collect(rows, "list auth sessions", scanAuth)
}

func (s *sqlStore) UpdateAuthSession(ctx context.Context, a AuthSession) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE auth_sessions SET state = ?, error = ?, vm_id = ?,
		expires_at = ?, finished_at = ?, details = ?, updated_at = ?, version = version + 1 WHERE id = ? AND version = ?`),
		a.State, a.Error, nullStr(a.VMID), s.nts(a.ExpiresAt), s.nts(a.FinishedAt), jsonArg(a.Details), s.ts(s.clock()), a.ID, a.Version)
	return s.casResult(ctx, "update auth session "+a.ID, "auth_sessions", a.ID, res, err)
}

// ---- credentials ----

const credCols = "id, owner_id, provider, version, key_version, nonce, ciphertext, metadata, captured_at, validated_at, updated_at"

func scanCred(sc interface{ Scan(...any) error }) (Credential, error) {
	var c Credential
	err := sc.Scan(&c.ID, &c.OwnerID, &c.Provider, &c.Version, &c.KeyVersion,
		bytesCol{&c.Nonce}, bytesCol{&c.Ciphertext}, bytesCol{&c.Metadata},
		timeCol{&c.CapturedAt}, timeCol{&c.ValidatedAt}, timeCol{&c.UpdatedAt})
	return c, err
}

func (s *sqlStore) PutCredential(ctx context.Context, c Credential) (Credential, error) {
	if c.OwnerID == "" || c.Provider == "" || len(c.Nonce) == 0 || len(c.Ciphertext) == 0 {
		return Credential{}, errors.New("put credential: owner, provider, nonce and ciphertext are required")
	}
	if c.Version < 1 {
		return Credential{}, fmt.Errorf("put credential: version %d, want 1 or more", c.Version)
	}
	// The op names owner and provider only: never anything sealed.
	op := fmt.Sprintf("put credential %s/%s v%d", c.OwnerID, c.Provider, c.Version)
	now := s.clock()
	if c.CapturedAt.IsZero() {
		c.CapturedAt = now
	}
	var out Credential
	err := s.withTx(ctx, op, func(tx *sql.Tx) error {
		if c.Version == 1 {
			if c.ID == "" {
				c.ID = NewID("cred")
			}
			row := tx.QueryRowContext(ctx, s.q(`INSERT INTO credentials (`+credCols+`)
				VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?) RETURNING `+credCols),
				c.ID, c.OwnerID, c.Provider, c.KeyVersion, c.Nonce, c.Ciphertext, jsonArg(c.Metadata),
				s.ts(c.CapturedAt), s.nts(c.ValidatedAt), s.ts(now))
			var err error
			out, err = scanCred(row)
			return mapErr(op, err)
		}
		// Compare-and-swap on the version: of two concurrent writers of
		// version n only one finds n-1 stored.
		row := tx.QueryRowContext(ctx, s.q(`UPDATE credentials SET version = ?, key_version = ?, nonce = ?,
				ciphertext = ?, metadata = ?, captured_at = ?, validated_at = ?, updated_at = ?
			WHERE owner_id = ? AND provider = ? AND version = ? RETURNING `+credCols),
			c.Version, c.KeyVersion, c.Nonce, c.Ciphertext, jsonArg(c.Metadata),
			s.ts(c.CapturedAt), s.nts(c.ValidatedAt), s.ts(now), c.OwnerID, c.Provider, c.Version-1)
		var err error
		out, err = scanCred(row)
		if !errors.Is(err, sql.ErrNoRows) {
			return mapErr(op, err)
		}
		// Nothing at version n-1: tell a lost race from a missing record.
		var cur int64
		err = tx.QueryRowContext(ctx, s.q(`SELECT version FROM credentials WHERE owner_id = ? AND provider = ?`),
			c.OwnerID, c.Provider).Scan(&cur)
		if err != nil {
			return mapErr(op, err) // sql.ErrNoRows: ErrNotFound
		}
		return fmt.Errorf("%s: stored version is %d: %w", op, cur, ErrConflict)
	})
	if err != nil {
		return Credential{}, err
	}
	return out, nil
}

func (s *sqlStore) GetCredential(ctx context.Context, ownerID, provider string) (Credential, error) {
	c, err := scanCred(s.rdb.QueryRowContext(ctx, s.q(`SELECT `+credCols+` FROM credentials WHERE owner_id = ? AND provider = ?`),
		ownerID, provider))
	return c, mapErr("get credential "+ownerID+"/"+provider, err)
}

func (s *sqlStore) ListCredentials(ctx context.Context, ownerID string) ([]Credential, error) {
	query := `SELECT ` + credCols + ` FROM credentials`
	var args []any
	if ownerID != "" {
		query += ` WHERE owner_id = ?`
		args = append(args, ownerID)
	}
	query += ` ORDER BY owner_id, provider`
	rows, err := s.rdb.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, mapErr("list credentials", err)
	}
	return collect(rows, "list credentials", scanCred)
}

func (s *sqlStore) MarkCredentialValidated(ctx context.Context, ownerID, provider string, at time.Time) error {
	if at.IsZero() {
		at = s.clock()
	}
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE credentials SET validated_at = ?, updated_at = ? WHERE owner_id = ? AND provider = ?`),
		s.ts(at), s.ts(s.clock()), ownerID, provider)
	return affected("mark credential validated "+ownerID+"/"+provider, res, err)
}

func (s *sqlStore) DeleteCredential(ctx context.Context, ownerID, provider string) error {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM credentials WHERE owner_id = ? AND provider = ?`), ownerID, provider)
	return affected("delete credential "+ownerID+"/"+provider, res, err)
}
