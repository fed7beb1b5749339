package agentlink

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// Rekey gives a VM restored from a template its own identity: a fresh
// token (the one this Client was opened with is refused afterwards), a
// kernel random pool reseeded from the host, the clock and the hostname.
// The Client keeps the old token: close it and dial again with newToken.
func (c *Client) Rekey(ctx context.Context, newToken, hostname string) error {
	seed := make([]byte, 64)
	if _, err := rand.Read(seed); err != nil {
		return fmt.Errorf("agent rekey: seed: %w", err)
	}
	req := proto.RekeyRequest{Token: newToken, Seed: seed, UnixNano: time.Now().UnixNano(), Hostname: hostname}
	if err := c.postJSON(ctx, proto.PathRekey, req); err != nil {
		return fmt.Errorf("agent rekey: %w", err)
	}
	return nil
}
