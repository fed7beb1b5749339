package agent

import (
	"sync"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// eventBus fans events out to the hosts' event streams.
type eventBus struct {
	mu sync.Mutex // guards subs
	// subs are open event streams. A subscriber that falls 256 events
	// behind is closed rather than silently losing state changes: its host
	// reconnects and gets a fresh hello snapshot.
	subs map[chan proto.Event]struct{}
}

func newEventBus() *eventBus {
	return &eventBus{subs: map[chan proto.Event]struct{}{}}
}

// subscribe returns a channel of events with hello queued first. The
// supervisor calls it while holding its own lock (lock order: supervisor,
// then bus), so no state change falls between the snapshot and the stream.
func (b *eventBus) subscribe(hello proto.Event) chan proto.Event {
	ch := make(chan proto.Event, 256)
	b.mu.Lock()
	defer b.mu.Unlock()
	ch <- hello
	b.subs[ch] = struct{}{}
	return ch
}

func (b *eventBus) unsubscribe(ch chan proto.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.subs[ch]; ok {
		delete(b.subs, ch)
		close(ch)
	}
}

func (b *eventBus) publish(ev proto.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- ev:
		default:
			delete(b.subs, ch)
			close(ch)
		}
	}
}
