package store

import (
	"database/sql"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// This file is the one place that knows driver error codes. Every Store
// method passes its errors through mapErr (and its row counts through
// affected), so callers only ever test errors.Is(err, ErrNotFound) or
// errors.Is(err, ErrConflict).

// Postgres SQLSTATE codes hangar maps.
const (
	pgUniqueViolation     = "23505"
	pgForeignKeyViolation = "23503"
)

// mapErr wraps err with op and, when the driver reported a missing row or a
// constraint violation, with ErrNotFound or ErrConflict. nil stays nil.
//
// A foreign-key violation means the record refers to a parent that does not
// exist (a VM for an unknown user), so it maps to ErrNotFound.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
		return fmt.Errorf("%s: %w", op, err)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s: %w", op, ErrNotFound)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case pgUniqueViolation:
			// The constraint name says which field clashed; the detail,
			// which would echo the value, is deliberately left out.
			return fmt.Errorf("%s: %w (%s)", op, ErrConflict, pgErr.ConstraintName)
		case pgForeignKeyViolation:
			return fmt.Errorf("%s: %w (%s)", op, ErrNotFound, pgErr.ConstraintName)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	var liteErr *sqlite.Error
	if errors.As(err, &liteErr) {
		switch liteErr.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			// SQLite's message names the table and column, never the value.
			return fmt.Errorf("%s: %w (%s)", op, ErrConflict, liteErr.Error())
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
			return fmt.Errorf("%s: %w (%s)", op, ErrNotFound, liteErr.Error())
		}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// affected turns an UPDATE or DELETE result into ErrNotFound when it touched
// no row, so "update something that does not exist" fails like a lookup.
func affected(op string, res sql.Result, err error) error {
	if err != nil {
		return mapErr(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return mapErr(op, err)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", op, ErrNotFound)
	}
	return nil
}
