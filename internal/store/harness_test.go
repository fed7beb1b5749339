package store

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// backend is one dialect the shared suite runs against.
type backend struct {
	name string
	// newDSN returns the DSN of a fresh, empty database that is removed
	// when t ends. It skips (or fails under CI) when the dialect's server
	// is not available.
	newDSN func(t *testing.T) string
}

var backends = []backend{
	{name: DialectSQLite, newDSN: newSQLiteDSN},
	{name: DialectPostgres, newDSN: newPostgresDSN},
}

func newSQLiteDSN(t *testing.T) string {
	t.Helper()
	// A sub-directory that does not exist yet proves Open creates it.
	return filepath.Join(t.TempDir(), "data", "hangar.db")
}

// postgresAdminURL returns HANGAR_TEST_POSTGRES, skipping the test when it
// is unset, except under CI where Postgres is a required part.
func postgresAdminURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv("HANGAR_TEST_POSTGRES")
	if u == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("HANGAR_TEST_POSTGRES must be set under CI")
		}
		t.Skip("HANGAR_TEST_POSTGRES is not set (e.g. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable); skipping the Postgres half of the suite")
	}
	return u
}

// newPostgresDSN creates a database hangar_test_<random> for this test alone
// and drops it (closing any leftover connections) when the test ends.
func newPostgresDSN(t *testing.T) string {
	t.Helper()
	admin := postgresAdminURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := sql.Open("pgx", admin)
	if err != nil {
		t.Fatalf("open postgres admin connection: %v", err)
	}
	defer db.Close()
	name := "hangar_test_" + NewID("")
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db, err := sql.Open("pgx", admin)
		if err != nil {
			t.Errorf("open postgres admin connection for cleanup: %v", err)
			return
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
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

// testLogger sends store logs to the test log, so they show with -v or on
// failure only.
func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = tWriter{}

// openTest opens dsn and closes the store when t ends.
func openTest(t *testing.T, dsn string) Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, dsn, testLogger(t))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

// forEachBackend runs fn as subtest <backend>/<name> for every backend, each
// with a fresh database.
func forEachBackend(t *testing.T, cases []storeCase) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			if b.name == DialectPostgres {
				postgresAdminURL(t) // one skip line for the whole half
			}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					dsn := b.newDSN(t)
					c.fn(t, openTest(t, dsn), dsn)
				})
			}
		})
	}
}

type storeCase struct {
	name string
	fn   func(t *testing.T, s Store, dsn string)
}

func must(t *testing.T, err error, what string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}
