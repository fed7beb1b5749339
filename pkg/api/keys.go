package api

import "time"

// APIKey describes one of the caller's API keys (GET /api/v1/keys). The
// key itself is shown only once, in CreateAPIKeyResponse.
type APIKey struct {
	ID        string     `json:"id"`
	Name      string     `json:"name,omitempty"`
	Prefix    string     `json:"prefix"` // first characters, to recognise it
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"` // absent: never expires
	Expired   bool       `json:"expired,omitempty"`
	Current   bool       `json:"current,omitempty"` // the key of this request
}

// CreateAPIKeyRequest is the body of POST /api/v1/keys.
type CreateAPIKeyRequest struct {
	Name string `json:"name,omitempty"`
	// ExpiresIn is a Go duration ("720h"); empty: the key never expires.
	ExpiresIn string `json:"expires_in,omitempty"`
}

// CreateAPIKeyResponse carries the new key, shown only here.
type CreateAPIKeyResponse struct {
	APIKey
	Key string `json:"key"`
}
