package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/hangar-vm/hangar/pkg/api"
)

// CreatePrompt starts a prompt; it runs in the background.
func (c *Client) CreatePrompt(ctx context.Context, req api.CreatePromptRequest) (api.Prompt, error) {
	var p api.Prompt
	return p, c.Do(ctx, http.MethodPost, "/api/v1/prompts", req, &p)
}

// GetPrompt returns one prompt.
func (c *Client) GetPrompt(ctx context.Context, id string) (api.Prompt, error) {
	var p api.Prompt
	return p, c.Do(ctx, http.MethodGet, "/api/v1/prompts/"+url.PathEscape(id), nil, &p)
}

// ListPrompts returns a page of prompts, newest first; before is the Next
// cursor of the previous page ("" for the first).
func (c *Client) ListPrompts(ctx context.Context, before string, limit int) (api.PromptList, error) {
	q := url.Values{}
	if before != "" {
		q.Set("before", before)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	path := "/api/v1/prompts"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var l api.PromptList
	return l, c.Do(ctx, http.MethodGet, path, nil, &l)
}

// CancelPrompt stops a prompt (its CLI's process group in the VM).
func (c *Client) CancelPrompt(ctx context.Context, id string) (api.Prompt, error) {
	var p api.Prompt
	return p, c.Do(ctx, http.MethodPost, "/api/v1/prompts/"+url.PathEscape(id)+"/cancel", nil, &p)
}

// PromptEvents reads a prompt's event stream once, from after afterSeq,
// calling fn for each event. It returns nil after the final (completed or
// failed) event, fn's error, or the error that broke the stream.
func (c *Client) PromptEvents(ctx context.Context, id string, afterSeq int64, fn func(api.PromptEvent) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/api/v1/prompts/"+url.PathEscape(id)+"/events", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if afterSeq > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(afterSeq, 10))
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	final := false
	err = readSSE(resp.Body, func(m sseMessage) error {
		seq, err := strconv.ParseInt(m.id, 10, 64)
		if err != nil {
			return fmt.Errorf("prompt event without a numeric id (%q)", m.id)
		}
		ev := api.PromptEvent{Seq: seq, Type: m.event, Data: []byte(m.data)}
		if err := fn(ev); err != nil {
			return err
		}
		if ev.Type == api.PromptEventCompleted || ev.Type == api.PromptEventFailed {
			final = true
			return errStop
		}
		return nil
	})
	switch {
	case final && (err == nil || errors.Is(err, errStop)):
		return nil
	case err != nil:
		return err
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return io.ErrUnexpectedEOF
}

// FollowPrompt streams a prompt's events to fn until the final one,
// reconnecting after a broken stream from the last event it delivered, so
// fn sees every event exactly once.
func (c *Client) FollowPrompt(ctx context.Context, id string, fn func(api.PromptEvent) error) error {
	var last int64
	for attempt := 0; ; attempt++ {
		err := c.PromptEvents(ctx, id, last, func(e api.PromptEvent) error {
			if e.Seq <= last {
				return nil // never twice, whatever the server resends
			}
			last = e.Seq
			return fn(e)
		})
		if err == nil || ctx.Err() != nil {
			return err
		}
		var ae *Error
		if errors.As(err, &ae) && ae.Status < 500 || attempt >= 20 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(min(attempt+1, 5)) * 200 * time.Millisecond):
		}
	}
}

var errStop = errors.New("stop")

// PromptLog copies a prompt's raw CLI output (tokens redacted) to w.
func (c *Client) PromptLog(ctx context.Context, id string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/api/v1/prompts/"+url.PathEscape(id)+"/log", nil)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}
