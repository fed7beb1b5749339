package devcli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// promptOptions are the flags of `hangar-devcli prompt`.
type promptOptions struct {
	model string
	// json prints the answer as JSON lines (the "dev-jsonl" format hangar
	// parses) instead of plain text.
	json bool
}

// jsonEvent is one line of `prompt --json`: start, text (a delta), tool,
// usage, result.
type jsonEvent struct {
	Type         string `json:"type"`
	Model        string `json:"model,omitempty"`
	Text         string `json:"text,omitempty"`
	Name         string `json:"name,omitempty"`
	Phase        string `json:"phase,omitempty"`
	Input        string `json:"input,omitempty"`
	Output       string `json:"output,omitempty"`
	InputTokens  int    `json:"input_tokens,omitempty"`
	OutputTokens int    `json:"output_tokens,omitempty"`
	IsError      bool   `json:"is_error,omitempty"`
	Message      string `json:"message,omitempty"`
}

// completionChunk is a line of the issuer's /v1/complete stream.
type completionChunk struct {
	Type         string `json:"type"`
	Text         string `json:"text"`
	Name         string `json:"name"`
	Input        string `json:"input"`
	Output       string `json:"output"`
	Model        string `json:"model"`
	InputTokens  int    `json:"input_tokens"`
	OutputTokens int    `json:"output_tokens"`
}

// prompt asks the dev model, refreshing the access token first when the
// file says it expired and once more when the issuer answers 401 (a real
// CLI's behaviour: the refresh rotates the refresh token and rewrites the
// credential file, which hangar then syncs back).
func (e *env) prompt(ctx context.Context, text string, o promptOptions) error {
	a, err := loadAuth(e.home)
	if err != nil {
		return e.promptFailed(o, err)
	}
	refreshed := false
	if !e.now().Add(refreshMargin).Before(a.ExpiresAt) {
		if a, err = e.refresh(ctx, a); err != nil {
			return e.promptFailed(o, err)
		}
		refreshed = true
	}
	resp, err := e.complete(ctx, a, text, o.model)
	var oe *oauthError
	if err != nil && errors.As(err, &oe) && oe.Status == http.StatusUnauthorized && !refreshed {
		if a, err = e.refresh(ctx, a); err != nil {
			return e.promptFailed(o, err)
		}
		resp, err = e.complete(ctx, a, text, o.model)
	}
	if err != nil {
		return e.promptFailed(o, fmt.Errorf("ask the dev model: %w", err))
	}
	defer resp.Body.Close()
	emit := func(ev jsonEvent) {
		if o.json {
			b, _ := json.Marshal(ev)
			fmt.Fprintf(e.stdout, "%s\n", b)
		}
	}
	model := o.model
	if model == "" {
		model = "dev-1"
	}
	emit(jsonEvent{Type: "start", Model: model})
	var answer strings.Builder
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	done := false
	for sc.Scan() {
		var c completionChunk
		if json.Unmarshal(sc.Bytes(), &c) != nil {
			continue
		}
		switch c.Type {
		case "text":
			answer.WriteString(c.Text)
			if o.json {
				emit(jsonEvent{Type: "text", Text: c.Text})
			} else {
				fmt.Fprint(e.stdout, c.Text)
			}
		case "tool":
			emit(jsonEvent{Type: "tool", Name: c.Name, Phase: "call", Input: c.Input})
			emit(jsonEvent{Type: "tool", Name: c.Name, Phase: "result", Output: c.Output})
		case "usage":
			emit(jsonEvent{Type: "usage", Model: c.Model, InputTokens: c.InputTokens, OutputTokens: c.OutputTokens})
		case "done":
			done = true
		}
	}
	if err := sc.Err(); err != nil || !done {
		if err == nil {
			err = errors.New("the stream ended before the answer was complete")
		}
		return e.promptFailed(o, fmt.Errorf("read the dev model's answer: %w", err))
	}
	if !o.json {
		fmt.Fprintln(e.stdout)
	}
	emit(jsonEvent{Type: "result", Text: answer.String()})
	return nil
}

// promptFailed reports err as the final JSON event in --json mode (as the
// real CLIs report failures in their streams) and returns it.
func (e *env) promptFailed(o promptOptions, err error) error {
	if o.json {
		b, _ := json.Marshal(jsonEvent{Type: "result", IsError: true, Message: err.Error()})
		fmt.Fprintf(e.stdout, "%s\n", b)
	}
	return err
}

// complete opens the completion stream.
func (e *env) complete(ctx context.Context, a authFile, text, model string) (*http.Response, error) {
	body, _ := json.Marshal(map[string]string{"prompt": text, "model": model})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.issuerFor(a)+"/v1/complete", strings.NewReader(string(body)))
	if err != nil {
		return nil, fmt.Errorf("completion request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+a.AccessToken)
	// The answer streams: no overall client timeout, the context bounds it.
	resp, err := streamClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach the issuer at %s: %w", e.issuerFor(a), redactURLError(err))
	}
	if resp.StatusCode/100 != 2 {
		return nil, decodeResponse(resp, &struct{}{})
	}
	return resp, nil
}

var streamClient = &http.Client{}
