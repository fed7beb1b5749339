package agentlink_test

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/agent"
	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// TestRekey: after a re-key the agent has reseeded, set its clock and
// hostname, accepts only the new token and refuses the old one (on the
// session it was opened with too); a bad request changes nothing.
func TestRekey(t *testing.T) {
	var mu sync.Mutex
	var seeds [][]byte
	var host string
	var clock time.Time
	ta := startAgent(t, agent.Config{
		Reseed: func(s []byte) error {
			mu.Lock()
			defer mu.Unlock()
			seeds = append(seeds, append([]byte(nil), s...))
			return nil
		},
		SetHostname: func(n string) error { mu.Lock(); host = n; mu.Unlock(); return nil },
		SetClock:    func(tm time.Time) error { mu.Lock(); clock = tm; mu.Unlock(); return nil },
	})
	ctx := ctxT(t, 20*time.Second)

	// Out of bounds: refused, and the old token still works.
	var pe *proto.Error
	if err := ta.client.Rekey(ctx, "short", "clone-1"); !errors.As(err, &pe) || pe.Status != 400 {
		t.Fatalf("rekey with a short token: %v, want 400", err)
	}
	if _, err := ta.client.Health(ctx); err != nil {
		t.Fatalf("old token refused after a failed rekey: %v", err)
	}

	newTok, err := proto.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := ta.client.Rekey(ctx, newTok, "clone-1"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(seeds) != 1 || len(seeds[0]) < proto.MinRekeySeed || bytes.Count(seeds[0], []byte{0}) == len(seeds[0]) {
		t.Errorf("reseed got %d seeds (%v), want one of at least %d random bytes", len(seeds), seeds, proto.MinRekeySeed)
	}
	if host != "clone-1" {
		t.Errorf("hostname %q, want clone-1", host)
	}
	if clock.Before(before) || clock.After(time.Now()) {
		t.Errorf("clock set to %v, want the host's time of the request", clock)
	}
	mu.Unlock()

	// The session opened with the template's token is refused now.
	if _, err := ta.client.Health(ctx); !errors.As(err, &pe) || pe.Code != proto.CodeUnauthorized {
		t.Fatalf("old token after rekey: %v, want unauthorized", err)
	}
	ta.client.Close()
	old, err := agentlink.DialQEMU(ctx, ta.sock, agentlink.Options{Token: testToken})
	if err == nil {
		_, err = old.Health(ctx)
		old.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("a new session with the old token: %v, want it refused", err)
	}
	c, err := agentlink.DialQEMU(ctx, ta.sock, agentlink.Options{Token: newTok})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Health(ctx); err != nil {
		t.Fatalf("new token refused: %v", err)
	}
}
