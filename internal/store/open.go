package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	// Registers the "pgx" database/sql driver.
	_ "github.com/jackc/pgx/v5/stdlib"
	// Registers the "sqlite" database/sql driver (pure Go, no cgo).
	_ "modernc.org/sqlite"
)

// Dialect names returned by Store.Dialect.
const (
	DialectSQLite   = "sqlite"
	DialectPostgres = "postgres"
)

// sqliteBusyTimeout is how long a SQLite writer waits for another process's
// write lock (a CLI command, or a second daemon by mistake) before failing.
// Inside one process writes are serialised by the single writer connection,
// so this only matters across processes.
const sqliteBusyTimeout = 10 * time.Second

// sqliteReaders is the size of the read-only SQLite pool. WAL lets readers run
// beside the one writer; a handful is plenty for an API server on a few cores.
const sqliteReaders = 4

// Open connects to the store named by dsn and brings its schema up to date.
//
// dsn is a postgres:// or postgresql:// URL (pgx), or a SQLite database path,
// optionally written as sqlite://path (or sqlite:path). For SQLite the parent
// directory is created, the database runs in WAL mode with foreign keys on,
// and all writes go through one connection so that writers queue in Go
// instead of failing with SQLITE_BUSY.
func Open(ctx context.Context, dsn string, log *slog.Logger) (Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if dsn == "" {
		return nil, errors.New("open store: empty dsn")
	}
	var (
		s   *sqlStore
		err error
	)
	if isPostgresDSN(dsn) {
		s, err = openPostgres(ctx, dsn, log)
	} else {
		s, err = openSQLite(ctx, dsn, log)
	}
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, s, log); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

func isPostgresDSN(dsn string) bool {
	l := strings.ToLower(dsn)
	return strings.HasPrefix(l, "postgres://") || strings.HasPrefix(l, "postgresql://")
}

func openPostgres(ctx context.Context, dsn string, log *slog.Logger) (*sqlStore, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		// The error text of pgx may echo the host and user but never the
		// password, so it is safe to wrap.
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	log.Debug("store opened", "dialect", DialectPostgres)
	return newSQLStore(DialectPostgres, db, db, log), nil
}

// sqlitePath strips the optional sqlite:// or sqlite: scheme and any query.
func sqlitePath(dsn string) string {
	p := dsn
	switch {
	case strings.HasPrefix(p, "sqlite://"):
		p = strings.TrimPrefix(p, "sqlite://")
	case strings.HasPrefix(p, "sqlite:"):
		p = strings.TrimPrefix(p, "sqlite:")
	case strings.HasPrefix(p, "file:"):
		p = strings.TrimPrefix(p, "file:")
	}
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	return p
}

func openSQLite(ctx context.Context, dsn string, log *slog.Logger) (*sqlStore, error) {
	path := sqlitePath(dsn)
	if path == "" {
		return nil, fmt.Errorf("open sqlite: no path in dsn %q", dsn)
	}
	if strings.ContainsAny(path, "?#") {
		// The driver reads everything after '?' as its own parameters.
		return nil, fmt.Errorf("open sqlite: path %q must not contain '?' or '#'", path)
	}
	if path == ":memory:" {
		// Two pools cannot share one in-memory database; a temp file is the
		// honest replacement and still vanishes with the test that made it.
		return nil, errors.New("open sqlite: :memory: is not supported, use a file in a temp dir")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create sqlite dir: %w", err)
	}
	if err := privateFile(path, log); err != nil {
		return nil, err
	}
	q := url.Values{}
	q.Set("_busy_timeout", fmt.Sprint(sqliteBusyTimeout.Milliseconds()))
	q.Set("_foreign_keys", "1")
	q.Set("_journal_mode", "WAL")
	// NORMAL is durable across process crashes in WAL mode; only a power
	// loss can drop the last commits, which the queue's leases tolerate.
	q.Set("_synchronous", "NORMAL")

	// The writer takes the write lock at BEGIN (BEGIN IMMEDIATE), so a
	// transaction that reads and then writes (ClaimTask) can never fail
	// half-way with SQLITE_BUSY when it upgrades its lock.
	wq := url.Values{}
	for k, v := range q {
		wq[k] = v
	}
	wq.Set("_txlock", "immediate")
	wdb, err := sql.Open("sqlite", path+"?"+wq.Encode())
	if err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	// One writer connection: database/sql queues writers for us.
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxLifetime(0)
	wdb.SetConnMaxIdleTime(0)
	// Ping creates the file and switches it to WAL before readers open it.
	if err := wdb.PingContext(ctx); err != nil {
		_ = wdb.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}

	rq := url.Values{}
	for k, v := range q {
		if k == "_journal_mode" {
			continue // set once by the writer; persistent in the file
		}
		rq[k] = v
	}
	rq.Add("_pragma", "query_only(1)")
	rdb, err := sql.Open("sqlite", path+"?"+rq.Encode())
	if err != nil {
		_ = wdb.Close()
		return nil, fmt.Errorf("open sqlite readers: %w", err)
	}
	rdb.SetMaxOpenConns(sqliteReaders)
	rdb.SetMaxIdleConns(sqliteReaders)
	if err := rdb.PingContext(ctx); err != nil {
		_ = wdb.Close()
		_ = rdb.Close()
		return nil, fmt.Errorf("open sqlite readers %s: %w", path, err)
	}
	log.Debug("store opened", "dialect", DialectSQLite, "path", path)
	return newSQLStore(DialectSQLite, wdb, rdb, log), nil
}

// privateFile makes sure the database file exists with mode 0600 before
// SQLite opens it: SQLite creates its -wal and -shm files with the main
// file's mode, and the default umask would leave all three readable by
// every local user (they hold key hashes and sealed credentials). A file
// an older version created looser is tightened.
func privateFile(path string, log *slog.Logger) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		return f.Close()
	}
	if !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create sqlite file: %w", err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		if fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(p, 0o600); err != nil {
				return fmt.Errorf("restrict %s to its owner: %w", p, err)
			}
			log.Warn("store file was readable by others; restricted it to mode 0600", "path", p, "was", fmt.Sprintf("%04o", fi.Mode().Perm()))
		}
	}
	return nil
}
