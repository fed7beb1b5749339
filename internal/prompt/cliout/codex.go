package cliout

import (
	"encoding/json"
	"fmt"
	"strings"
)

// codex parses `codex exec --json` (codex-rs/exec/src/exec_events.rs): a
// thread of items, each started/updated/completed, and a turn that ends in
// turn.completed (with usage) or turn.failed.
type codex struct {
	// started holds the ids of tool items whose call was emitted, so a
	// completed item emits only its result — and an item that is reported
	// only on completion (file_change) emits its call first.
	started map[string]bool
	// answer is the last agent message: codex's own final answer (what
	// --output-last-message writes).
	answer string
	// lastError is the last top-level error event: a turn.failed without a
	// message of its own fails with it, as codex itself does.
	lastError string
}

func newCodex() *codex { return &codex{started: map[string]bool{}} }

type codexItem struct {
	ID   str `json:"id"`
	Type str `json:"type"`
	// agent_message, reasoning, error
	Text    str `json:"text"`
	Message str `json:"message"`
	// command_execution
	Command          str  `json:"command"`
	AggregatedOutput str  `json:"aggregated_output"`
	ExitCode         *num `json:"exit_code"`
	Status           str  `json:"status"`
	// file_change
	Changes []struct {
		Path str `json:"path"`
		Kind str `json:"kind"`
	} `json:"changes"`
	// mcp_tool_call
	Server    str             `json:"server"`
	Tool      str             `json:"tool"`
	Arguments json.RawMessage `json:"arguments"`
	Result    *struct {
		Content           []json.RawMessage `json:"content"`
		StructuredContent json.RawMessage   `json:"structured_content"`
	} `json:"result"`
	Error *struct {
		Message str `json:"message"`
	} `json:"error"`
	// web_search
	Query str `json:"query"`
}

type codexLine struct {
	Item  *codexItem `json:"item"`
	Usage *struct {
		InputTokens       num `json:"input_tokens"`
		CachedInputTokens num `json:"cached_input_tokens"`
		OutputTokens      num `json:"output_tokens"`
	} `json:"usage"`
	Error *struct {
		Message str `json:"message"`
	} `json:"error"`
	Message str `json:"message"`
}

func (c *codex) handle(typ string, raw []byte) []Event {
	var l codexLine
	if !decode(raw, &l) {
		return nil
	}
	switch typ {
	case "item.started":
		if l.Item == nil {
			return nil
		}
		if call, ok := c.call(l.Item); ok {
			c.started[string(l.Item.ID)] = true
			return []Event{call}
		}
	case "item.completed":
		if l.Item == nil {
			return nil
		}
		return c.completed(l.Item)
	case "turn.completed":
		var evs []Event
		if l.Usage != nil {
			// codex's input_tokens already include the cached ones.
			evs = usageEvent(Usage{
				InputTokens:  int64(l.Usage.InputTokens),
				OutputTokens: int64(l.Usage.OutputTokens),
				CachedTokens: int64(l.Usage.CachedInputTokens),
			})
		}
		return append(evs, Event{Type: TypeResult, Text: clean(c.answer)})
	case "turn.failed":
		msg := c.lastError
		if l.Error != nil && l.Error.Message != "" {
			msg = string(l.Error.Message)
		}
		if msg == "" {
			msg = "turn failed"
		}
		return []Event{{Type: TypeResult, IsError: true, Message: message(msg)}}
	case "error":
		// Top-level errors are mostly retry notices ("Reconnecting... 2/5
		// (…)") while the turn goes on; only turn.failed ends it. Remember
		// the message for a turn.failed that carries none.
		c.lastError = string(l.Message)
	}
	// thread.started, turn.started, item.updated (running to-do lists,
	// file-change progress), item.plan.delta, request_user_input: nothing
	// the user needs beyond the completed items.
	return nil
}

// call returns the "call" half of a tool item, or false for items that are
// not tool calls (messages, reasoning, to-do lists, warnings).
func (c *codex) call(it *codexItem) (Event, bool) {
	t := Tool{ID: string(it.ID), Phase: PhaseCall}
	switch it.Type {
	case "command_execution":
		t.Name, t.Input = "shell", string(it.Command)
	case "mcp_tool_call":
		t.Name, t.Input = string(it.Server)+"/"+string(it.Tool), rawJSON(it.Arguments)
	case "web_search":
		t.Name, t.Input = "web_search", string(it.Query)
	case "file_change":
		t.Name, t.Input = "file_change", fileChanges(it)
	case "collab_tool_call":
		t.Name = "collab/" + string(it.Tool)
	default:
		return Event{}, false
	}
	return toolEvent(t), true
}

func (c *codex) completed(it *codexItem) []Event {
	switch it.Type {
	case "agent_message":
		c.answer = string(it.Text)
		return []Event{output(string(it.Text))}
	case "reasoning", "todo_list", "plan", "error":
		// Reasoning summaries and plans are not the answer; "error" items
		// are non-fatal warnings (e.g. missing model metadata).
		return nil
	}
	call, ok := c.call(it)
	if !ok {
		return nil
	}
	var evs []Event
	if !c.started[string(it.ID)] {
		evs = append(evs, call)
	}
	delete(c.started, string(it.ID))
	res := *call.Tool
	res.Phase, res.Input = PhaseResult, ""
	res.Status = string(it.Status)
	switch it.Type {
	case "command_execution":
		res.Output = string(it.AggregatedOutput)
		if it.ExitCode != nil {
			res.Status = fmt.Sprintf("%s (exit %d)", res.Status, int64(*it.ExitCode))
		}
	case "mcp_tool_call":
		res.Output = mcpOutput(it)
	}
	return append(evs, toolEvent(res))
}

func fileChanges(it *codexItem) string {
	var b strings.Builder
	for i, ch := range it.Changes {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(string(ch.Kind) + " " + string(ch.Path))
	}
	return b.String()
}

// mcpOutput renders an MCP result: the text blocks joined, else the
// structured content, else the error.
func mcpOutput(it *codexItem) string {
	if it.Error != nil && it.Error.Message != "" {
		return string(it.Error.Message)
	}
	if it.Result == nil {
		return ""
	}
	var parts []string
	for _, c := range it.Result.Content {
		var block struct {
			Type str `json:"type"`
			Text str `json:"text"`
		}
		if decode(c, &block) && block.Type == "text" {
			parts = append(parts, string(block.Text))
		} else {
			parts = append(parts, rawJSON(c))
		}
	}
	if len(parts) == 0 {
		return rawJSON(it.Result.StructuredContent)
	}
	return strings.Join(parts, "\n")
}
