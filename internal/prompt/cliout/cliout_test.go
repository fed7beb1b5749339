package cliout

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// parseFile runs a fixture through a fresh parser of format, line by line.
func parseFile(t testing.TB, format, path string) []Event {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewParser(format)
	if err != nil {
		t.Fatal(err)
	}
	var evs []Event
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		evs = append(evs, p.Line(sc.Bytes())...)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return evs
}

func out(s string) Event { return Event{Type: TypeOutput, Text: s} }
func tool(t Tool) Event  { return Event{Type: TypeTool, Tool: &t} }
func usage(u Usage) Event {
	return Event{Type: TypeUsage, Usage: &u}
}
func result(text string) Event { return Event{Type: TypeResult, Text: text} }
func failed(msg string) Event  { return Event{Type: TypeResult, IsError: true, Message: msg} }

func TestFixtures(t *testing.T) {
	tests := []struct {
		format, file string
		want         []Event
	}{
		{FormatCodex, "codex.jsonl", []Event{
			out("I'll list the files first."),
			tool(Tool{Name: "shell", ID: "item_2", Phase: PhaseCall, Input: "/bin/bash -lc ls"}),
			tool(Tool{Name: "shell", ID: "item_2", Phase: PhaseResult, Output: "README.md\nmain.go\n", Status: "completed (exit 0)"}),
			tool(Tool{Name: "file_change", ID: "item_3", Phase: PhaseCall, Input: "add /home/hangar/work/NOTES.md"}),
			tool(Tool{Name: "file_change", ID: "item_3", Phase: PhaseResult, Status: "completed"}),
			out("The directory holds README.md and main.go; I added NOTES.md."),
			usage(Usage{InputTokens: 24763, OutputTokens: 122, CachedTokens: 24448}),
			result("The directory holds README.md and main.go; I added NOTES.md."),
		}},
		{FormatCodex, "codex-auth.jsonl", []Event{
			failed("Your access token could not be refreshed because your refresh token was already used. Please log out and sign in again."),
		}},
		// Offline, codex retries forever: no terminal event at all.
		{FormatCodex, "codex-network.jsonl", nil},
		{FormatClaude, "claude.jsonl", []Event{
			out("I'll look at the files in the working directory first."),
			tool(Tool{Name: "Bash", ID: "toolu_01A9sV3dXb7QmPq2Lr5TnK8e", Phase: PhaseCall, Input: `{"command":"ls","description":"List files in the working directory"}`}),
			tool(Tool{Name: "Bash", ID: "toolu_01A9sV3dXb7QmPq2Lr5TnK8e", Phase: PhaseResult, Output: "README.md\nmain.go", Status: StatusCompleted}),
			out("The directory holds README.md and main.go."),
			usage(Usage{InputTokens: 9 + 5300 + 29188, OutputTokens: 61, CachedTokens: 29188, CostUSD: 0.0412575}),
			result("The directory holds README.md and main.go."),
		}},
		{FormatClaude, "claude-auth.jsonl", []Event{
			failed("Not logged in · Please run /login"),
		}},
		{FormatClaude, "claude-network.jsonl", []Event{
			failed("API Error: Can't reach the API server — check your internet or DNS (ENOTFOUND)"),
		}},
		{FormatGemini, "gemini.jsonl", []Event{
			out("I'll list the "),
			out("directory first."),
			tool(Tool{Name: "list_directory", ID: "list_directory-1764521533020-4f1a2b3c", Phase: PhaseCall, Input: `{"dir_path":"."}`}),
			tool(Tool{Name: "list_directory", ID: "list_directory-1764521533020-4f1a2b3c", Phase: PhaseResult, Output: "Found 2 item(s).", Status: StatusCompleted}),
			out("The directory holds "),
			out("README.md and main.go."),
			usage(Usage{InputTokens: 18190, OutputTokens: 61, CachedTokens: 12288}),
			result("The directory holds README.md and main.go."),
		}},
		{FormatGemini, "gemini-auth.jsonl", []Event{
			failed("[API Error: Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project. (Status: UNAUTHENTICATED)]"),
		}},
		{FormatGemini, "gemini-network.jsonl", []Event{
			failed("[API Error: exception TypeError: fetch failed sending request]"),
		}},
		{FormatDev, "dev.jsonl", []Event{
			out("Hello "),
			out("from dev."),
			tool(Tool{Name: "echo", Phase: PhaseCall, Input: `{"text":"hi"}`}),
			tool(Tool{Name: "echo", Phase: PhaseResult, Output: "hi"}),
			usage(Usage{InputTokens: 12, OutputTokens: 5}),
			result("Hello from dev."),
		}},
		{FormatDev, "dev-auth.jsonl", []Event{
			failed("refresh token reused: log in again"),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got := parseFile(t, tt.format, filepath.Join("testdata", tt.file))
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("events:\n got %s\nwant %s", dump(got), dump(tt.want))
			}
		})
	}
}

// dump renders events readably: %+v would print the Tool and Usage
// pointers as addresses.
func dump(evs []Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "\n  %s text=%q", e.Type, e.Text)
		if e.Tool != nil {
			fmt.Fprintf(&b, " tool=%+v", *e.Tool)
		}
		if e.Usage != nil {
			fmt.Fprintf(&b, " usage=%+v", *e.Usage)
		}
		if e.IsError || e.Message != "" {
			fmt.Fprintf(&b, " is_error=%v message=%q", e.IsError, e.Message)
		}
	}
	return b.String()
}

