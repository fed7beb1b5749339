package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/hangar-vm/hangar/pkg/api"
)

// CreateAuthSession starts a login.
func (c *Client) CreateAuthSession(ctx context.Context, req api.CreateAuthSessionRequest) (api.AuthSession, error) {
	var s api.AuthSession
	return s, c.Do(ctx, http.MethodPost, "/api/v1/auth/sessions", req, &s)
}

// GetAuthSession returns one login session.
func (c *Client) GetAuthSession(ctx context.Context, id string) (api.AuthSession, error) {
	var s api.AuthSession
	return s, c.Do(ctx, http.MethodGet, "/api/v1/auth/sessions/"+url.PathEscape(id), nil, &s)
}

// ListAuthSessions lists the caller's login sessions.
func (c *Client) ListAuthSessions(ctx context.Context) ([]api.AuthSession, error) {
	var ss []api.AuthSession
	return ss, c.Do(ctx, http.MethodGet, "/api/v1/auth/sessions", nil, &ss)
}

// CancelAuthSession ends a login.
func (c *Client) CancelAuthSession(ctx context.Context, id string) (api.AuthSession, error) {
	var s api.AuthSession
	return s, c.Do(ctx, http.MethodPost, "/api/v1/auth/sessions/"+url.PathEscape(id)+"/cancel", nil, &s)
}

// HeartbeatAuthSession keeps a watched login alive.
func (c *Client) HeartbeatAuthSession(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodPost, "/api/v1/auth/sessions/"+url.PathEscape(id)+"/heartbeat", nil, nil)
}

// AuthInput types text (a pasted code) into the login CLI.
func (c *Client) AuthInput(ctx context.Context, id, text string) error {
	return c.Do(ctx, http.MethodPost, "/api/v1/auth/sessions/"+url.PathEscape(id)+"/input", api.AuthInputRequest{Text: text}, nil)
}

// Credentials lists stored credentials (metadata only).
func (c *Client) Credentials(ctx context.Context) ([]api.Credential, error) {
	var cs []api.Credential
	return cs, c.Do(ctx, http.MethodGet, "/api/v1/credentials", nil, &cs)
}

// DeleteCredential removes the credentials of provider.
func (c *Client) DeleteCredential(ctx context.Context, provider string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/credentials/"+url.PathEscape(provider), nil, nil)
}

// Base is the daemon's base URL.
func (c *Client) Base() string { return c.base }

// ShareAuthSession returns a view-only live-view link of one of the
// caller's own login sessions, to hand to someone helping.
func (c *Client) ShareAuthSession(ctx context.Context, id string) (api.LiveViewShare, error) {
	var s api.LiveViewShare
	return s, c.Do(ctx, http.MethodPost, "/api/v1/auth/sessions/"+url.PathEscape(id)+"/share", nil, &s)
}
