package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/hangar-vm/hangar/pkg/api"
)

// UserNetwork returns a user's own network policy (admin). A user without
// one (the per-kind defaults apply) is an HTTP 404.
func (c *Client) UserNetwork(ctx context.Context, userID string) (api.NetworkPolicy, error) {
	var p api.NetworkPolicy
	return p, c.Do(ctx, http.MethodGet, "/api/v1/users/"+url.PathEscape(userID)+"/network", nil, &p)
}

// SetUserNetwork sets a user's own network policy (admin); it applies to
// VMs the user boots afterwards.
func (c *Client) SetUserNetwork(ctx context.Context, userID string, req api.PutNetworkPolicyRequest) (api.NetworkPolicy, error) {
	var p api.NetworkPolicy
	return p, c.Do(ctx, http.MethodPut, "/api/v1/users/"+url.PathEscape(userID)+"/network", req, &p)
}

// DeleteUserNetwork removes a user's own network policy (admin): the
// per-kind defaults apply again.
func (c *Client) DeleteUserNetwork(ctx context.Context, userID string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/users/"+url.PathEscape(userID)+"/network", nil, nil)
}
