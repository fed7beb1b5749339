package cliout

import (
	"encoding/json"
	"strings"
)

// claude parses `claude -p --output-format stream-json --verbose`: the Agent
// SDK's messages, one per line — system (init, api_retry, …), assistant
// (content blocks text / tool_use / thinking), user (tool_result blocks) and
// one final result.
type claude struct {
	// names maps tool_use ids to tool names: a tool_result names only the id.
	names map[string]string
}

func newClaude() *claude { return &claude{names: map[string]string{}} }

type claudeBlock struct {
	Type      str             `json:"type"`
	Text      str             `json:"text"`
	ID        str             `json:"id"`
	Name      str             `json:"name"`
	Input     json.RawMessage `json:"input"`
	ToolUseID str             `json:"tool_use_id"`
	Content   json.RawMessage `json:"content"`
	IsError   bool            `json:"is_error"`
}

type claudeUsage struct {
	InputTokens              num `json:"input_tokens"`
	OutputTokens             num `json:"output_tokens"`
	CacheCreationInputTokens num `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     num `json:"cache_read_input_tokens"`
}

type claudeLine struct {
	Subtype str `json:"subtype"`
	Message *struct {
		Content json.RawMessage `json:"content"`
	} `json:"message"`
	// assistant messages the CLI makes up itself for an API failure
	// ("Not logged in · Please run /login") carry these; the result that
	// follows repeats the text as its error.
	IsAPIErrorMessage bool `json:"is_api_error_message"`
	// result
	IsError      bool         `json:"is_error"`
	Result       *str         `json:"result"`
	Usage        *claudeUsage `json:"usage"`
	TotalCostUSD fnum         `json:"total_cost_usd"`
	Errors       []str        `json:"errors"`
}

func (c *claude) handle(typ string, raw []byte) []Event {
	var l claudeLine
	if !decode(raw, &l) {
		return nil
	}
	switch typ {
	case "assistant":
		if l.Message == nil || l.IsAPIErrorMessage {
			return nil
		}
		var evs []Event
		for _, b := range blocks(l.Message.Content) {
			switch b.Type {
			case "text":
				if b.Text != "" {
					evs = append(evs, output(string(b.Text)))
				}
			case "tool_use":
				c.names[string(b.ID)] = string(b.Name)
				evs = append(evs, toolEvent(Tool{Name: string(b.Name), ID: string(b.ID), Phase: PhaseCall, Input: rawJSON(b.Input)}))
			}
			// thinking and redacted_thinking blocks are not output.
		}
		return evs
	case "user":
		if l.Message == nil {
			return nil
		}
		var evs []Event
		for _, b := range blocks(l.Message.Content) {
			if b.Type != "tool_result" {
				continue
			}
			status := StatusCompleted
			if b.IsError {
				status = StatusFailed
			}
			id := string(b.ToolUseID)
			evs = append(evs, toolEvent(Tool{Name: c.names[id], ID: id, Phase: PhaseResult, Output: resultText(b.Content), Status: status}))
			delete(c.names, id)
		}
		return evs
	case "result":
		var evs []Event
		if l.Usage != nil {
			u := l.Usage
			// Anthropic counts cache reads and cache writes apart from
			// input_tokens; the common Usage counts all input.
			evs = usageEvent(Usage{
				InputTokens:  int64(u.InputTokens + u.CacheCreationInputTokens + u.CacheReadInputTokens),
				OutputTokens: int64(u.OutputTokens),
				CachedTokens: int64(u.CacheReadInputTokens),
				CostUSD:      float64(l.TotalCostUSD),
			})
		}
		var text string
		if l.Result != nil {
			text = string(*l.Result)
		}
		// is_error is the failure flag: an API failure ends with subtype
		// "success" and is_error true; error_max_turns,
		// error_during_execution, … carry is_error too, but check both.
		if l.IsError || strings.HasPrefix(string(l.Subtype), "error") {
			msg := text
			if msg == "" {
				parts := make([]string, 0, len(l.Errors))
				for _, e := range l.Errors {
					parts = append(parts, string(e))
				}
				msg = strings.Join(parts, "; ")
			}
			if msg == "" {
				msg = string(l.Subtype)
			}
			if msg == "" {
				msg = "claude reported an error"
			}
			return append(evs, Event{Type: TypeResult, IsError: true, Message: message(msg)})
		}
		return append(evs, Event{Type: TypeResult, Text: clean(text)})
	}
	// system (init, api_retry, compact_boundary, …), stream_event (only with
	// --include-partial-messages), prompt_suggestion, …: nothing to show.
	return nil
}

// blocks decodes message content: an array of blocks, or a plain string
// (user prompts) which is a single text block.
func blocks(content json.RawMessage) []claudeBlock {
	var bs []claudeBlock
	if decode(content, &bs) {
		return bs
	}
	var s string
	if decode(content, &s) {
		return []claudeBlock{{Type: "text", Text: str(s)}}
	}
	return nil
}

// resultText renders tool_result content: a string, or blocks whose text
// parts are joined (images and other blocks as their JSON).
func resultText(content json.RawMessage) string {
	var s string
	if decode(content, &s) {
		return s
	}
	var bs []json.RawMessage
	if !decode(content, &bs) {
		return rawJSON(content)
	}
	parts := make([]string, 0, len(bs))
	for _, raw := range bs {
		var b claudeBlock
		if decode(raw, &b) && b.Type == "text" {
			parts = append(parts, string(b.Text))
		} else {
			parts = append(parts, rawJSON(raw))
		}
	}
	return strings.Join(parts, "\n")
}
