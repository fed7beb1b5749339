package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// sqlStore is the one Store implementation; the dialect only changes
// placeholders, how timestamps travel, and row locking in ClaimTask.
type sqlStore struct {
	dialect string
	// db takes every write. For SQLite it is a single connection that
	// begins transactions with BEGIN IMMEDIATE; for Postgres it is the pool.
	db *sql.DB
	// rdb serves reads. For SQLite it is a separate read-only pool that WAL
	// lets run beside the writer; for Postgres it is the same pool as db.
	rdb *sql.DB
	log *slog.Logger
	// now is the clock for timestamps and leases, replaceable in tests.
	now func() time.Time
}

func newSQLStore(dialect string, db, rdb *sql.DB, log *slog.Logger) *sqlStore {
	return &sqlStore{dialect: dialect, db: db, rdb: rdb, log: log, now: time.Now}
}

// sqliteTimeLayout is fixed width (always six fractional digits, always Z),
// so SQLite's string comparison of two timestamps orders them in time.
const sqliteTimeLayout = "2006-01-02T15:04:05.000000Z"

func (s *sqlStore) Dialect() string { return s.dialect }

func (s *sqlStore) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping %s store: %w", s.dialect, err)
	}
	if s.rdb != s.db {
		if err := s.rdb.PingContext(ctx); err != nil {
			return fmt.Errorf("ping %s store readers: %w", s.dialect, err)
		}
	}
	return nil
}

func (s *sqlStore) Close() error {
	err := s.db.Close()
	if s.rdb != s.db {
		err = errors.Join(err, s.rdb.Close())
	}
	if err != nil {
		return fmt.Errorf("close %s store: %w", s.dialect, err)
	}
	return nil
}

// q rewrites the ?-placeholders every query is written with into $1, $2...
// for Postgres. Queries never contain a literal '?'.
func (s *sqlStore) q(query string) string {
	if s.dialect != DialectPostgres {
		return query
	}
	var b strings.Builder
	b.Grow(len(query) + 8)
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	return b.String()
}

// clock returns the current time as stored: UTC, microsecond precision
// (what Postgres keeps), so a value read back equals the value written.
func (s *sqlStore) clock() time.Time { return normTime(s.now()) }

func normTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// ts converts a timestamp to a query argument of the dialect.
func (s *sqlStore) ts(t time.Time) any {
	t = normTime(t)
	if s.dialect == DialectSQLite {
		return t.Format(sqliteTimeLayout)
	}
	return t
}

// nts is ts for nullable columns: the zero time is stored as NULL.
func (s *sqlStore) nts(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return s.ts(t)
}

// timeCol scans a timestamp of either dialect; NULL scans as the zero time.
type timeCol struct{ t *time.Time }

func (c timeCol) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*c.t = time.Time{}
	case time.Time:
		*c.t = v.UTC()
	case string:
		return c.parse(v)
	case []byte:
		return c.parse(string(v))
	default:
		return fmt.Errorf("scan timestamp: unsupported type %T", src)
	}
	return nil
}

func (c timeCol) parse(v string) error {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return fmt.Errorf("scan timestamp %q: %w", v, err)
	}
	*c.t = t.UTC()
	return nil
}

// jsonArg stores an empty document as {} so the column is always valid JSON.
func jsonArg(b []byte) any {
	if len(b) == 0 {
		return "{}"
	}
	return string(b)
}

// bytesCol scans JSON (text in SQLite, jsonb in Postgres) or a blob into a
// byte slice the caller owns.
type bytesCol struct{ b *[]byte }

func (c bytesCol) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*c.b = nil
	case string:
		*c.b = []byte(v)
	case []byte:
		*c.b = append([]byte(nil), v...)
	default:
		return fmt.Errorf("scan bytes: unsupported type %T", src)
	}
	return nil
}

// nullStr stores "" as NULL, for optional foreign keys.
func nullStr(v string) any {
	if v == "" {
		return nil
	}
	return v
}

// strCol scans a nullable text column; NULL scans as "".
type strCol struct{ s *string }

func (c strCol) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*c.s = ""
	case string:
		*c.s = v
	case []byte:
		*c.s = string(v)
	default:
		return fmt.Errorf("scan text: unsupported type %T", src)
	}
	return nil
}

// withTx runs fn in a write transaction and commits it, or rolls back when
// fn fails. Under SQLite the transaction holds the write lock from BEGIN.
func (s *sqlStore) withTx(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return mapErr(op+": begin", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return mapErr(op+": commit", err)
	}
	return nil
}

// ---- users ----

const userCols = "id, name, role, created_at"

