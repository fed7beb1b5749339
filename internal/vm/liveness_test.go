package vm

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink/agenttest"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// TestProberNoticesAHungAgentAndItsRecovery drives the liveness loop over
// a real agent link whose agent stops answering (as when the hypervisor is
// frozen), then answers again, then loses its link and is redialled.
func TestProberNoticesAHungAgentAndItsRecovery(t *testing.T) {
	var frozen atomic.Bool
	thaw := make(chan struct{})
	var thawOnce sync.Once
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != proto.PathHealth {
			http.NotFound(w, r)
			return
		}
		if frozen.Load() {
			select { // hang like a frozen guest; the prober's deadline ends it
			case <-r.Context().Done():
				return
			case <-thaw:
			}
		}
		w.Write([]byte(`{"ready":true}`))
	})
	var mu sync.Mutex // guards link, redials
	link := agenttest.Start(t, h).Client
	redials := 0
	type report struct {
		unresponsive bool
		since        time.Time
	}
	reports := make(chan report, 8)
	done := make(chan struct{})
	defer close(done)
	p := &prober{
		interval: 50 * time.Millisecond, timeout: 100 * time.Millisecond, failures: 2, done: done,
		probe: func(ctx context.Context) error {
			mu.Lock()
			c := link
			mu.Unlock()
			if isClosed(c.Done()) {
				return errLinkDown
			}
			_, err := c.Health(ctx)
			return err
		},
		redial: func(ctx context.Context) error {
			c := agenttest.Start(t, h).Client
			mu.Lock()
			link, redials = c, redials+1
			mu.Unlock()
			return nil
		},
		report: func(u bool, since time.Time) { reports <- report{u, since} },
	}
	go p.run()

	expect := func(unresponsive bool) report {
		t.Helper()
		select {
		case r := <-reports:
			if r.unresponsive != unresponsive {
				t.Fatalf("report unresponsive=%v, want %v", r.unresponsive, unresponsive)
			}
			return r
		case <-time.After(5 * time.Second):
			t.Fatalf("no report of unresponsive=%v", unresponsive)
		}
		return report{}
	}
	// Answering: no report.
	select {
	case r := <-reports:
		t.Fatalf("a healthy agent was reported: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
	began := time.Now()
	frozen.Store(true)
	r := expect(true)
	if r.since.Before(began) {
		t.Fatalf("unresponsive since %v, before the freeze at %v", r.since, began)
	}
	frozen.Store(false)
	thawOnce.Do(func() { close(thaw) })
	expect(false)

	// The link ends (yamux keepalive gave up on a paused guest): the next
	// probe redials, and no unresponsive report is needed for it.
	mu.Lock()
	old := link
	mu.Unlock()
	old.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := redials
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed link was not redialled")
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case r := <-reports:
		t.Fatalf("a redialled link was reported: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
}
