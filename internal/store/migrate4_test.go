package store

import (
	"database/sql"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/pressly/goose/v3"
)

// TestMigrationMovesNetworkPolicies: a network policy stored the old way
// (a sealed record under provider hangar.network in credentials) is moved
// into network_policies by migration 00004, sealed bytes and version
// intact, and is no longer among the user's credentials.
func TestMigrationMovesNetworkPolicies(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			if b.name == DialectPostgres {
				postgresAdminURL(t)
			}
			dsn := b.newDSN(t)
			driver, dialect, path := "sqlite", goose.DialectSQLite3, sqlitePath(dsn)
			if b.name == DialectPostgres {
				driver, dialect, path = "pgx", goose.DialectPostgres, dsn
			}
			if b.name == DialectSQLite {
				if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			db, err := sql.Open(driver, path)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			sub, err := fs.Sub(migrationsFS, "migrations/"+b.name)
			if err != nil {
				t.Fatal(err)
			}
			p, err := goose.NewProvider(dialect, db, sub, goose.WithDisableGlobalRegistry(true))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.UpTo(t.Context(), 2); err != nil {
				t.Fatalf("migrate to 2: %v", err)
			}
			now := "2026-01-02T03:04:05.000000Z"
			ph := func(q string) string { return (&sqlStore{dialect: b.name}).q(q) }
			if _, err := db.Exec(ph(`INSERT INTO users (id, name, role, created_at) VALUES ('usr_a', 'alice', 'user', ?)`), now); err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(ph(`INSERT INTO credentials (id, owner_id, provider, version, key_version, nonce, ciphertext, metadata, captured_at, updated_at)
				VALUES ('cred_n', 'usr_a', 'hangar.network', 3, 1, ?, ?, '{"mode":"allow","allow":["10.0.0.0/8"],"proxy_host":"http://p:1"}', ?, ?)`),
				[]byte("nonce"), []byte("sealed"), now, now); err != nil {
				t.Fatal(err)
			}
			s := openTest(t, dsn) // applies the rest
			np, err := s.GetNetworkPolicy(t.Context(), "usr_a")
			if err != nil {
				t.Fatalf("policy after migration: %v", err)
			}
			if np.Mode != "allow" || len(np.Allow) != 1 || np.Allow[0] != "10.0.0.0/8" || np.ProxyHost != "http://p:1" ||
				np.Version != 3 || np.KeyVersion != 1 || string(np.Nonce) != "nonce" || string(np.Ciphertext) != "sealed" {
				t.Fatalf("migrated policy = %+v", np)
			}
			creds, err := s.ListCredentials(t.Context(), "usr_a")
			if err != nil || len(creds) != 0 {
				t.Fatalf("credentials after migration = %+v, %v", creds, err)
			}
		})
	}
}
