package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/hangar-vm/hangar/pkg/api"
)

// ListAPIKeys lists the caller's API keys (never the keys themselves).
func (c *Client) ListAPIKeys(ctx context.Context) ([]api.APIKey, error) {
	var ks []api.APIKey
	return ks, c.Do(ctx, http.MethodGet, "/api/v1/keys", nil, &ks)
}

// CreateAPIKey makes another key for the caller; the answer's Key is
// shown only now.
func (c *Client) CreateAPIKey(ctx context.Context, req api.CreateAPIKeyRequest) (api.CreateAPIKeyResponse, error) {
	var k api.CreateAPIKeyResponse
	return k, c.Do(ctx, http.MethodPost, "/api/v1/keys", req, &k)
}

// RevokeAPIKey deletes one of the caller's keys by id.
func (c *Client) RevokeAPIKey(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/keys/"+url.PathEscape(id), nil, nil)
}
