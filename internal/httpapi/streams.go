package httpapi

import (
	"sync"

	"github.com/hangar-vm/hangar/internal/errs"
)

// defaultMaxStreamsPerUser bounds one user's open event streams when
// Options.MaxStreamsPerUser is zero. A dashboard holds one per tab; each
// stream holds a goroutine, a bus subscription and a store poll every
// ssePoll, so without a cap one key could open thousands.
const defaultMaxStreamsPerUser = 16

// streamCounter counts open event streams per user.
type streamCounter struct {
	max int

	mu   sync.Mutex     // guards open
	open map[string]int // user id → open streams; absent when zero
}

func newStreamCounter(max int) *streamCounter {
	if max <= 0 {
		max = defaultMaxStreamsPerUser
	}
	return &streamCounter{max: max, open: map[string]int{}}
}

// acquire takes one of user's stream slots, or says why not; release
// gives it back.
func (c *streamCounter) acquire(user string) (release func(), err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.open[user]
	if n >= c.max {
		return nil, errs.E(errs.Quota, "open event streams per user is %d: you have %d open, 0 left; close one (a dashboard tab) first", c.max, n)
	}
	c.open[user] = n + 1
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.open[user]--; c.open[user] <= 0 {
				delete(c.open, user)
			}
		})
	}, nil
}
