package store

import "context"

// TransferVM implements Store. The owner in the WHERE clause makes it a
// compare-and-swap: of two logins taking the same pool VM, one wins.
func (s *sqlStore) TransferVM(ctx context.Context, id, fromOwner, toOwner string, spec []byte) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE vms SET owner_id = ?, spec = ?, updated_at = ? WHERE id = ? AND owner_id = ?`),
		toOwner, jsonArg(spec), s.ts(s.clock()), id, fromOwner)
	return affected("transfer vm "+id, res, err)
}