func scanUser(sc interface{ Scan(...any) error }) (User, error) {
	var u User
	err := sc.Scan(&u.ID, &u.Name, &u.Role, timeCol{&u.CreatedAt})
	return u, err
}

func (s *sqlStore) CreateUser(ctx context.Context, u User) error {
	if u.ID == "" || u.Name == "" {
		return errors.New("create user: id and name are required")
	}
	if u.Role == "" {
		u.Role = RoleUser
	}
	if u.CreatedAt.IsZero() {
		u.CreatedAt = s.clock()
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO users (`+userCols+`) VALUES (?, ?, ?, ?)`),
		u.ID, u.Name, u.Role, s.ts(u.CreatedAt))
	return mapErr("create user "+u.Name, err)
}

func (s *sqlStore) GetUser(ctx context.Context, id string) (User, error) {
	u, err := scanUser(s.rdb.QueryRowContext(ctx, s.q(`SELECT `+userCols+` FROM users WHERE id = ?`), id))
	return u, mapErr("get user "+id, err)
}

func (s *sqlStore) GetUserByName(ctx context.Context, name string) (User, error) {
	u, err := scanUser(s.rdb.QueryRowContext(ctx, s.q(`SELECT `+userCols+` FROM users WHERE name = ?`), name))
	return u, mapErr("get user by name "+name, err)
}

func (s *sqlStore) ListUsers(ctx context.Context) ([]User, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+userCols+` FROM users ORDER BY created_at, id`)
	if err != nil {
		return nil, mapErr("list users", err)
	}
	return collect(rows, "list users", scanUser)
}

func (s *sqlStore) DeleteUser(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM users WHERE id = ?`), id)
	return affected("delete user "+id, res, err)
}

func (s *sqlStore) CountUsers(ctx context.Context) (int, error) {
	var n int
	if err := s.rdb.QueryRowContext(ctx, `SELECT COUNT(*) FROM users`).Scan(&n); err != nil {
		return 0, mapErr("count users", err)
	}
	return n, nil
}

// collect scans every row with scan and closes rows.
func collect[T any](rows *sql.Rows, op string, scan func(interface{ Scan(...any) error }) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, mapErr(op, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, mapErr(op, err)
	}
	return out, nil
}

// ---- API keys ----

func (s *sqlStore) CreateAPIKey(ctx context.Context, k APIKey) error {
	if k.ID == "" || k.UserID == "" || k.Hash == "" {
		return errors.New("create api key: id, user id and hash are required")
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = s.clock()
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO api_keys (id, user_id, hash, prefix, created_at, name, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)`),
		k.ID, k.UserID, k.Hash, k.Prefix, s.ts(k.CreatedAt), k.Name, s.nts(k.ExpiresAt))
	return mapErr("create api key "+k.ID, err)
}

func (s *sqlStore) LookupAPIKey(ctx context.Context, hash string) (APIKey, User, error) {
	var (
		k APIKey
		u User
	)
	err := s.rdb.QueryRowContext(ctx, s.q(`
		SELECT k.id, k.user_id, k.hash, k.prefix, k.created_at, k.name, k.expires_at, u.id, u.name, u.role, u.created_at
		FROM api_keys k JOIN users u ON u.id = k.user_id
		WHERE k.hash = ? AND (k.expires_at IS NULL OR k.expires_at > ?)`), hash, s.ts(s.clock())).Scan(
		&k.ID, &k.UserID, &k.Hash, &k.Prefix, timeCol{&k.CreatedAt}, &k.Name, timeCol{&k.ExpiresAt},
		&u.ID, &u.Name, &u.Role, timeCol{&u.CreatedAt})
	if err != nil {
		// The hash is not echoed: it identifies a key.
		return APIKey{}, User{}, mapErr("lookup api key", err)
	}
	return k, u, nil
}

func scanAPIKey(sc interface{ Scan(...any) error }) (APIKey, error) {
	var k APIKey
	err := sc.Scan(&k.ID, &k.UserID, &k.Hash, &k.Prefix, timeCol{&k.CreatedAt}, &k.Name, timeCol{&k.ExpiresAt})
	return k, err
}

func (s *sqlStore) ListAPIKeys(ctx context.Context, userID string) ([]APIKey, error) {
	rows, err := s.rdb.QueryContext(ctx, s.q(`SELECT id, user_id, hash, prefix, created_at, name, expires_at
		FROM api_keys WHERE user_id = ? ORDER BY created_at, id`), userID)
	if err != nil {
		return nil, mapErr("list api keys", err)
	}
	return collect(rows, "list api keys", scanAPIKey)
}

func (s *sqlStore) DeleteAPIKey(ctx context.Context, id, userID string) error {
	query := `DELETE FROM api_keys WHERE id = ?`
	args := []any{id}
	if userID != "" {
		query += ` AND user_id = ?`
		args = append(args, userID)
	}
	res, err := s.db.ExecContext(ctx, s.q(query), args...)
	return affected("delete api key "+id, res, err)
}

// ---- events ----

const eventCols = "id, user_id, type, subject, data, created_at"

func scanEvent(sc interface{ Scan(...any) error }) (Event, error) {
	var e Event
	err := sc.Scan(&e.ID, strCol{&e.UserID}, &e.Type, &e.Subject, bytesCol{&e.Data}, timeCol{&e.CreatedAt})
	return e, err
}

// pgEventLockKey is the advisory lock that orders event appends on
// Postgres (an arbitrary constant, "hangarev" in ASCII).
const pgEventLockKey = 0x68616e6761726576

func (s *sqlStore) AppendEvent(ctx context.Context, e Event) (Event, error) {
	if e.Type == "" {
		return Event{}, errors.New("append event: type is required")
	}
	if e.CreatedAt.IsZero() {
		e.CreatedAt = s.clock()
	}
	e.CreatedAt = normTime(e.CreatedAt)
	if len(e.Data) == 0 {
		e.Data = []byte("{}")
	}
	err := s.withTx(ctx, "append event", func(tx *sql.Tx) error {
		if s.dialect == DialectPostgres {
			// Identity values are handed out before commit, so without this
			// a reader could see id 11 before id 10 commits and skip 10
			// forever. Holding the lock to commit makes ids visible in order.
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(`+strconv.FormatInt(pgEventLockKey, 10)+`)`); err != nil {
				return mapErr("append event: lock", err)
			}
		}
		err := tx.QueryRowContext(ctx, s.q(`INSERT INTO events (user_id, type, subject, data, created_at)
			VALUES (?, ?, ?, ?, ?) RETURNING id`),
			nullStr(e.UserID), e.Type, e.Subject, jsonArg(e.Data), s.ts(e.CreatedAt)).Scan(&e.ID)
		return mapErr("append event "+e.Type, err)
	})
	if err != nil {
		return Event{}, err
	}
	return e, nil
}

