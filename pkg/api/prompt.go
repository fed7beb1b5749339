package api

import (
	"encoding/json"
	"time"
)

// Prompt states: queued (waiting for its VM or for the credential's
// lease) → running → completed, failed or cancelled.
const (
	PromptQueued    = "queued"
	PromptRunning   = "running"
	PromptCompleted = "completed"
	PromptFailed    = "failed"
	PromptCancelled = "cancelled"
)

// Prompt event types, in GET /api/v1/prompts/{id}/events.
const (
	PromptEventStarted   = "started"   // PromptStarted
	PromptEventOutput    = "output"    // PromptOutput
	PromptEventTool      = "tool"      // PromptTool
	PromptEventUsage     = "usage"     // PromptUsage
	PromptEventCompleted = "completed" // PromptEnd
	PromptEventFailed    = "failed"    // PromptEnd
)

// Failure reasons of a failed prompt (PromptEnd.Reason, Prompt.Reason).
const (
	ReasonNotConnected = "not_connected" // the user has no credentials for the provider
	ReasonAuth         = "auth"          // the provider refused the login: log in again
	ReasonUnreachable  = "unreachable"   // the provider's API could not be reached
	ReasonTimeout      = "timeout"
	ReasonCancelled    = "cancelled"
	ReasonVM           = "vm"         // the CLI VM could not be started or went away
	ReasonLeaseHeld    = "lease_held" // another VM holds the credential
	ReasonCLI          = "cli_error"  // the CLI failed for another reason (exit code, message)
	ReasonRestart      = "daemon_restart"
)

// CreatePromptRequest is the body of POST /api/v1/prompts.
type CreatePromptRequest struct {
	Provider string `json:"provider"`
	Prompt   string `json:"prompt"`
	// VMID picks the CLI VM; default: the caller's first CLI workspace VM,
	// created (or started) on first use.
	VMID string `json:"vm_id,omitempty"`
	// Cwd inside the VM; default /home/hangar.
	Cwd   string `json:"cwd,omitempty"`
	Model string `json:"model,omitempty"`
	// TimeoutS bounds the CLI's run (default 600, at most 3600).
	TimeoutS int `json:"timeout_s,omitempty"`
}

// Prompt is a prompt and how it ended.
type Prompt struct {
	ID         string       `json:"id"`
	OwnerID    string       `json:"owner_id"`
	VMID       string       `json:"vm_id,omitempty"`
	Provider   string       `json:"provider"`
	State      string       `json:"state"`
	Prompt     string       `json:"prompt"`
	Cwd        string       `json:"cwd,omitempty"`
	Model      string       `json:"model,omitempty"`
	TimeoutS   int          `json:"timeout_s"`
	ExitCode   *int         `json:"exit_code,omitempty"`
	Error      string       `json:"error,omitempty"`
	Reason     string       `json:"reason,omitempty"`
	Usage      *PromptUsage `json:"usage,omitempty"`
	CreatedAt  time.Time    `json:"created_at"`
	StartedAt  *time.Time   `json:"started_at,omitempty"`
	FinishedAt *time.Time   `json:"finished_at,omitempty"`
}

// PromptList is a page of prompts, newest first; Next is the cursor of the
// following page (?before=), empty on the last.
type PromptList struct {
	Prompts []Prompt `json:"prompts"`
	Next    string   `json:"next,omitempty"`
}

// PromptEvent is one server-sent event of a prompt; Seq is its SSE id.
type PromptEvent struct {
	Seq  int64           `json:"seq"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// PromptStarted is the data of a started event.
type PromptStarted struct {
	VMID     string `json:"vm_id"`
	Provider string `json:"provider"`
	Model    string `json:"model,omitempty"`
}

// PromptOutput is the data of an output event: text as it arrives.
type PromptOutput struct {
	Text string `json:"text"`
}

// PromptTool is the data of a tool event: a tool call or its result.
type PromptTool struct {
	Name   string `json:"name"`
	ID     string `json:"id,omitempty"`
	Phase  string `json:"phase"` // call | result
	Input  string `json:"input,omitempty"`
	Output string `json:"output,omitempty"`
	Status string `json:"status,omitempty"`
}

// PromptUsage is the data of a usage event (where the CLI reports it).
type PromptUsage struct {
	InputTokens  int64   `json:"input_tokens,omitempty"`
	OutputTokens int64   `json:"output_tokens,omitempty"`
	CachedTokens int64   `json:"cached_tokens,omitempty"`
	CostUSD      float64 `json:"cost_usd,omitempty"`
}

// PromptEnd is the data of the final completed or failed event.
type PromptEnd struct {
	ExitCode   *int   `json:"exit_code,omitempty"`
	DurationMS int64  `json:"duration_ms"`
	Reason     string `json:"reason,omitempty"`
	Message    string `json:"message,omitempty"`
}
