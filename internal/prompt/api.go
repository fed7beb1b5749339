package prompt

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"time"

	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/login"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

func (s *Service) toAPI(p store.Prompt) api.Prompt {
	out := api.Prompt{ID: p.ID, OwnerID: p.OwnerID, VMID: p.VMID, Provider: p.Provider, State: p.State, Prompt: p.Prompt,
		Cwd: p.Cwd, Model: p.Model, TimeoutS: p.TimeoutS, ExitCode: p.ExitCode, Error: p.Error, Reason: p.Reason, CreatedAt: p.CreatedAt}
	if len(p.Usage) > 2 {
		var u api.PromptUsage
		if json.Unmarshal(p.Usage, &u) == nil {
			out.Usage = &u
		}
	}
	if !p.StartedAt.IsZero() {
		t := p.StartedAt
		out.StartedAt = &t
	}
	if !p.FinishedAt.IsZero() {
		t := p.FinishedAt
		out.FinishedAt = &t
	}
	return out
}

func (s *Service) get(ctx context.Context, caller store.User, id string) (store.Prompt, error) {
	p, err := s.store.GetPrompt(ctx, id, caller.Scope())
	if errors.Is(err, store.ErrNotFound) {
		return p, errs.E(errs.NotFound, "prompt %s not found", id)
	}
	return p, err
}

// Get returns one prompt.
func (s *Service) Get(ctx context.Context, caller store.User, id string) (api.Prompt, error) {
	p, err := s.get(ctx, caller, id)
	if err != nil {
		return api.Prompt{}, err
	}
	return s.toAPI(p), nil
}

// List returns a page of the caller's prompts (admin: everyone's), newest
// first, before the prompt id before (empty: from the newest).
func (s *Service) List(ctx context.Context, caller store.User, before string, limit int) (api.PromptList, error) {
	if limit <= 0 || limit > 200 {
		limit = 50
	}
	if before != "" {
		if _, err := s.get(ctx, caller, before); err != nil {
			return api.PromptList{}, errs.E(errs.Invalid, "before=%s is not one of your prompts", before)
		}
	}
	ps, err := s.store.ListPrompts(ctx, store.PromptFilter{OwnerID: caller.Scope(), Before: before, Limit: limit + 1})
	if err != nil {
		return api.PromptList{}, err
	}
	out := api.PromptList{Prompts: []api.Prompt{}}
	for i, p := range ps {
		if i == limit {
			out.Next = ps[limit-1].ID
			break
		}
		out.Prompts = append(out.Prompts, s.toAPI(p))
	}
	return out, nil
}

// Cancel ends a prompt: a running CLI's whole process group is stopped in
// the VM.
func (s *Service) Cancel(ctx context.Context, caller store.User, id string) (api.Prompt, error) {
	p, err := s.get(ctx, caller, id)
	if err != nil {
		return api.Prompt{}, err
	}
	if terminal(p.State) {
		return s.toAPI(p), nil
	}
	s.mu.Lock()
	rn := s.runs[id]
	s.mu.Unlock()
	if rn == nil {
		// Not running here (a record left behind): end it directly.
		prev := p.State
		p.State, p.Reason, p.Error, p.FinishedAt = api.PromptCancelled, api.ReasonCancelled, "the prompt was cancelled", time.Now().UTC()
		if err := s.store.UpdatePrompt(ctx, p, prev); err != nil && !errors.Is(err, store.ErrConflict) {
			return api.Prompt{}, err
		}
		return s.Get(ctx, caller, id)
	}
	rn.cancel(errCancelled)
	select {
	case <-rn.done:
	case <-time.After(cancelGrace + 10*time.Second):
	case <-ctx.Done():
	}
	s.log.Info("prompt cancelled", "prompt_id", id, "user_id", caller.ID)
	return s.Get(ctx, caller, id)
}

// Events sends the prompt's events after afterSeq, in order, waiting for
// new ones until the final event was sent or ctx ends. While nothing
// happens it sends an empty event (Seq 0) every 15 seconds, a keep-alive.
func (s *Service) Events(ctx context.Context, caller store.User, id string, afterSeq int64, send func(api.PromptEvent) error) error {
	if _, err := s.get(ctx, caller, id); err != nil {
		return err
	}
	lastSent := time.Now()
	for {
		if time.Since(lastSent) >= 15*time.Second {
			if err := send(api.PromptEvent{}); err != nil {
				return err
			}
			lastSent = time.Now()
		}
		s.mu.Lock()
		wake := s.waiters[id]
		if wake == nil {
			wake = make(chan struct{})
			s.waiters[id] = wake
		}
		s.mu.Unlock()
		evs, err := s.store.ListPromptEvents(ctx, id, afterSeq, 500)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if err := send(api.PromptEvent{Seq: e.Seq, Type: e.Type, Data: json.RawMessage(e.Data)}); err != nil {
				return err
			}
			lastSent = time.Now()
			afterSeq = e.Seq
			if e.Type == api.PromptEventCompleted || e.Type == api.PromptEventFailed {
				return nil
			}
		}
		if len(evs) == 500 {
			continue
		}
		// A prompt that ended without a final event (its daemon died
		// before Recover ran) ends the stream too.
		if p, err := s.store.GetPrompt(ctx, id, ""); err == nil && terminal(p.State) && len(evs) == 0 {
			if more, _ := s.store.ListPromptEvents(ctx, id, afterSeq, 1); len(more) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-time.After(2 * time.Second): // another daemon may write
		}
	}
}

// RawLog opens a prompt's raw CLI output.
func (s *Service) RawLog(ctx context.Context, caller store.User, id string) (io.ReadCloser, error) {
	if _, err := s.get(ctx, caller, id); err != nil {
		return nil, err
	}
	f, err := os.Open(s.RawLogPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return io.NopCloser(strings.NewReader("")), nil
	}
	return f, err
}

// Recover ends the prompts a previous daemon left queued or running: their
// CLI died with the agent stream that daemon held.
func (s *Service) Recover(ctx context.Context) error {
	for _, state := range []string{api.PromptQueued, api.PromptRunning} {
		ps, err := s.store.ListPrompts(ctx, store.PromptFilter{State: state})
		if err != nil {
			return err
		}
		for _, p := range ps {
			prev := p.State
			p.State, p.Reason, p.FinishedAt = api.PromptFailed, api.ReasonRestart, time.Now().UTC()
			p.Error = "the daemon restarted while this prompt was " + prev + "; its output so far is kept; run it again"
			if err := s.store.UpdatePrompt(ctx, p, prev); err != nil {
				if errors.Is(err, store.ErrConflict) {
					continue
				}
				return err
			}
			s.appendEvent(s.log, p.ID, "failed", api.PromptEnd{Reason: p.Reason, Message: p.Error})
			s.publish(p.OwnerID, "prompt_failed", p.ID, map[string]any{"provider": p.Provider, "vm_id": p.VMID, "state": p.State, "reason": p.Reason, "message": p.Error})
			s.log.Warn("prompt ended by a daemon restart", "prompt_id", p.ID, "was", prev)
		}
	}
	return nil
}

// Close stops every running prompt (the daemon is shutting down) and
// waits for them to record their end.
func (s *Service) Close() {
	s.mu.Lock()
	s.closing = true
	for _, rn := range s.runs {
		rn.cancel(errShutdown)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// sanitize removes terminal escapes and control characters from CLI text
// quoted in messages.
func sanitize(s string) string {
	s = login.StripANSI(s)
	return strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return -1
		}
		return r
	}, s)
}
