package httpapi

import (
	"net/http"
	"strconv"
	"sync"
	"time"
)

// limiter counts requests per key in fixed windows: at most limit requests
// in each window, with Retry-After set to the end of the current window. A
// fixed window is exact and easy to explain ("1000 per 15 minutes"), which
// matters more here than smoothing bursts.
//
// Its memory is bounded: at most maxBuckets keys are tracked. Expired
// buckets are dropped when the table is full; if it is still full, keys
// not yet tracked share one overflow bucket, so a flood of distinct client
// addresses costs a fixed amount of memory and is limited as one client
// (tracked keys keep their own counts).
type limiter struct {
	limit      int
	window     time.Duration
	now        func() time.Time
	maxBuckets int

	mu      sync.Mutex // guards buckets, overflow and lastGC
	buckets map[string]*bucket
	// overflow is the shared bucket of untracked keys while the table is
	// full.
	overflow bucket
	lastGC   time.Time
}

type bucket struct {
	start time.Time
	count int
}

// defaultMaxBuckets bounds the limiter's table (about 100 bytes a key).
const defaultMaxBuckets = 100_000

func newLimiter(limit int, window time.Duration) *limiter {
	return &limiter{limit: limit, window: window, now: time.Now, maxBuckets: defaultMaxBuckets, buckets: map[string]*bucket{}}
}

// decision is the outcome of one request against its key's window.
type decision struct {
	ok        bool
	remaining int           // requests left in the window after this one
	reset     time.Duration // until the window ends
}

// gc drops expired buckets; l.mu is held.
func (l *limiter) gc(now time.Time) {
	for k, b := range l.buckets {
		if now.Sub(b.start) >= l.window {
			delete(l.buckets, k)
		}
	}
	l.lastGC = now
}

// bucketFor returns key's bucket, creating it (or falling back to the
// overflow bucket) as needed; l.mu is held.
func (l *limiter) bucketFor(key string, now time.Time) *bucket {
	if b := l.buckets[key]; b != nil {
		return b
	}
	if len(l.buckets) >= l.maxBuckets {
		l.gc(now)
	}
	if len(l.buckets) >= l.maxBuckets {
		return &l.overflow
	}
	b := &bucket{start: now}
	l.buckets[key] = b
	return b
}

// allow records one request for key.
func (l *limiter) allow(key string) decision {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastGC) > l.window {
		l.gc(now)
	}
	b := l.bucketFor(key, now)
	if now.Sub(b.start) >= l.window {
		*b = bucket{start: now}
	}
	reset := b.start.Add(l.window).Sub(now)
	if b.count >= l.limit {
		return decision{ok: false, remaining: 0, reset: reset}
	}
	b.count++
	return decision{ok: true, remaining: l.limit - b.count, reset: reset}
}

// exhausted says, without counting a request, whether key has no requests
// left in its window (checked before work a limited caller must not cause,
// such as a key lookup in the store).
func (l *limiter) exhausted(key string) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil && len(l.buckets) >= l.maxBuckets {
		b = &l.overflow
	}
	if b == nil || now.Sub(b.start) >= l.window || b.count < l.limit {
		return false, 0
	}
	return true, b.start.Add(l.window).Sub(now)
}

// seconds rounds a wait up to whole seconds, at least 1.
func seconds(d time.Duration) int { return max(int(d.Seconds()+0.999), 1) }

// setHeaders writes the RateLimit-* fields (IETF httpapi draft) so clients
// can pace themselves before they hit a 429.
func (l *limiter) setHeaders(w http.ResponseWriter, d decision) {
	h := w.Header()
	h.Set("RateLimit-Limit", strconv.Itoa(l.limit))
	h.Set("RateLimit-Remaining", strconv.Itoa(d.remaining))
	h.Set("RateLimit-Reset", strconv.Itoa(seconds(d.reset)))
	h.Set("RateLimit-Policy", strconv.Itoa(l.limit)+";w="+strconv.Itoa(int(l.window.Seconds())))
}
