package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/hangar-vm/hangar/internal/prompt/cliout"
)

// parse runs the fake's output through the parser hangar uses for the CLI.
func parse(t *testing.T, format string, out []byte) []cliout.Event {
	t.Helper()
	p, err := cliout.NewParser(format)
	if err != nil {
		t.Fatal(err)
	}
	var evs []cliout.Event
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		evs = append(evs, p.Line(sc.Bytes())...)
	}
	return evs
}

func workdir(t *testing.T) string {
	dir := t.TempDir()
	for _, f := range []string{"main.go", "README.md"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func ev(typ, text string) cliout.Event { return cliout.Event{Type: typ, Text: text} }
func toolEv(t cliout.Tool) cliout.Event {
	return cliout.Event{Type: cliout.TypeTool, Tool: &t}
}
func usageEv(u cliout.Usage) cliout.Event {
	return cliout.Event{Type: cliout.TypeUsage, Usage: &u}
}

func TestClaudePromptParsed(t *testing.T) {
	o, err := parseClaudeArgs([]string{"-p", "list files", "--output-format", "stream-json", "--verbose", "--model", "sonnet"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (promptOpts{prompt: "list files", format: "stream-json", model: "sonnet", verbose: true}); o != want {
		t.Fatalf("parseClaudeArgs = %+v, want %+v", o, want)
	}
	o.cwd = workdir(t)
	var buf bytes.Buffer
	claudeSession(&buf, o)
	got := parse(t, cliout.FormatClaude, buf.Bytes())
	toolID := "toolu_01" + id(o.prompt, "tool", 22)
	want := []cliout.Event{
		ev(cliout.TypeOutput, "I'll list the files in the working directory first."),
		toolEv(cliout.Tool{Name: "Bash", ID: toolID, Phase: cliout.PhaseCall, Input: `{"command":"ls","description":"List files in the working directory"}`}),
		toolEv(cliout.Tool{Name: "Bash", ID: toolID, Phase: cliout.PhaseResult, Output: "README.md\nmain.go", Status: cliout.StatusCompleted}),
		ev(cliout.TypeOutput, "fake-claude answer: selif tsil"),
		usageEv(cliout.Usage{InputTokens: 9 + 5300 + 29188, OutputTokens: 61, CachedTokens: 29188, CostUSD: 0.0412575}),
		ev(cliout.TypeResult, "fake-claude answer: selif tsil"),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("events:\n got %+v\nwant %+v\noutput:\n%s", got, want, buf.String())
	}
}

func TestClaudeNotLoggedIn(t *testing.T) {
	home := t.TempDir()
	if claudeLoggedIn(home) {
		t.Fatal("logged in with no credential file")
	}
	path := filepath.Join(home, ".claude", ".credentials.json")
	if err := writeJSON(path, map[string]any{"claudeAiOauth": map[string]any{"refreshToken": "r"}}); err != nil {
		t.Fatal(err)
	}
	if claudeLoggedIn(home) {
		t.Fatal("logged in with no access token")
	}
	if err := writeJSON(path, map[string]any{"claudeAiOauth": map[string]any{"accessToken": "a"}}); err != nil {
		t.Fatal(err)
	}
	if !claudeLoggedIn(home) {
		t.Fatal("not logged in with an access token")
	}

	var buf bytes.Buffer
	claudeNotLoggedIn(&buf, promptOpts{prompt: "hi", format: "stream-json", verbose: true, cwd: t.TempDir()})
	got := parse(t, cliout.FormatClaude, buf.Bytes())
	want := []cliout.Event{{Type: cliout.TypeResult, IsError: true, Message: "Not logged in · Please run /login"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("events:\n got %+v\nwant %+v\noutput:\n%s", got, want, buf.String())
	}
}

func TestGeminiPromptParsed(t *testing.T) {
	o, err := parseGeminiArgs([]string{"-p", "list files", "-o", "stream-json", "-m", "gemini-3.1-pro-preview", "--skip-trust"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (promptOpts{prompt: "list files", format: "stream-json", model: "gemini-3.1-pro-preview", trusted: true}); o != want {
		t.Fatalf("parseGeminiArgs = %+v, want %+v", o, want)
	}
	o.cwd = workdir(t)
	var buf bytes.Buffer
	geminiSession(&buf, o)
	got := parse(t, cliout.FormatGemini, buf.Bytes())
	toolID := "list_directory-" + id(o.prompt, "gemini-tool", 16)
	want := []cliout.Event{
		ev(cliout.TypeOutput, "I'll list the "),
		ev(cliout.TypeOutput, "directory first."),
		toolEv(cliout.Tool{Name: "list_directory", ID: toolID, Phase: cliout.PhaseCall, Input: `{"dir_path":"."}`}),
		toolEv(cliout.Tool{Name: "list_directory", ID: toolID, Phase: cliout.PhaseResult, Output: "Found 2 item(s).", Status: cliout.StatusCompleted}),
		ev(cliout.TypeOutput, "fake-gemini ans"),
		ev(cliout.TypeOutput, "wer: selif tsil"),
		usageEv(cliout.Usage{InputTokens: 18190, OutputTokens: 61, CachedTokens: 12288}),
		ev(cliout.TypeResult, "fake-gemini answer: selif tsil"),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("events:\n got %+v\nwant %+v\noutput:\n%s", got, want, buf.String())
	}
}

func TestGeminiLoggedIn(t *testing.T) {
	home := t.TempDir()
	if geminiLoggedIn(home) {
		t.Fatal("logged in with no credential file")
	}
	if err := writeJSON(filepath.Join(home, ".gemini", "oauth_creds.json"), map[string]any{"refresh_token": "1//r"}); err != nil {
		t.Fatal(err)
	}
	if !geminiLoggedIn(home) {
		t.Fatal("not logged in with a refresh token")
	}
}

// TestPromptRunDispatch: prompt runs are told apart from the login
// behaviour by their -p/--print/--prompt argument.
func TestPromptRunDispatch(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want bool
	}{
		{[]string{"auth", "login"}, false},
		{nil, false},
		{[]string{"-p", "x", "--output-format", "stream-json", "--verbose"}, true},
		{[]string{"--print", "x"}, true},
		{[]string{"--prompt=x", "-o", "stream-json"}, true},
	} {
		if got := isPromptRun(tt.args); got != tt.want {
			t.Errorf("isPromptRun(%q) = %v, want %v", tt.args, got, tt.want)
		}
	}
	// hangar's recipe puts the prompt after "--".
	if o, err := parseClaudeArgs([]string{"-p", "--output-format", "stream-json", "--verbose", "--", "-v is a flag?"}); err != nil || o.prompt != "-v is a flag?" {
		t.Errorf("claude -- PROMPT: prompt %q, err %v", o.prompt, err)
	}
	if _, err := parseClaudeArgs([]string{"-p", "x", "--output-format", "xml"}); err == nil {
		t.Error("claude --output-format xml: want an error")
	}
	if _, err := parseGeminiArgs([]string{"-p"}); err == nil {
		t.Error("gemini -p without a value: want an error")
	}
	if _, err := parseGeminiArgs([]string{"-p", "-x"}); err == nil {
		t.Error("gemini -p -x: want an error, as yargs gives")
	}
	if o, err := parseGeminiArgs([]string{"-o", "stream-json", "--prompt=-x = y", "--skip-trust"}); err != nil || o.prompt != "-x = y" {
		t.Errorf("gemini --prompt=-x = y: prompt %q, err %v", o.prompt, err)
	}
}