// Event list limits: a zero limit means defaultEventLimit.
const (
	defaultEventLimit = 100
	maxEventLimit     = 1000
)

func (s *sqlStore) ListEvents(ctx context.Context, f EventFilter) ([]Event, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = defaultEventLimit
	}
	limit = min(limit, maxEventLimit)
	query := `SELECT ` + eventCols + ` FROM events WHERE id > ?`
	args := []any{f.AfterID}
	if f.UserID != "" {
		query += ` AND user_id = ?`
		args = append(args, f.UserID)
	}
	query += ` ORDER BY id LIMIT ?`
	args = append(args, limit)
	rows, err := s.rdb.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, mapErr("list events", err)
	}
	return collect(rows, "list events", scanEvent)
}

func (s *sqlStore) LastEventID(ctx context.Context) (int64, error) {
	var id int64
	if err := s.rdb.QueryRowContext(ctx, `SELECT COALESCE(MAX(id), 0) FROM events`).Scan(&id); err != nil {
		return 0, mapErr("last event id", err)
	}
	return id, nil
}

func (s *sqlStore) DeleteEventsBefore(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM events WHERE created_at < ?`), s.ts(before))
	if err != nil {
		return 0, mapErr("delete events", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, mapErr("delete events", err)
	}
	return n, nil
}

// ---- VMs ----

const vmCols = "id, owner_id, kind, state, last_error, spec, runtime, created_at, updated_at, version"

func scanVM(sc interface{ Scan(...any) error }) (VM, error) {
	var v VM
	err := sc.Scan(&v.ID, &v.OwnerID, &v.Kind, &v.State, &v.LastError,
		bytesCol{&v.Spec}, bytesCol{&v.Runtime}, timeCol{&v.CreatedAt}, timeCol{&v.UpdatedAt}, &v.Version)
	return v, err
}

func (s *sqlStore) CreateVM(ctx context.Context, v VM) error {
	if v.ID == "" || v.OwnerID == "" {
		return errors.New("create vm: id and owner are required")
	}
	now := s.clock()
	if v.CreatedAt.IsZero() {
		v.CreatedAt = now
	}
	if v.UpdatedAt.IsZero() {
		v.UpdatedAt = v.CreatedAt
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO vms (`+vmCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)`),
		v.ID, v.OwnerID, v.Kind, v.State, v.LastError, jsonArg(v.Spec), jsonArg(v.Runtime),
		s.ts(v.CreatedAt), s.ts(v.UpdatedAt))
	return mapErr("create vm "+v.ID, err)
}

// pgVMCreateLockKey orders checked VM creates on Postgres ("hangarvm").
const pgVMCreateLockKey = 0x68616e676172766d

func (s *sqlStore) CreateVMChecked(ctx context.Context, v VM, check func(existing []VM) error) error {
	if v.ID == "" || v.OwnerID == "" {
		return errors.New("create vm: id and owner are required")
	}
	now := s.clock()
	if v.CreatedAt.IsZero() {
		v.CreatedAt = now
	}
	if v.UpdatedAt.IsZero() {
		v.UpdatedAt = v.CreatedAt
	}
	return s.withTx(ctx, "create vm "+v.ID, func(tx *sql.Tx) error {
		if s.dialect == DialectPostgres {
			// Under READ COMMITTED two transactions would both read the
			// old rows; the lock makes the second wait for the first's
			// commit and then read its insert. (SQLite's BEGIN IMMEDIATE
			// already holds the one write lock.)
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(`+strconv.FormatInt(pgVMCreateLockKey, 10)+`)`); err != nil {
				return mapErr("create vm: lock", err)
			}
		}
		rows, err := tx.QueryContext(ctx, s.q(`SELECT `+vmCols+` FROM vms WHERE state <> ?`), "destroyed")
		if err != nil {
			return mapErr("create vm: list", err)
		}
		existing, err := collect(rows, "create vm: list", scanVM)
		if err != nil {
			return err
		}
		if err := check(existing); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, s.q(`INSERT INTO vms (`+vmCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)`),
			v.ID, v.OwnerID, v.Kind, v.State, v.LastError, jsonArg(v.Spec), jsonArg(v.Runtime),
			s.ts(v.CreatedAt), s.ts(v.UpdatedAt))
		return mapErr("create vm "+v.ID, err)
	})
}

func (s *sqlStore) GetVM(ctx context.Context, id, ownerID string) (VM, error) {
	query := `SELECT ` + vmCols + ` FROM vms WHERE id = ?`
	args := []any{id}
	if ownerID != "" {
		// Another user's VM is reported exactly like a missing one.
		query += ` AND owner_id = ?`
		args = append(args, ownerID)
	}
	v, err := scanVM(s.rdb.QueryRowContext(ctx, s.q(query), args...))
	return v, mapErr("get vm "+id, err)
}

func (s *sqlStore) ListVMs(ctx context.Context, ownerID string) ([]VM, error) {
	query := `SELECT ` + vmCols + ` FROM vms`
	var args []any
	if ownerID != "" {
		query += ` WHERE owner_id = ?`
		args = append(args, ownerID)
	}
	query += ` ORDER BY created_at, id`
	rows, err := s.rdb.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, mapErr("list vms", err)
	}
	return collect(rows, "list vms", scanVM)
}

// UpdateVM writes the mutable fields (kind, state, last error, spec,
// runtime) over the version v was read at and sets UpdatedAt to now.
func (s *sqlStore) UpdateVM(ctx context.Context, v VM) error {
	updated := s.clock()
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE vms SET kind = ?, state = ?, last_error = ?, spec = ?, runtime = ?, updated_at = ?,
		version = version + 1 WHERE id = ? AND version = ?`),
		v.Kind, v.State, v.LastError, jsonArg(v.Spec), jsonArg(v.Runtime), s.ts(updated), v.ID, v.Version)
	return s.casResult(ctx, "update vm "+v.ID, "vms", v.ID, res, err)
}

// casResult turns the result of a compare-and-swap UPDATE ... WHERE id = ?
// AND version = ? into nil, ErrConflict (the row is there at another
// version: someone wrote first) or ErrNotFound (no such row).
func (s *sqlStore) casResult(ctx context.Context, op, table, id string, res sql.Result, err error) error {
	if err != nil {
		return mapErr(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return mapErr(op, err)
	}
	if n > 0 {
		return nil
	}
	var cur int64
	// table is one of two constants, never input.
	if err := s.db.QueryRowContext(ctx, s.q(`SELECT version FROM `+table+` WHERE id = ?`), id).Scan(&cur); err != nil {
		return mapErr(op, err) // sql.ErrNoRows: ErrNotFound
	}
	return fmt.Errorf("%s: stored version is %d: %w", op, cur, ErrConflict)
}

func (s *sqlStore) DeleteVM(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM vms WHERE id = ?`), id)
	return affected("delete vm "+id, res, err)
}
