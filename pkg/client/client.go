// Package client is the Go client of hangar's API. The CLI and the tests use
// only this package to talk to a daemon.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hangar-vm/hangar/pkg/api"
)

// Client calls one hangar daemon with one API key.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// New returns a client for the daemon at base (e.g. http://127.0.0.1:4000)
// using token as the bearer key.
func New(base, token string) *Client {
	return &Client{base: strings.TrimRight(base, "/"), token: token, http: &http.Client{}}
}

// Error is an API error response.
type Error struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration // set on 429
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (HTTP %d %s)", e.Message, e.Status, e.Code)
}

// IsStatus reports whether err is an API error with the given HTTP status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

// Do sends a request with an optional JSON body and decodes a JSON answer
// into out (when out is non-nil).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s response: %w", method, path, err)
	}
	return nil
}

// send adds the key, performs the request and turns non-2xx answers into
// *Error.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w (is the daemon running? start it with: hangar serve)", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	var er api.ErrorResponse
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Status: resp.StatusCode}
	if json.Unmarshal(b, &er) == nil && er.Error.Code != "" {
		e.Code, e.Message = er.Error.Code, er.Error.Message
	} else {
		e.Code, e.Message = "http", strings.TrimSpace(string(b))
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return nil, e
}

// Health calls GET /health.
func (c *Client) Health(ctx context.Context) (api.Health, error) {
	var h api.Health
	return h, c.Do(ctx, http.MethodGet, "/health", nil, &h)
}

// Me returns the caller.
func (c *Client) Me(ctx context.Context) (api.User, error) {
	var u api.User
	return u, c.Do(ctx, http.MethodGet, "/api/v1/me", nil, &u)
}

// CreateUser creates a user (admin only); the key in the answer is shown
// only this once.
func (c *Client) CreateUser(ctx context.Context, req api.CreateUserRequest) (api.CreateUserResponse, error) {
	var out api.CreateUserResponse
	return out, c.Do(ctx, http.MethodPost, "/api/v1/users", req, &out)
}

// ListUsers lists every user (admin only).
func (c *Client) ListUsers(ctx context.Context) ([]api.User, error) {
	var out []api.User
	return out, c.Do(ctx, http.MethodGet, "/api/v1/users", nil, &out)
}

// DeleteUser removes a user and everything they own (admin only).
func (c *Client) DeleteUser(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/users/"+id, nil, nil)
}

// Events follows the event stream from after lastID, calling fn for each
// event until ctx ends, fn returns an error, or the stream breaks (the
// error says which). Resume with the last ID fn saw.
func (c *Client) Events(ctx context.Context, lastID int64, fn func(api.Event) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/api/v1/events", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if lastID > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(lastID, 10))
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var fnErr error
	err = readEventData(resp.Body, func(data []byte) error {
		var ev api.Event
		if err := json.Unmarshal(data, &ev); err != nil {
			fnErr = fmt.Errorf("decode event: %w", err)
			return fnErr
		}
		fnErr = fn(ev)
		return fnErr
	})
	if fnErr != nil {
		return fnErr
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("event stream: %w", err)
	}
	return io.ErrUnexpectedEOF
}
