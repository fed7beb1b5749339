package httpapi_test

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/httpapi"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
)

// queryCounter counts the store reads an idle event stream could cause.
type queryCounter struct {
	store.Store
	listEvents, lastID atomic.Int64
}

func (s *queryCounter) ListEvents(ctx context.Context, f store.EventFilter) ([]store.Event, error) {
	s.listEvents.Add(1)
	return s.Store.ListEvents(ctx, f)
}

func (s *queryCounter) LastEventID(ctx context.Context) (int64, error) {
	s.lastID.Add(1)
	return s.Store.LastEventID(ctx)
}

// TestThousandIdleEventStreams opens 1,000 event streams on loopback and
// lets them idle for three poll intervals: the store sees no per-stream
// reads meanwhile (the old code read once per stream every 2 s: 1,500
// reads here), one event wakes each stream once, and the memory they hold
// is reported. Bounded: 1,000 streams, about 10 s.
func TestThousandIdleEventStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	log := testutil.Logger(t)
	inner, err := store.Open(t.Context(), filepath.Join(t.TempDir(), "hangar.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inner.Close() })
	st := &queryCounter{Store: inner}
	bus := events.NewBus(st, log)
	srv := httpapi.New(httpapi.Options{Store: st, Events: bus, Log: log, Version: "test",
		RateLimit: 100_000, RateWindow: time.Minute, MaxBodyBytes: 4096, MaxStreamsPerUser: 2000})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { srv.Close(); hs.Close() })
	u := store.User{ID: store.NewID("usr"), Name: "root", Role: store.RoleAdmin}
	if err := st.CreateUser(t.Context(), u); err != nil {
		t.Fatal(err)
	}
	key := httpapi.NewKey()
	if err := st.CreateAPIKey(t.Context(), store.APIKey{ID: store.NewID("key"), UserID: u.ID, Hash: httpapi.HashKey(key), Prefix: key[:8]}); err != nil {
		t.Fatal(err)
	}
	const streams = 1000
	tr := &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: streams}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	var (
		wg       sync.WaitGroup
		ready    sync.WaitGroup
		received atomic.Int64
	)
	ready.Add(streams)
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, hs.URL+"/api/v1/events", nil)
			req.Header.Set("Authorization", "Bearer "+key)
			resp, err := client.Do(req)
			if err != nil {
				ready.Done()
				t.Errorf("open stream: %v", err)
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				ready.Done()
				t.Errorf("open stream: %d", resp.StatusCode)
				return
			}
			sc := bufio.NewScanner(resp.Body)
			first := true
			for sc.Scan() {
				if first && sc.Text() == "" { // end of the greeting comment
					first = false
					ready.Done()
				}
				if len(sc.Text()) > 5 && sc.Text()[:5] == "data:" {
					received.Add(1)
				}
			}
		}()
	}
	ready.Wait()
	if t.Failed() {
		return
	}
	runtime.GC()
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	idleStart := st.listEvents.Load()
	time.Sleep(3*2*time.Second + 500*time.Millisecond)
	idleReads := st.listEvents.Load() - idleStart
	t.Logf("%d streams: heap %+.1f MiB (%.1f KiB per stream, client and server side), goroutines %d; store reads while idle for 6.5 s: %d ListEvents, %d LastEventID in total",
		streams, float64(int64(during.HeapAlloc)-int64(before.HeapAlloc))/(1<<20),
		float64(int64(during.HeapAlloc)-int64(before.HeapAlloc))/1024/streams, runtime.NumGoroutine(), idleReads, st.lastID.Load())
	if idleReads != 0 {
		t.Errorf("idle streams read the store %d times in 6.5 s, want 0", idleReads)
	}
	if _, err := bus.Publish(t.Context(), "", "ping", "", nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for received.Load() < streams && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if received.Load() != streams {
		t.Errorf("%d of %d streams got the event", received.Load(), streams)
	}
	cancel()
	wg.Wait()
}
