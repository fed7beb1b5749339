package store

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestEventTail(t *testing.T) {
	forEachBackend(t, []storeCase{{"tail_never_skips", testEventTailNeverSkips}})
}

// testEventTailNeverSkips is what an SSE client does: it follows the log
// with AfterID = last seen id while several writers append. It must end up
// with every event, which fails if an id can become visible before a lower
// one (Postgres identities are allocated before commit).
func testEventTailNeverSkips(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	const writers, perWriter = 6, 40
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex // guards errList
		errList []error
		done    atomic.Bool
	)
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				if _, err := s.AppendEvent(ctx, Event{Type: "tick", Subject: fmt.Sprintf("w%d-%d", w, i)}); err != nil {
					mu.Lock()
					errList = append(errList, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	go func() { wg.Wait(); done.Store(true) }()

	seen := map[int64]bool{}
	var last int64
	polls := 0
	for {
		finished := done.Load() // read before the poll: a final poll after it sees everything
		evs, err := s.ListEvents(ctx, EventFilter{AfterID: last, Limit: 50})
		must(t, err, "tail")
		polls++
		for _, e := range evs {
			if e.ID <= last {
				t.Fatalf("tail got id %d after %d", e.ID, last)
			}
			seen[e.ID] = true
			last = e.ID
		}
		if finished && len(evs) == 0 {
			break
		}
		if len(evs) == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	if err := errors.Join(errList...); err != nil {
		t.Fatal(err)
	}
	all, err := s.ListEvents(ctx, EventFilter{Limit: maxEventLimit})
	must(t, err, "list all")
	if len(all) != writers*perWriter {
		t.Fatalf("%d events stored, want %d", len(all), writers*perWriter)
	}
	var missed []int64
	for _, e := range all {
		if !seen[e.ID] {
			missed = append(missed, e.ID)
		}
	}
	if len(missed) > 0 {
		t.Fatalf("the tail skipped %d events that committed late: %v", len(missed), missed)
	}
	t.Logf("tail saw all %d events in %d polls", len(all), polls)
}
