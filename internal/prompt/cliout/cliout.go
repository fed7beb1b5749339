// Package cliout turns the machine-readable stdout of the coding CLIs hangar
// runs non-interactively (codex, claude, gemini, hangar's dev CLI) into one
// common event stream: text output, tool calls and results, token usage and a
// final result.
//
// Each CLI has its own JSON-lines format (see FORMATS.md for the facts and
// where they come from). A Parser is fed one line at a time, as the line
// arrives, so events can be streamed to the user while the CLI still runs.
// Parsers never panic on any input: CLI output is untrusted bytes, a line may
// have been cut by the caller's length limit, and CLIs interleave plain text
// with their JSON.
package cliout

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Event is one common event parsed from a CLI's output.
type Event struct {
	Type  string // "output", "tool", "usage", "result"
	Text  string // output: text as it arrives (a whole message or a delta); result: the final answer text if the CLI reports one
	Tool  *Tool  // tool
	Usage *Usage // usage
	// result only:
	IsError bool   // the CLI reported failure in its stream
	Message string // result error message, if any (never a token)
}

// Event types.
const (
	TypeOutput = "output"
	TypeTool   = "tool"
	TypeUsage  = "usage"
	TypeResult = "result"
)

// Tool is a tool call ("call") or its outcome ("result"). The two halves of
// one call share ID where the CLI reports one.
type Tool struct {
	Name   string `json:"name"`
	ID     string `json:"id,omitempty"`
	Phase  string `json:"phase"`            // "call" or "result"
	Input  string `json:"input,omitempty"`  // JSON or text, truncated to 4 KiB
	Output string `json:"output,omitempty"` // truncated to 4 KiB
	Status string `json:"status,omitempty"` // e.g. completed, failed, exit code
}

// Tool phases and the statuses the parsers normalise the CLIs' own words to.
const (
	PhaseCall   = "call"
	PhaseResult = "result"

	StatusCompleted = "completed"
	StatusFailed    = "failed"
)

// Usage is token usage as the CLI reports it. InputTokens counts every input
// token of the run, cached ones included; CachedTokens is the part of it
// served from the provider's prompt cache (the CLIs count these differently;
// the parsers normalise to this).
type Usage struct {
	InputTokens  int64   `json:"input_tokens,omitempty"`
	OutputTokens int64   `json:"output_tokens,omitempty"`
	CachedTokens int64   `json:"cached_tokens,omitempty"`
	CostUSD      float64 `json:"cost_usd,omitempty"`
}

// Parser turns a CLI's stdout, line by line, into events. Stateful; not safe for concurrent use.
type Parser interface {
	// Line parses one line (without its newline). Lines that are not the format's JSON become "output" events with the line as text (plus "\n") — CLIs sometimes print plain text; never drop data silently. Malformed or unknown JSON types yield nothing but never panic.
	Line(line []byte) []Event
}

// Format names.
const (
	FormatCodex  = "codex-jsonl"
	FormatClaude = "claude-stream-json"
	FormatGemini = "gemini-stream-json"
	FormatDev    = "dev-jsonl"
	FormatText   = "text"
)

var constructors = map[string]func() Parser{
	FormatCodex:  func() Parser { return &jsonLines{h: newCodex()} },
	FormatClaude: func() Parser { return &jsonLines{h: newClaude()} },
	FormatGemini: func() Parser { return &jsonLines{h: newGemini()} },
	FormatDev:    func() Parser { return &jsonLines{h: &dev{}} },
	FormatText:   func() Parser { return textParser{} },
}

// NewParser returns a fresh parser for one run of a CLI.
// Formats: "codex-jsonl", "claude-stream-json", "gemini-stream-json", "dev-jsonl", "text".
func NewParser(format string) (Parser, error) {
	c, ok := constructors[format]
	if !ok {
		return nil, fmt.Errorf("cliout: unknown output format %q (known: %s)", format, strings.Join(Formats(), ", "))
	}
	return c(), nil
}

