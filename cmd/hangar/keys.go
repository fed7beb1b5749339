package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/internal/store"
)

// newKeysCmd is `hangar keys`: the key-encryption keys that seal stored
// credentials. It works on the data directory and the store directly, with
// or without a running daemon (a daemon notices a rotated key file by
// itself).
func newKeysCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Show and rotate the keys that seal stored credentials",
		Long: `Credentials are sealed with AES-256-GCM under a versioned key-encryption key.

The keys live in <data-dir>/seal.keys (JSON, mode 0600, created on first
start), or come from HANGAR_SEAL_KEY (base64 of 32 bytes) with
HANGAR_SEAL_KEY_VERSION and, for retired keys still needed, HANGAR_SEAL_OLD_KEYS
(version:base64key,...).`,
	}
	cmd.AddCommand(newKeysLsCmd(o), newKeysRotateCmd(o))
	return cmd
}

// keysTarget resolves the data dir and the store DSN the way `hangar serve`
// does: --database, else HANGAR_DATABASE, else the SQLite file in the data
// dir. exists is false when that SQLite file is missing.
func keysTarget(o *rootOptions, database string) (dataDir, dsn string, exists bool) {
	dataDir = config.ResolveDataDir(o.dataDir)
	if database == "" {
		database = os.Getenv("HANGAR_DATABASE")
	}
	cfg := config.Config{DataDir: dataDir, Database: database}
	dsn = cfg.DSN()
	if database != "" {
		return dataDir, dsn, true
	}
	_, err := os.Stat(dsn)
	return dataDir, dsn, err == nil
}

// keysKeyring opens the keyring, refusing to create a key file where none
// exists (only the daemon's first start does that) when create is false.
func keysKeyring(dataDir string, create bool) (*seal.Keyring, error) {
	if v, ok := os.LookupEnv(seal.EnvKey); !create && (!ok || v == "") {
		path := filepath.Join(dataDir, seal.KeyFileName)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no key file %s and no %s: the daemon creates the key file on its first start", path, seal.EnvKey)
		}
	}
	return seal.Open(dataDir, os.LookupEnv)
}

type keyRow struct {
	Version   int       `json:"version"`
	Current   bool      `json:"current"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	Records   *int      `json:"records,omitempty"` // nil when no store was reachable
}

func newKeysLsCmd(o *rootOptions) *cobra.Command {
	var database string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List key versions, which one is current, and how many records each seals",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			dataDir, dsn, exists := keysTarget(o, database)
			kr, err := keysKeyring(dataDir, false)
			if err != nil {
				return err
			}
			counts := map[int]int{}
			haveCounts := false
			if exists {
				st, err := store.Open(ctx, dsn, cliLogger())
				if err != nil {
					return err
				}
				defer st.Close()
				all, err := st.ListCredentials(ctx, "")
				if err != nil {
					return err
				}
				for _, c := range all {
					counts[c.KeyVersion]++
				}
				haveCounts = true
			}
			var rows []keyRow
			for _, k := range kr.Keys() {
				r := keyRow{Version: k.Version, Current: k.Current, CreatedAt: k.CreatedAt}
				if haveCounts {
					n := counts[k.Version]
					r.Records = &n
					delete(counts, k.Version)
				}
				rows = append(rows, r)
			}
			if o.json {
				return o.printJSON(cmd.OutOrStdout(), map[string]any{"source": kr.Source(), "keys": rows})
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "keys from %s\n", kr.Source())
			var trows [][]string
			for _, r := range rows {
				cur, created, recs := "", "-", "-"
				if r.Current {
					cur = "*"
				}
				if !r.CreatedAt.IsZero() {
					created = r.CreatedAt.Local().Format(time.DateTime)
				}
				if r.Records != nil {
					recs = strconv.Itoa(*r.Records)
				}
				trows = append(trows, []string{strconv.Itoa(r.Version), cur, created, recs})
			}
			if err := table(out, "VERSION\tCURRENT\tCREATED\tRECORDS", trows); err != nil {
				return err
			}
			// Records whose key is not in the keyring can never be opened:
			// say so loudly.
			for v, n := range counts {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %d record(s) are sealed with key v%d, which is not in the keyring\n", n, v)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&database, "database", "", "postgres:// URL of the store (env HANGAR_DATABASE; default: the SQLite file in the data dir)")
	return cmd
}

func newKeysRotateCmd(o *rootOptions) *cobra.Command {
	var (
		database   string
		resealOnly bool
	)
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Add a new current key and re-seal every credential record with it",
		Long: `Adds a new random key to <data-dir>/seal.keys and makes it current (older
keys stay, so records not yet re-sealed still open), then re-seals every
credential record in the store with the new key. A running daemon picks up
the new key by itself.

With keys from HANGAR_SEAL_KEY, deploy the new key first (a higher
HANGAR_SEAL_KEY_VERSION, the old key moved to HANGAR_SEAL_OLD_KEYS); this
command then only re-seals. --reseal-only does the same with the key file,
for instance to finish a rotation that was interrupted.

Once every record is on the new key (hangar keys ls shows 0 records for the
old ones), old keys may be removed from the key file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			out := cmd.OutOrStdout()
			dataDir, dsn, exists := keysTarget(o, database)
			if !exists {
				return fmt.Errorf("no store at %s: has hangar serve run with this data dir? (pass --database for Postgres)", dsn)
			}
			kr, err := keysKeyring(dataDir, false)
			if err != nil {
				return err
			}
			// The store first: if it cannot be reached, no key is added.
			st, err := store.Open(ctx, dsn, cliLogger())
			if err != nil {
				return err
			}
			defer st.Close()
			switch {
			case kr.FromEnv():
				fmt.Fprintf(out, "keys come from %s: re-sealing with its key v%d\n", seal.EnvKey, kr.Current())
			case resealOnly:
				fmt.Fprintf(out, "re-sealing with the current key v%d\n", kr.Current())
			default:
				v, err := kr.Rotate(ctx)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "added key v%d to %s; it is now current\n", v, kr.Path())
			}
			return rotateRecords(ctx, cmd, st, kr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&database, "database", "", "postgres:// URL of the store (env HANGAR_DATABASE; default: the SQLite file in the data dir)")
	f.BoolVar(&resealOnly, "reseal-only", false, "do not add a key; re-seal records that are not on the current key")
	return cmd
}

func rotateRecords(ctx context.Context, cmd *cobra.Command, st store.Store, kr *seal.Keyring) error {
	n, err := seal.RotateAll(ctx, st, kr)
	fmt.Fprintf(cmd.OutOrStdout(), "re-sealed %d credential record(s) with key v%d\n", n, kr.Current())
	if err != nil {
		return fmt.Errorf("some records were not re-sealed (run hangar keys rotate --reseal-only to retry): %w", err)
	}
	return nil
}
