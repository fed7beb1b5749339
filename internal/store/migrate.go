package store

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// migrationsFS holds one directory of goose SQL migrations per dialect. A
// schema change is a new numbered file in both directories; applied files
// are never edited.
//
//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrationsFS embed.FS

// migrate applies every pending migration of s's dialect. It uses goose's
// Provider API, so no package-level goose state is touched.
func migrate(ctx context.Context, s *sqlStore, log *slog.Logger) error {
	sub, err := fs.Sub(migrationsFS, "migrations/"+s.dialect)
	if err != nil {
		return fmt.Errorf("migrations for %s: %w", s.dialect, err)
	}
	var (
		dialect goose.Dialect
		opts    []goose.ProviderOption
	)
	switch s.dialect {
	case DialectPostgres:
		dialect = goose.DialectPostgres
		// Two daemons starting at once against one database must not both
		// migrate: goose holds a Postgres advisory lock while it works.
		locker, err := lock.NewPostgresSessionLocker()
		if err != nil {
			return fmt.Errorf("migration lock: %w", err)
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	default:
		// SQLite: the single writer connection already serialises writers
		// in this process.
		dialect = goose.DialectSQLite3
	}
	opts = append(opts, goose.WithDisableGlobalRegistry(true))
	p, err := goose.NewProvider(dialect, s.db, sub, opts...)
	if err != nil {
		return fmt.Errorf("migration provider: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", s.dialect, err)
	}
	for _, r := range results {
		log.Info("store migration applied", "dialect", s.dialect,
			"version", r.Source.Version, "duration", r.Duration)
	}
	return nil
}
