package events

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
)

// TestPollWakesOnForeignAppends: an event another daemon appended straight
// to the shared store wakes this daemon's subscribers within a poll
// interval; with nothing new, nobody is woken.
func TestPollWakesOnForeignAppends(t *testing.T) {
	log := testutil.Logger(t)
	st, err := store.Open(t.Context(), filepath.Join(t.TempDir(), "hangar.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b := NewBus(st, log)
	wake, unsubscribe := b.Subscribe()
	defer unsubscribe()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); b.Poll(ctx, 50*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	select {
	case <-wake:
		t.Fatal("woken with no new event")
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := st.AppendEvent(t.Context(), store.Event{Type: "foreign"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-wake:
	case <-time.After(5 * time.Second):
		t.Fatal("a foreign append never woke the subscriber")
	}
}
