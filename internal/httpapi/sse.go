package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// sseKeepAlive keeps proxies from closing an idle stream.
const sseKeepAlive = 15 * time.Second

// ssePoll is how often the bus checks the store for events another daemon
// sharing the same Postgres appended (events.Bus.Poll, one query per daemon,
// not per stream); a stream reads the store only when woken.
const ssePoll = 2 * time.Second

// handleEvents streams the caller's events (admins: everyone's) as
// server-sent events. It resumes after Last-Event-ID (header, or ?after=
// for clients that cannot set headers).
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) error {
	u := userFrom(r.Context())
	after := int64(0)
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return badRequest("Last-Event-ID %q is not an event id", v)
		}
		after = n
	} else if v := r.URL.Query().Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return badRequest("after=%q is not an event id", v)
		}
		after = n
	}
	release, err := s.streams.acquire(u.ID)
	if err != nil {
		return err
	}
	defer release()
	filter := store.EventFilter{UserID: u.Scope(), AfterID: after, Limit: 500}
	// Subscribe before the first read so nothing appended in between is
	// missed.
	wake, unsubscribe := s.opts.Events.Subscribe()
	defer unsubscribe()

	rc := startSSE(w, "hangar events")

	keep := time.NewTicker(sseKeepAlive)
	defer keep.Stop()
	for {
		for {
			evs, err := s.opts.Store.ListEvents(r.Context(), filter)
			if err != nil {
				if r.Context().Err() != nil {
					return nil
				}
				logFrom(r.Context(), s.log).Error("events stream: read", "err", err)
				return nil // headers are sent; the client reconnects with Last-Event-ID
			}
			for _, e := range evs {
				data, _ := json.Marshal(api.Event{ID: e.ID, Type: e.Type, UserID: e.UserID, Subject: e.Subject, Data: json.RawMessage(e.Data), CreatedAt: e.CreatedAt})
				if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.ID, e.Type, data); err != nil {
					return nil
				}
				filter.AfterID = e.ID
			}
			_ = rc.Flush()
			if len(evs) < filter.Limit {
				break
			}
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-s.closing:
			return nil
		case <-wake:
		case <-keep.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return nil
			}
			_ = rc.Flush()
		}
	}
}

// startSSE begins a server-sent event stream: no write deadline (streams
// run for hours), no caching or proxy buffering, and a first comment
// flushed at once so the client sees the stream open.
func startSSE(w http.ResponseWriter, comment string) *http.ResponseController {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, ": %s\n\n", comment)
	_ = rc.Flush()
	return rc
}
