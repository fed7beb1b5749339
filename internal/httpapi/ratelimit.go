package httpapi

import (
	"sync"
	"time"
)

// limiter counts requests per key in fixed windows: at most limit requests
// in each window, with Retry-After set to the end of the current window. A
// fixed window is exact and easy to explain ("1000 per 15 minutes"), which
// matters more here than smoothing bursts.
type limiter struct {
	limit  int
	window time.Duration
	now    func() time.Time

	mu      sync.Mutex // guards buckets and lastGC
	buckets map[string]*bucket
	lastGC  time.Time
}

type bucket struct {
	start time.Time
	count int
}

func newLimiter(limit int, window time.Duration) *limiter {
	return &limiter{limit: limit, window: window, now: time.Now, buckets: map[string]*bucket{}}
}

// allow records one request for key. When the key is over its limit it
// returns false and how long until the window resets.
func (l *limiter) allow(key string) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastGC) > l.window {
		for k, b := range l.buckets {
			if now.Sub(b.start) >= l.window {
				delete(l.buckets, k)
			}
		}
		l.lastGC = now
	}
	b := l.buckets[key]
	if b == nil || now.Sub(b.start) >= l.window {
		b = &bucket{start: now}
		l.buckets[key] = b
	}
	if b.count >= l.limit {
		return false, b.start.Add(l.window).Sub(now)
	}
	b.count++
	return true, 0
}