// Formats lists the known format names.
func Formats() []string {
	names := make([]string, 0, len(constructors))
	for n := range constructors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// MaxField bounds Tool.Input and Tool.Output: a tool's output (a file read,
// a long command log) can be megabytes, and every event is stored and
// streamed to the user; the whole line stays in the prompt's raw log.
const MaxField = 4 << 10

// truncate cuts s to at most MaxField bytes on a rune boundary, marking the
// cut so a reader knows there was more.
func truncate(s string) string {
	if len(s) <= MaxField {
		return s
	}
	const mark = "…[truncated]"
	cut := MaxField - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// clean makes s valid UTF-8: events end up as JSON in SSE and in the store,
// where invalid bytes would be rewritten anyway — better once, here.
func clean(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// secretPatterns match the shapes of the credentials hangar delivers (and
// API keys), in case a CLI ever echoes one in an error message. Result
// messages are shown to users and stored in prompt records, where no token
// may appear; this is a last line of defence, not the redaction of raw logs.
var secretPatterns = regexp.MustCompile(`sk-ant-[A-Za-z0-9_-]{6,}|sk-[A-Za-z0-9_-]{20,}|ya29\.[A-Za-z0-9._-]{6,}|1//[A-Za-z0-9._-]{10,}|eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_.-]{6,}|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{12,}`)

// message prepares a CLI-reported error message for users: valid UTF-8,
// bounded, and with anything shaped like a token replaced.
func message(s string) string {
	return truncate(secretPatterns.ReplaceAllString(clean(strings.TrimSpace(s)), "[redacted]"))
}

func output(text string) Event { return Event{Type: TypeOutput, Text: clean(text)} }

func toolEvent(t Tool) Event {
	t.Name = clean(t.Name)
	t.ID = clean(t.ID)
	t.Input = truncate(clean(t.Input))
	t.Output = truncate(clean(t.Output))
	return Event{Type: TypeTool, Tool: &t}
}

// usageEvent returns a usage event, or nothing when every count is zero:
// failed runs report all-zero usage, which tells the user nothing.
func usageEvent(u Usage) []Event {
	if u == (Usage{}) {
		return nil
	}
	return []Event{{Type: TypeUsage, Usage: &u}}
}

// textParser is the "text" format: the CLI prints plain text and every line
// of it is output.
type textParser struct{}

func (textParser) Line(line []byte) []Event {
	return []Event{output(string(line) + "\n")}
}

// handler parses one decoded JSON object of a JSON-lines format. typ is the
// object's "type" field.
type handler interface {
	handle(typ string, raw []byte) []Event
}

// jsonLines is what the JSON formats share: which lines are the format's JSON
// and which are plain text.
type jsonLines struct{ h handler }

// Line treats a line whose first non-blank byte is '{' as the format's JSON:
// the CLIs print one object per line, while the plain text they sometimes
// interleave (warnings, a Node deprecation notice) does not start with a
// brace. A '{' line that does not parse — cut by the caller's line limit,
// or garbage — yields nothing, as does an object with no or an unknown
// "type". Blank lines carry no data and yield nothing.
func (p *jsonLines) Line(line []byte) []Event {
	trimmed := bytes.TrimSpace(line)
	if len(trimmed) == 0 {
		return nil
	}
	if trimmed[0] != '{' {
		return []Event{output(string(line) + "\n")}
	}
	var head struct {
		Type json.RawMessage `json:"type"`
	}
	if err := json.Unmarshal(trimmed, &head); err != nil {
		return nil
	}
	var typ string
	if err := json.Unmarshal(head.Type, &typ); err != nil || typ == "" {
		return nil
	}
	return p.h.handle(typ, trimmed)
}

// num is a JSON number that decodes leniently: an integer, a float (rounded
// down), a numeric string or null. Anything else decodes to 0 instead of
// failing the whole line, so one odd usage field does not lose the event.
type num int64

func (n *num) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		*n = num(i)
		return nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && f >= -9e18 && f <= 9e18 {
		*n = num(int64(f))
		return nil
	}
	*n = 0
	return nil
}

// fnum is num for fractional values (cost).
type fnum float64

func (n *fnum) UnmarshalJSON(b []byte) error {
	f, err := strconv.ParseFloat(strings.Trim(string(b), `"`), 64)
	if err != nil {
		f = 0
	}
	*n = fnum(f)
	return nil
}

// str is a JSON string that tolerates other JSON values: a string decodes to
// itself, null to "", and anything else to its JSON text. Fields like a
// tool's input or output are strings in one CLI version and objects in
// another; either way the user should see them.
type str string

func (s *str) UnmarshalJSON(b []byte) error {
	var v string
	if err := json.Unmarshal(b, &v); err == nil {
		*s = str(v)
		return nil
	}
	if string(b) == "null" {
		*s = ""
		return nil
	}
	*s = str(b)
	return nil
}

// rawJSON renders a JSON value for Tool.Input: compact JSON, or "" for
// absent and null values.
func rawJSON(b json.RawMessage) string {
	if len(b) == 0 || string(b) == "null" {
		return ""
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return string(b)
	}
	return buf.String()
}

// decode unmarshals raw into v, reporting success. A line that does not fit
// its type's shape yields no event.
func decode(raw []byte, v any) bool {
	return json.Unmarshal(raw, v) == nil
}
