// Package events appends to the durable event log and wakes up whoever is
// following it (SSE clients). The store is the source of truth; the wake-up
// is only a hint, so a follower that misses one still catches up on its
// next read.
package events

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
)

// Bus publishes events. It is safe for concurrent use.
type Bus struct {
	store store.Store
	log   *slog.Logger

	mu sync.Mutex // guards subs
	// subs are woken (non-blocking send) after every append.
	subs map[chan struct{}]struct{}
}

// NewBus returns a bus writing to st.
func NewBus(st store.Store, log *slog.Logger) *Bus {
	return &Bus{store: st, log: log, subs: map[chan struct{}]struct{}{}}
}

// Publish appends an event for userID (empty: a system event only admins
// see) about subject, with data marshalled to JSON. data must never hold
// secrets.
func (b *Bus) Publish(ctx context.Context, userID, typ, subject string, data any) (store.Event, error) {
	raw := []byte("{}")
	if data != nil {
		var err error
		if raw, err = json.Marshal(data); err != nil {
			return store.Event{}, fmt.Errorf("marshal event %s: %w", typ, err)
		}
	}
	ev, err := b.store.AppendEvent(ctx, store.Event{UserID: userID, Type: typ, Subject: subject, Data: raw})
	if err != nil {
		return store.Event{}, fmt.Errorf("append event %s: %w", typ, err)
	}
	b.log.Debug("event", "event_id", ev.ID, "type", typ, "user_id", userID, "subject", subject)
	b.wakeAll()
	return ev, nil
}

// wakeAll wakes every subscriber (a non-blocking send: a subscriber that
// has not consumed its last wake-up reads everything new anyway).
func (b *Bus) wakeAll() {
	b.mu.Lock()
	for ch := range b.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	b.mu.Unlock()
}

// Poll wakes every subscriber when the store holds an event newer than
// the last it saw, checking every interval until ctx ends. It is how events
// appended by another daemon on the same Postgres reach this one's streams:
// one cheap query per interval for the whole daemon, instead of a read per
// open stream per interval.
func (b *Bus) Poll(ctx context.Context, interval time.Duration) {
	last, err := b.store.LastEventID(ctx)
	if err != nil && ctx.Err() == nil {
		b.log.Warn("events poll", "err", err)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		id, err := b.store.LastEventID(ctx)
		if err != nil {
			if ctx.Err() == nil {
				b.log.Warn("events poll", "err", err)
			}
			continue
		}
		if id != last {
			last = id
			b.wakeAll()
		}
	}
}

// Subscribe returns a channel that receives a wake-up after each append,
// and a function that ends the subscription.
func (b *Bus) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	return ch, func() {
		b.mu.Lock()
		delete(b.subs, ch)
		b.mu.Unlock()
	}
}
