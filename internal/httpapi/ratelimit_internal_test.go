package httpapi

import (
	"strconv"
	"testing"
	"time"
)

// TestLimiterMemoryIsBounded: 10,000 distinct client addresses within one
// window leave at most maxBuckets entries; the untracked ones share the
// overflow bucket and are limited together, while tracked keys keep their
// own counts.
func TestLimiterMemoryIsBounded(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := newLimiter(5, time.Minute)
	l.now = func() time.Time { return now }
	l.maxBuckets = 100
	allowed := 0
	for i := range 10_000 {
		if l.allow("addr:10.0." + strconv.Itoa(i/256) + "." + strconv.Itoa(i%256)).ok {
			allowed++
		}
	}
	if len(l.buckets) > 100 {
		t.Fatalf("%d buckets, want at most 100", len(l.buckets))
	}
	if allowed != 100+5 { // 100 tracked keys once each, 5 through the shared bucket
		t.Fatalf("%d of 10000 requests allowed, want 105", allowed)
	}
	// A tracked key is still counted on its own.
	if d := l.allow("addr:10.0.0.0"); !d.ok || d.remaining != 3 {
		t.Fatalf("tracked key: %+v, want allowed with 3 left", d)
	}
	// After the window the table makes room again.
	now = now.Add(2 * time.Minute)
	if d := l.allow("addr:192.0.2.1"); !d.ok || len(l.buckets) > 100 {
		t.Fatalf("after the window: %+v, %d buckets", d, len(l.buckets))
	}
	if _, ok := l.buckets["addr:192.0.2.1"]; !ok {
		t.Fatal("a new key after the window is not tracked on its own")
	}
}

func TestLimiterDecision(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := newLimiter(2, time.Minute)
	l.now = func() time.Time { return now }
	d := l.allow("k")
	if !d.ok || d.remaining != 1 || d.reset != time.Minute {
		t.Fatalf("first: %+v", d)
	}
	now = now.Add(10 * time.Second)
	l.allow("k")
	if over, _ := l.exhausted("k"); !over {
		t.Fatal("two of two used, not exhausted")
	}
	d = l.allow("k")
	if d.ok || d.remaining != 0 || d.reset != 50*time.Second {
		t.Fatalf("third: %+v", d)
	}
	if over, _ := l.exhausted("other"); over {
		t.Fatal("an unknown key is exhausted")
	}
}
