package cliout

import (
	"encoding/json"
	"strings"
)

// gemini parses `gemini -p … -o stream-json`
// (packages/core/src/output/types.ts, packages/cli/src/nonInteractiveCli.ts):
// init, message (user echo, then assistant deltas), tool_use, tool_result,
// error (warnings), and one final result whose stats hold the usage.
type gemini struct {
	// names maps tool ids to tool names: a tool_result names only the id.
	names map[string]string
	// answer collects the assistant's deltas since the last tool event;
	// gemini's result carries no text, so this is its final answer.
	answer strings.Builder
	// lastError is the last error event: a result with status "error" but
	// no error of its own (an invalid stream) fails with it.
	lastError string
}

func newGemini() *gemini { return &gemini{names: map[string]string{}} }

type geminiLine struct {
	Role       str             `json:"role"`
	Content    str             `json:"content"`
	ToolName   str             `json:"tool_name"`
	ToolID     str             `json:"tool_id"`
	Parameters json.RawMessage `json:"parameters"`
	Status     str             `json:"status"`
	Output     str             `json:"output"`
	Message    str             `json:"message"`
	Error      *struct {
		Type    str `json:"type"`
		Message str `json:"message"`
	} `json:"error"`
	Stats *struct {
		InputTokens  num `json:"input_tokens"`
		OutputTokens num `json:"output_tokens"`
		Cached       num `json:"cached"`
	} `json:"stats"`
}

func (g *gemini) handle(typ string, raw []byte) []Event {
	var l geminiLine
	if !decode(raw, &l) {
		return nil
	}
	switch typ {
	case "message":
		// The user's own prompt is echoed first with role "user".
		if l.Role != "assistant" || l.Content == "" {
			return nil
		}
		// Bound the collected answer like any other field; the output
		// events carry every delta in full.
		if g.answer.Len() < 1<<20 {
			g.answer.WriteString(string(l.Content))
		}
		return []Event{output(string(l.Content))}
	case "tool_use":
		g.answer.Reset()
		g.names[string(l.ToolID)] = string(l.ToolName)
		return []Event{toolEvent(Tool{Name: string(l.ToolName), ID: string(l.ToolID), Phase: PhaseCall, Input: rawJSON(l.Parameters)})}
	case "tool_result":
		g.answer.Reset()
		id := string(l.ToolID)
		t := Tool{Name: g.names[id], ID: id, Phase: PhaseResult, Output: string(l.Output), Status: StatusCompleted}
		delete(g.names, id)
		if l.Status == "error" {
			t.Status = StatusFailed
			if l.Error != nil && l.Error.Message != "" {
				if t.Output != "" {
					t.Output += "\n"
				}
				t.Output += string(l.Error.Message)
			}
		}
		return []Event{toolEvent(t)}
	case "error":
		// severity "warning" (loop detected, blocked by a hook) or "error"
		// (invalid stream, followed by a failed result): not the answer.
		g.lastError = string(l.Message)
		return nil
	case "result":
		var evs []Event
		if l.Stats != nil {
			// input_tokens is the prompt count, cached tokens included.
			evs = usageEvent(Usage{
				InputTokens:  int64(l.Stats.InputTokens),
				OutputTokens: int64(l.Stats.OutputTokens),
				CachedTokens: int64(l.Stats.Cached),
			})
		}
		if l.Status == "error" {
			msg := g.lastError
			if l.Error != nil && l.Error.Message != "" {
				msg = string(l.Error.Message)
			}
			if msg == "" {
				msg = "gemini reported an error"
			}
			return append(evs, Event{Type: TypeResult, IsError: true, Message: message(msg)})
		}
		return append(evs, Event{Type: TypeResult, Text: clean(g.answer.String())})
	}
	// init: nothing to show.
	return nil
}
