package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
)

// ---- network policies ----

const netCols = "user_id, mode, allow, proxy_host, version, key_version, nonce, ciphertext, updated_at"

func scanNetPolicy(sc interface{ Scan(...any) error }) (NetworkPolicy, error) {
	var (
		p     NetworkPolicy
		allow []byte
	)
	err := sc.Scan(&p.UserID, &p.Mode, bytesCol{&allow}, &p.ProxyHost, &p.Version, &p.KeyVersion,
		bytesCol{&p.Nonce}, bytesCol{&p.Ciphertext}, timeCol{&p.UpdatedAt})
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal(allow, &p.Allow); err != nil {
		return p, fmt.Errorf("network policy allow-list: %w", err)
	}
	return p, nil
}

// nullBytes stores an empty byte slice as NULL (no upstream proxy).
func nullBytes(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

func (s *sqlStore) PutNetworkPolicy(ctx context.Context, p NetworkPolicy) (NetworkPolicy, error) {
	if p.UserID == "" || p.Mode == "" {
		return NetworkPolicy{}, errors.New("put network policy: user and mode are required")
	}
	if p.Version < 1 {
		return NetworkPolicy{}, fmt.Errorf("put network policy: version %d, want 1 or more", p.Version)
	}
	if p.Allow == nil {
		p.Allow = []string{}
	}
	allow, err := json.Marshal(p.Allow)
	if err != nil {
		return NetworkPolicy{}, fmt.Errorf("put network policy: %w", err)
	}
	op := fmt.Sprintf("put network policy %s v%d", p.UserID, p.Version)
	now := s.clock()
	var out NetworkPolicy
	err = s.withTx(ctx, op, func(tx *sql.Tx) error {
		if p.Version == 1 {
			row := tx.QueryRowContext(ctx, s.q(`INSERT INTO network_policies (`+netCols+`)
				VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?) RETURNING `+netCols),
				p.UserID, p.Mode, string(allow), p.ProxyHost, p.KeyVersion, nullBytes(p.Nonce), nullBytes(p.Ciphertext), s.ts(now))
			var err error
			out, err = scanNetPolicy(row)
			return mapErr(op, err)
		}
		row := tx.QueryRowContext(ctx, s.q(`UPDATE network_policies SET mode = ?, allow = ?, proxy_host = ?, version = ?,
				key_version = ?, nonce = ?, ciphertext = ?, updated_at = ?
			WHERE user_id = ? AND version = ? RETURNING `+netCols),
			p.Mode, string(allow), p.ProxyHost, p.Version, p.KeyVersion, nullBytes(p.Nonce), nullBytes(p.Ciphertext), s.ts(now),
			p.UserID, p.Version-1)
		var err error
		out, err = scanNetPolicy(row)
		if !errors.Is(err, sql.ErrNoRows) {
			return mapErr(op, err)
		}
		var cur int64
		if err := tx.QueryRowContext(ctx, s.q(`SELECT version FROM network_policies WHERE user_id = ?`), p.UserID).Scan(&cur); err != nil {
			return mapErr(op, err)
		}
		return fmt.Errorf("%s: stored version is %d: %w", op, cur, ErrConflict)
	})
	if err != nil {
		return NetworkPolicy{}, err
	}
	return out, nil
}

func (s *sqlStore) GetNetworkPolicy(ctx context.Context, userID string) (NetworkPolicy, error) {
	p, err := scanNetPolicy(s.rdb.QueryRowContext(ctx, s.q(`SELECT `+netCols+` FROM network_policies WHERE user_id = ?`), userID))
	return p, mapErr("get network policy "+userID, err)
}

func (s *sqlStore) ListNetworkPolicies(ctx context.Context) ([]NetworkPolicy, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+netCols+` FROM network_policies ORDER BY user_id`)
	if err != nil {
		return nil, mapErr("list network policies", err)
	}
	return collect(rows, "list network policies", scanNetPolicy)
}

func (s *sqlStore) DeleteNetworkPolicy(ctx context.Context, userID string) error {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM network_policies WHERE user_id = ?`), userID)
	return affected("delete network policy "+userID, res, err)
}
