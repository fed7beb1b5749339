package api

import "time"

// Login session states: starting → vm_ready → awaiting_user → capturing →
// completed, or failed (Error says what to do), timeout, cancelled.
const (
	AuthStarting     = "starting"
	AuthVMReady      = "vm_ready"
	AuthAwaitingUser = "awaiting_user"
	AuthCapturing    = "capturing"
	AuthCompleted    = "completed"
	AuthFailed       = "failed"
	AuthTimeout      = "timeout"
	AuthCancelled    = "cancelled"
)

// Login modes.
const (
	ModeBrowser = "browser" // a browser VM the user drives through the live view
	ModePaste   = "paste"   // the user pastes a code into the CLI's prompt (POST …/input)
	ModeDevice  = "device"  // a device code shown to the user; no browser VM
)

// CreateAuthSessionRequest is the body of POST /api/v1/auth/sessions.
type CreateAuthSessionRequest struct {
	Provider string `json:"provider"`
	Mode     string `json:"mode,omitempty"` // default browser
}

// AuthSession is a login in progress or finished.
type AuthSession struct {
	ID       string `json:"id"`
	OwnerID  string `json:"owner_id"`
	Provider string `json:"provider"`
	Mode     string `json:"mode"`
	State    string `json:"state"`
	Error    string `json:"error,omitempty"`
	// OAuthURL is the provider's authorization URL once the CLI printed it.
	OAuthURL string `json:"oauth_url,omitempty"`
	// LiveViewURL opens the browser VM's screen (path and short-lived token);
	// empty outside browser mode.
	LiveViewURL string `json:"live_view_url,omitempty"`
	// DeviceCode is the one-time code to enter at OAuthURL (device mode).
	DeviceCode string `json:"device_code,omitempty"`
	VMID       string `json:"vm_id,omitempty"`
	// TimingsMS holds how long each phase took (vm_ready, awaiting_user,
	// completed), in milliseconds since the session started.
	TimingsMS  map[string]int64 `json:"timings_ms,omitempty"`
	CreatedAt  time.Time        `json:"created_at"`
	UpdatedAt  time.Time        `json:"updated_at"`
	ExpiresAt  time.Time        `json:"expires_at"`
	FinishedAt *time.Time       `json:"finished_at,omitempty"`
}

// AuthInputRequest is the body of POST /api/v1/auth/sessions/{id}/input:
// text typed into the CLI's prompt (a pasted authorization code).
type AuthInputRequest struct {
	Text string `json:"text"`
}

// Credential is what the API shows of stored credentials: metadata only,
// never a token.
type Credential struct {
	Provider    string     `json:"provider"`
	Account     string     `json:"account,omitempty"`
	Plan        string     `json:"plan,omitempty"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	Files       []string   `json:"files,omitempty"`
	CapturedAt  time.Time  `json:"captured_at"`
	ValidatedAt *time.Time `json:"validated_at,omitempty"`
}

// LiveViewShare is a view-only live-view link of a login session (POST
// /api/v1/auth/sessions/{id}/share, the session's owner only). View-only is
// part of the signed token: the link cannot be edited into control.
type LiveViewShare struct {
	LiveViewURL string    `json:"live_view_url"`
	ViewOnly    bool      `json:"view_only"`
	ExpiresAt   time.Time `json:"expires_at"`
}