// TestPlainAndOdd covers what is not a CLI's JSON: plain text is output,
// malformed JSON and unknown types yield nothing.
func TestPlainAndOdd(t *testing.T) {
	for _, f := range Formats() {
		t.Run(f, func(t *testing.T) {
			p, err := NewParser(f)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := p.Line([]byte("(node:42) Warning: something")), []Event{out("(node:42) Warning: something\n")}; !reflect.DeepEqual(got, want) {
				t.Errorf("plain text: got %s, want %s", dump(got), dump(want))
			}
			if f == FormatText {
				if got := p.Line([]byte(`{"type":"result"}`)); len(got) != 1 || got[0].Text != "{\"type\":\"result\"}\n" {
					t.Errorf("text format: JSON line is output, got %s", dump(got))
				}
				return
			}
			for _, line := range []string{``, `   `, `{"type":"resul`, `{"type":"no-such-type","text":"x"}`, `{"type":42}`, `{}`, `{"type":null}`, `{"type":"result"`} {
				if got := p.Line([]byte(line)); len(got) != 0 {
					t.Errorf("%q: got %s, want nothing", line, dump(got))
				}
			}
			// Invalid UTF-8 in plain text is made valid, not dropped.
			if got := p.Line([]byte("a\xffb")); len(got) != 1 || got[0].Text != "a\uFFFDb\n" {
				t.Errorf("invalid UTF-8: got %s", dump(got))
			}
		})
	}
}

func TestNewParserUnknown(t *testing.T) {
	if _, err := NewParser("xml"); err == nil {
		t.Fatal("NewParser(xml): want an error")
	}
	want := []string{FormatClaude, FormatCodex, FormatDev, FormatGemini, FormatText}
	if got := Formats(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Formats() = %v, want %v", got, want)
	}
}

func TestTruncate(t *testing.T) {
	big := strings.Repeat("é", MaxField) // 2 bytes a rune
	p, _ := NewParser(FormatDev)
	evs := p.Line([]byte(`{"type":"tool","name":"x","phase":"result","output":"` + big + `","input":"` + big + `"}`))
	if len(evs) != 1 {
		t.Fatalf("got %s", dump(evs))
	}
	for _, s := range []string{evs[0].Tool.Output, evs[0].Tool.Input} {
		if len(s) > MaxField || !utf8.ValidString(s) || !strings.HasSuffix(s, "…[truncated]") {
			t.Errorf("truncated field: %d bytes, valid %v, suffix %q", len(s), utf8.ValidString(s), s[len(s)-20:])
		}
	}
}

// TestMessageRedacted: an error message that echoes a credential does not
// carry it on.
func TestMessageRedacted(t *testing.T) {
	p, _ := NewParser(FormatClaude)
	evs := p.Line([]byte(`{"type":"result","subtype":"success","is_error":true,"result":"bad token sk-ant-oat01-AbCdEf123456 for ya29.a0AfB_xyz123 and Bearer abcdefghijklmnop"}`))
	if len(evs) != 1 || !evs[0].IsError {
		t.Fatalf("got %s", dump(evs))
	}
	for _, secret := range []string{"sk-ant-oat01", "ya29.a0", "abcdefghijklmnop"} {
		if strings.Contains(evs[0].Message, secret) {
			t.Errorf("message %q carries %q", evs[0].Message, secret)
		}
	}
}

// TestClaudeErrorSubtype: error_* results with no result text fail with
// their errors list.
func TestClaudeErrorSubtype(t *testing.T) {
	p, _ := NewParser(FormatClaude)
	got := p.Line([]byte(`{"type":"result","subtype":"error_during_execution","is_error":true,"errors":["tool crashed","aborted"],"usage":{"input_tokens":0,"output_tokens":0}}`))
	if want := []Event{failed("tool crashed; aborted")}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %s, want %s", dump(got), dump(want))
	}
	got = p.Line([]byte(`{"type":"result","subtype":"error_max_turns","is_error":true}`))
	if want := []Event{failed("error_max_turns")}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %s, want %s", dump(got), dump(want))
	}
}

// FuzzParsers feeds arbitrary bytes, line by line, to every parser: none
// may panic, and every event must be well-formed and bounded.
func FuzzParsers(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.jsonl"))
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		for _, line := range bytes.Split(b, []byte("\n")) {
			f.Add(line)
		}
	}
	f.Add([]byte("plain text\n{\"type\":\"item.completed\",\"item\":null}\n{\"type\":\"user\",\"message\":{\"content\":7}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, format := range Formats() {
			p, err := NewParser(format)
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range bytes.Split(data, []byte("\n")) {
				for _, e := range p.Line(line) {
					checkEvent(t, e)
				}
			}
		}
	})
}

func checkEvent(t *testing.T, e Event) {
	t.Helper()
	switch e.Type {
	case TypeOutput:
	case TypeTool:
		if e.Tool == nil {
			t.Fatal("tool event without Tool")
		}
		if e.Tool.Phase != PhaseCall && e.Tool.Phase != PhaseResult {
			t.Fatalf("tool phase %q", e.Tool.Phase)
		}
		if len(e.Tool.Input) > MaxField || len(e.Tool.Output) > MaxField {
			t.Fatalf("tool fields not bounded: %d, %d", len(e.Tool.Input), len(e.Tool.Output))
		}
	case TypeUsage:
		if e.Usage == nil {
			t.Fatal("usage event without Usage")
		}
	case TypeResult:
		if len(e.Message) > MaxField {
			t.Fatalf("message not bounded: %d", len(e.Message))
		}
	default:
		t.Fatalf("event type %q", e.Type)
	}
	for _, s := range []string{e.Text, e.Message} {
		if !utf8.ValidString(s) {
			t.Fatalf("invalid UTF-8 in %q", s)
		}
	}
}
