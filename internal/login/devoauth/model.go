package devoauth

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
)

// The dev model: a streaming completion endpoint that, like a real
// provider's API, answers only a valid access token. Its answer is
// deterministic (the prompt reversed, addressed to the account) so tests
// can assert every byte, and it streams word by word so that "output as it
// arrives" is observable end to end.

// CompleteRequest is the body of POST /v1/complete.
type CompleteRequest struct {
	Prompt string `json:"prompt"`
	Model  string `json:"model,omitempty"`
}

// Chunk is one NDJSON line of a completion stream: type "text" (Text),
// "tool" (Name, Input, Output: the model "used a tool"), "usage" (token
// counts) or "done".
type Chunk struct {
	Type         string `json:"type"`
	Text         string `json:"text,omitempty"`
	Name         string `json:"name,omitempty"`
	Input        string `json:"input,omitempty"`
	Output       string `json:"output,omitempty"`
	Model        string `json:"model,omitempty"`
	InputTokens  int    `json:"input_tokens,omitempty"`
	OutputTokens int    `json:"output_tokens,omitempty"`
}

// SlowMarker in a prompt makes the dev model stream one word a second.
const SlowMarker = "[slow]"

// DefaultModel is the model the dev endpoint reports when none is asked for.
const DefaultModel = "dev-1"

// maxPromptBytes bounds a completion request.
const maxPromptBytes = 256 << 10

// chunkDelay paces the stream.
const chunkDelay = 15 * time.Millisecond

// Answer is the dev model's full answer to prompt for the account email:
// what a completion streams, in order, as text chunks.
func Answer(email, prompt string) string {
	return "dev-model answer for " + email + ": " + reverse(prompt)
}

func reverse(s string) string {
	r := []rune(s)
	for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
		r[i], r[j] = r[j], r[i]
	}
	return string(r)
}

func (s *Server) handleComplete(w http.ResponseWriter, r *http.Request) {
	u, ok := s.bearerUser(w, r)
	if !ok {
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxPromptBytes)
	var req CompleteRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !utf8.ValidString(req.Prompt) {
		writeJSON(w, http.StatusBadRequest, ErrorResponse{Error: "invalid_request", Description: "the body must be a JSON object with a UTF-8 prompt"})
		return
	}
	model := req.Model
	if model == "" {
		model = DefaultModel
	}
	s.log.Info("dev model completion", "username", u.Username, "model", model, "prompt_bytes", len(req.Prompt))
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	send := func(c Chunk) bool {
		if err := enc.Encode(c); err != nil {
			return false
		}
		_ = rc.Flush()
		return true
	}
	// A prompt that asks for a tool gets one "tool use" first, so the
	// whole event vocabulary can be exercised offline.
	if strings.Contains(strings.ToLower(req.Prompt), "use a tool") {
		if !send(Chunk{Type: "tool", Name: "word_count", Input: req.Prompt, Output: itoa(len(strings.Fields(req.Prompt)))}) {
			return
		}
	}
	answer := Answer(u.Email, req.Prompt)
	words := strings.SplitAfter(answer, " ")
	delay := chunkDelay
	if strings.Contains(req.Prompt, SlowMarker) {
		delay = time.Second // long enough to cancel a prompt midway
	}
	for _, piece := range words {
		select {
		case <-r.Context().Done():
			return
		case <-time.After(delay):
		}
		if !send(Chunk{Type: "text", Text: piece}) {
			return
		}
	}
	send(Chunk{Type: "usage", Model: model, InputTokens: len(strings.Fields(req.Prompt)), OutputTokens: len(words)})
	send(Chunk{Type: "done", Model: model})
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// RefreshReuses is how many refresh tokens were presented after they had
// already been exchanged (each revoked its whole grant).
func (s *Server) RefreshReuses() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reuses
}
