// Package api holds the JSON types of hangar's HTTP API. The server, the Go
// client, the CLI and the dashboard all use these, so a field renamed here is
// renamed everywhere at once.
package api

import (
	"encoding/json"
	"time"
)

// Error codes carried in ErrorBody.Code.
const (
	CodeBadRequest      = "bad_request"
	CodeUnauthenticated = "unauthenticated"
	CodeForbidden       = "forbidden"
	CodeNotFound        = "not_found"
	CodeConflict        = "conflict"
	CodeRateLimited     = "rate_limited"
	CodeTooLarge        = "too_large"
	CodeQuotaExceeded   = "quota_exceeded"
	CodeUnavailable     = "unavailable"
	CodeInternal        = "internal"
	CodeNoSpace         = "no_space" // the VM's disk (or its quota) is full
)

// ErrorResponse is the body of every non-2xx response:
// {"error":{"code":"…","message":"…"}}.
type ErrorResponse struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody describes what went wrong in words a user can act on.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Health is the body of GET /health.
type Health struct {
	Status  string `json:"status"`
	Version string `json:"version"`
	Store   string `json:"store"`
}

// User is an account as the API shows it.
type User struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

// CreateUserRequest is the body of POST /api/v1/users.
type CreateUserRequest struct {
	Name string `json:"name"`
	// Role is "user" (default) or "admin".
	Role string `json:"role,omitempty"`
}

// CreateUserResponse is returned once: APIKey is never shown again.
type CreateUserResponse struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Role   string `json:"role"`
	APIKey string `json:"api_key"`
}

// Event is one entry of GET /api/v1/events (server-sent events; the SSE id
// is ID, the SSE event name is Type, the data is this object).
type Event struct {
	ID        int64           `json:"id"`
	Type      string          `json:"type"`
	UserID    string          `json:"user_id,omitempty"`
	Subject   string          `json:"subject,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
}
