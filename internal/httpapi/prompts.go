package httpapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// PromptService is what the API needs of the prompt service; scoped to the
// caller like VMService.
type PromptService interface {
	Create(ctx context.Context, caller store.User, req api.CreatePromptRequest) (api.Prompt, error)
	Get(ctx context.Context, caller store.User, id string) (api.Prompt, error)
	List(ctx context.Context, caller store.User, before string, limit int) (api.PromptList, error)
	Cancel(ctx context.Context, caller store.User, id string) (api.Prompt, error)
	// Events sends the events after afterSeq until the final one was sent
	// or ctx ends.
	Events(ctx context.Context, caller store.User, id string, afterSeq int64, send func(api.PromptEvent) error) error
	// RawLog opens the prompt's raw CLI output (redacted).
	RawLog(ctx context.Context, caller store.User, id string) (io.ReadCloser, error)
}

// MountPrompts adds the prompt routes.
func (s *Server) MountPrompts(p PromptService) {
	for _, rt := range []route{
		{"POST /api/v1/prompts", authed, func(w http.ResponseWriter, r *http.Request) error {
			var req api.CreatePromptRequest
			if err := decodeJSON(r, &req); err != nil {
				return err
			}
			out, err := p.Create(r.Context(), userFrom(r.Context()), req)
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusCreated, out)
			return nil
		}},
		{"GET /api/v1/prompts", authed, func(w http.ResponseWriter, r *http.Request) error {
			limit := 0
			if v := r.URL.Query().Get("limit"); v != "" {
				n, err := strconv.Atoi(v)
				if err != nil || n < 1 || n > 200 {
					return badRequest("limit=%q: want 1 to 200", v)
				}
				limit = n
			}
			out, err := p.List(r.Context(), userFrom(r.Context()), r.URL.Query().Get("before"), limit)
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, out)
			return nil
		}},
		{"GET /api/v1/prompts/{id}", authed, func(w http.ResponseWriter, r *http.Request) error {
			out, err := p.Get(r.Context(), userFrom(r.Context()), r.PathValue("id"))
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, out)
			return nil
		}},
		{"POST /api/v1/prompts/{id}/cancel", authed, func(w http.ResponseWriter, r *http.Request) error {
			out, err := p.Cancel(r.Context(), userFrom(r.Context()), r.PathValue("id"))
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, out)
			return nil
		}},
		{"GET /api/v1/prompts/{id}/log", authed, func(w http.ResponseWriter, r *http.Request) error {
			rc, err := p.RawLog(r.Context(), userFrom(r.Context()), r.PathValue("id"))
			if err != nil {
				return err
			}
			defer rc.Close()
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = io.Copy(w, rc)
			return nil
		}},
		{"GET /api/v1/prompts/{id}/events", authed, s.handlePromptEvents(p)},
	} {
		s.handle(rt)
	}
}

// handlePromptEvents streams a prompt's events as server-sent events (id:
// the event's seq; resume with Last-Event-ID or ?after=). The stream ends
// after the final completed or failed event.
func (s *Server) handlePromptEvents(p PromptService) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		after := int64(0)
		v := r.Header.Get("Last-Event-ID")
		if v == "" {
			v = r.URL.Query().Get("after")
		}
		if v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return badRequest("Last-Event-ID %q is not an event number", v)
			}
			after = n
		}
		caller := userFrom(r.Context())
		// Fail with a status (404) before the stream starts.
		if _, err := p.Get(r.Context(), caller, r.PathValue("id")); err != nil {
			return err
		}
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		go func() {
			select {
			case <-s.closing:
				cancel()
			case <-ctx.Done():
			}
		}()
		rc := startSSE(w, "hangar prompt events")
		err := p.Events(ctx, caller, r.PathValue("id"), after, func(e api.PromptEvent) error {
			var err error
			if e.Seq == 0 {
				// The service's idle tick: keeps proxies from closing the
				// stream of a prompt that is quiet for a while.
				_, err = fmt.Fprint(w, ": keep-alive\n\n")
			} else {
				_, err = fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Type, e.Data)
			}
			if err != nil {
				return err
			}
			return rc.Flush()
		})
		if err != nil && ctx.Err() == nil {
			logFrom(r.Context(), s.log).Warn("prompt events stream", "err", err)
		}
		return nil
	}
}
