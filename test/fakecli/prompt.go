package main

// Non-interactive prompt runs of the fake claude and gemini: the argv the
// real pinned CLIs take, the credential and trust checks they make first,
// and their stream-json output in its real shape (see
// internal/prompt/cliout/FORMATS.md), so hangar's prompt path — delivery,
// argv, parsing, failure messages — can be tested with no network. The
// answer is deterministic and names the prompt (reversed), so tests can
// assert it came through.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// promptOpts is one parsed prompt invocation.
type promptOpts struct {
	prompt  string
	format  string // text, json, stream-json
	model   string
	verbose bool   // claude: stream-json requires it
	trusted bool   // gemini: --skip-trust
	cwd     string // where the "ls" tool call looks
}

func reverse(s string) string {
	r := []rune(s)
	for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
		r[i], r[j] = r[j], r[i]
	}
	return string(r)
}

// fakeClaudeAnswer and fakeGeminiAnswer are the fakes' final answers.
func fakeClaudeAnswer(prompt string) string { return "fake-claude answer: " + reverse(prompt) }
func fakeGeminiAnswer(prompt string) string { return "fake-gemini answer: " + reverse(prompt) }

// id derives a stable id-like string from the prompt and a label: the real
// CLIs print random UUIDs; stable ones keep the fakes' output reproducible.
func id(prompt, label string, n int) string {
	h := sha256.Sum256([]byte(label + "\x00" + prompt))
	return hex.EncodeToString(h[:])[:n]
}

func uuid(prompt, label string) string {
	s := id(prompt, label, 32)
	return s[:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:]
}

// listDir is what the fakes' "ls" tool call returns: the names in dir,
// sorted, one a line (like ls).
func listDir(dir string) []string {
	ents, _ := os.ReadDir(dir)
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names
}

// emit prints v as one JSON line, as the CLIs' stream-json writers do
// (JSON.stringify: no HTML escaping of <, >, &).
func emit(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

type obj = map[string]any

// isPromptRun reports whether args ask for a non-interactive run: claude's
// -p/--print flag, gemini's -p/--prompt option. Anything else is the login
// behaviour the fakes had before.
func isPromptRun(args []string) bool {
	for _, a := range args {
		if a == "-p" || a == "--print" || a == "--prompt" || strings.HasPrefix(a, "--prompt=") {
			return true
		}
		if a == "--" {
			break
		}
	}
	return false
}

// claudeValueFlags are the claude 2.1.332 options that take a value (from
// its --help); the prompt is the first argument that is neither an option
// nor an option's value.
var claudeValueFlags = map[string]bool{
	"--output-format": true, "--input-format": true, "--model": true, "--permission-mode": true,
	"--permission-prompts": true, "--max-budget-usd": true, "--allowedTools": true, "--allowed-tools": true,
	"--disallowedTools": true, "--disallowed-tools": true, "--tools": true, "--settings": true,
	"--session-id": true, "--fallback-model": true, "--append-system-prompt": true, "--system-prompt": true,
	"--effort": true, "--add-dir": true, "--mcp-config": true, "--agent": true, "--agents": true,
	"--json-schema": true, "--setting-sources": true, "--debug-file": true, "-n": true, "--name": true,
}

func parseClaudeArgs(args []string) (promptOpts, error) {
	o := promptOpts{format: "text"}
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(a, "=")
		switch {
		case a == "--":
			// Everything after "--" is positional, so a prompt may start
			// with a dash.
			if i+1 < len(args) && o.prompt == "" {
				o.prompt = args[i+1]
			}
			i = len(args)
		case a == "-p" || a == "--print":
		case a == "--verbose":
			o.verbose = true
		case strings.HasPrefix(a, "-") && claudeValueFlags[name]:
			if !hasVal {
				if i+1 >= len(args) {
					return o, fmt.Errorf("option '%s' argument missing", name)
				}
				i++
				val = args[i]
			}
			switch name {
			case "--output-format":
				o.format = val
			case "--model":
				o.model = val
			}
		case strings.HasPrefix(a, "-"):
			// boolean options (--dangerously-skip-permissions, …)
		case o.prompt == "":
			o.prompt = a
		}
	}
	switch o.format {
	case "text", "json", "stream-json":
	default:
		return o, fmt.Errorf("option '--output-format <format>' argument '%s' is invalid. Allowed choices are text, json, stream-json.", o.format)
	}
	return o, nil
}

// claudePrompt is `claude -p PROMPT [--output-format F] [--verbose] [--model M]`.
func claudePrompt(args []string) (code int) {
	o, err := parseClaudeArgs(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	if o.format == "stream-json" && !o.verbose {
		// The real message and exit code of 2.1.332.
		fmt.Fprintln(os.Stderr, "Error: When using --print, --output-format=stream-json requires --verbose")
		return 1
	}
	if o.prompt == "" {
		b, _ := io.ReadAll(os.Stdin)
		o.prompt = strings.TrimSpace(string(b))
	}
	if o.prompt == "" {
		fmt.Fprintln(os.Stderr, "Error: Input must be provided either through stdin or as a prompt argument when using --print")
		return 1
	}
	o.cwd, _ = os.Getwd()
	home, _ := os.UserHomeDir()
	if !claudeLoggedIn(home) {
		claudeNotLoggedIn(os.Stdout, o)
		return 1
	}
	claudeSession(os.Stdout, o)
	return 0
}

// claudeLoggedIn is the check the fake makes before a run: the credential
// file exists and holds an OAuth access token.
func claudeLoggedIn(home string) bool {
	b, err := os.ReadFile(filepath.Join(home, ".claude", ".credentials.json"))
	if err != nil {
		return false
	}
	var c struct {
		ClaudeAiOauth struct {
			AccessToken string `json:"accessToken"`
		} `json:"claudeAiOauth"`
	}
	return json.Unmarshal(b, &c) == nil && c.ClaudeAiOauth.AccessToken != ""
}

func claudeModel(o promptOpts) string {
	if o.model != "" {
		return o.model
	}
	return "claude-opus-5-5"
}

// claudeInit is the system/init line (the real one lists far more).
func claudeInit(o promptOpts, session string) obj {
	return obj{
		"type": "system", "subtype": "init", "cwd": o.cwd, "session_id": session,
		"tools": []string{"Task", "Bash", "Edit", "Read", "WebFetch", "WebSearch", "Write"}, "mcp_servers": []any{},
		"model": claudeModel(o), "permissionMode": "default", "slash_commands": []string{"compact", "context", "init"},
		"apiKeySource": "none", "claude_code_version": "2.1.332", "output_style": "default",
		"agents": []string{"general-purpose", "Explore", "Plan"}, "skills": []any{}, "plugins": []any{},
		"uuid": uuid(o.prompt, "claude-init"),
	}
}

func claudeUsage(in, cacheWrite, cacheRead, out int) obj {
	return obj{
		"input_tokens": in, "cache_creation_input_tokens": cacheWrite, "cache_read_input_tokens": cacheRead,
		"output_tokens": out, "server_tool_use": obj{"web_search_requests": 0, "web_fetch_requests": 0},
		"service_tier": "standard", "cache_creation": obj{"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": cacheWrite},
	}
}

func claudeAssistant(o promptOpts, session, msgID, label string, block obj, usage obj) obj {
	return obj{
		"type": "assistant",
		"message": obj{
			"model": claudeModel(o), "id": msgID, "type": "message", "role": "assistant",
			"content": []obj{block}, "stop_reason": nil, "stop_sequence": nil, "usage": usage, "context_management": nil,
		},
		"parent_tool_use_id": nil, "session_id": session, "uuid": uuid(o.prompt, label),
	}
}

// claudeSession prints a successful stream-json session: init, a text
// block, a Bash `ls` tool_use, its tool_result, the answer, the result.
// Other output formats print what the real CLI prints for them.
func claudeSession(w io.Writer, o promptOpts) {
	answer := fakeClaudeAnswer(o.prompt)
	switch o.format {
	case "text":
		fmt.Fprintln(w, answer)
		return
	}
	session := uuid(o.prompt, "claude-session")
	msg1, msg2 := "msg_01"+id(o.prompt, "m1", 22), "msg_01"+id(o.prompt, "m2", 22)
	toolID := "toolu_01" + id(o.prompt, "tool", 22)
	listing := strings.Join(listDir(o.cwd), "\n")
	u1 := claudeUsage(3, 5120, 12034, 8)
	result := obj{
		"type": "result", "subtype": "success", "is_error": false, "duration_ms": 6843, "duration_api_ms": 6102,
		"num_turns": 2, "result": answer, "stop_reason": "end_turn", "session_id": session, "total_cost_usd": 0.0412575,
		"usage": claudeUsage(9, 5300, 29188, 61),
		"modelUsage": obj{claudeModel(o): obj{
			"inputTokens": 9, "outputTokens": 61, "cacheReadInputTokens": 29188, "cacheCreationInputTokens": 5300,
			"webSearchRequests": 0, "costUSD": 0.0412575, "contextWindow": 200000,
		}},
		"permission_denials": []any{}, "terminal_reason": "completed", "uuid": uuid(o.prompt, "claude-result"),
	}
	if o.format == "json" {
		emit(w, result)
		return
	}
	emit(w, claudeInit(o, session))
	emit(w, claudeAssistant(o, session, msg1, "a1", obj{"type": "text", "text": "I'll list the files in the working directory first."}, u1))
	emit(w, claudeAssistant(o, session, msg1, "a2", obj{"type": "tool_use", "id": toolID, "name": "Bash",
		"input": obj{"command": "ls", "description": "List files in the working directory"}}, u1))
	emit(w, obj{
		"type": "user",
		"message": obj{"role": "user", "content": []obj{{
			"tool_use_id": toolID, "type": "tool_result", "content": listing, "is_error": false,
		}}},
		"parent_tool_use_id": nil, "session_id": session, "uuid": uuid(o.prompt, "u1"),
		"timestamp":       time.Now().UTC().Format("2006-01-02T15:04:05.000Z"),
		"tool_use_result": obj{"stdout": listing, "stderr": "", "interrupted": false, "isImage": false, "noOutputExpected": false},
	})
	emit(w, claudeAssistant(o, session, msg2, "a3", obj{"type": "text", "text": answer}, claudeUsage(6, 180, 17154, 14)))
	emit(w, result)
}

// claudeNotLoggedIn prints what claude 2.1.332 prints with no credentials
// (observed): init, a synthetic assistant message flagged
// error "authentication_failed", and a result with subtype "success" but
// is_error true. The exit code is 1.
func claudeNotLoggedIn(w io.Writer, o promptOpts) {
	const text = "Not logged in · Please run /login"
	session := uuid(o.prompt, "claude-session")
	zero := claudeUsage(0, 0, 0, 0)
	switch o.format {
	case "text":
		fmt.Fprintln(w, text)
		return
	case "stream-json":
		emit(w, claudeInit(o, session))
		emit(w, obj{
			"type": "assistant",
			"message": obj{
				"id": uuid(o.prompt, "claude-err"), "container": nil, "model": "<synthetic>", "role": "assistant",
				"stop_reason": "stop_sequence", "stop_sequence": "", "type": "message", "usage": zero,
				"content": []obj{{"type": "text", "text": text}}, "context_management": nil,
			},
			"parent_tool_use_id": nil, "session_id": session, "uuid": uuid(o.prompt, "a-err"),
			"timestamp": time.Now().UTC().Format("2006-01-02T15:04:05.000Z"),
			"error":     "authentication_failed", "is_api_error_message": true,
		})
	}
	emit(w, obj{
		"type": "result", "subtype": "success", "is_error": true, "duration_ms": 466, "duration_api_ms": 0,
		"num_turns": 1, "result": text, "stop_reason": "stop_sequence", "session_id": session, "total_cost_usd": 0,
		"usage": zero, "modelUsage": obj{}, "permission_denials": []any{}, "terminal_reason": "api_error",
		"api_error_status": nil, "uuid": uuid(o.prompt, "claude-result"),
	})
}

func parseGeminiArgs(args []string) (promptOpts, error) {
	o := promptOpts{format: "text", trusted: os.Getenv("GEMINI_CLI_TRUST_WORKSPACE") == "true"}
	for i := 0; i < len(args); i++ {
		name, val, hasVal := strings.Cut(args[i], "=")
		var dst *string
		switch name {
		case "-p", "--prompt":
			dst = &o.prompt
		case "-o", "--output-format":
			dst = &o.format
		case "-m", "--model":
			dst = &o.model
		case "--approval-mode":
			dst = new(string)
		case "--skip-trust":
			o.trusted = true
		}
		if dst == nil {
			continue
		}
		if !hasVal {
			// yargs takes no separate value that starts with a dash, so
			// `-p "-x"` fails in the real CLI too; `--prompt=-x` works.
			if i+1 >= len(args) || strings.HasPrefix(args[i+1], "-") {
				return o, fmt.Errorf("Not enough arguments following: %s", strings.TrimLeft(name, "-"))
			}
			i++
			val = args[i]
		}
		*dst = val
	}
	switch o.format {
	case "text", "json", "stream-json":
	default:
		return o, fmt.Errorf("Invalid values:\n  Argument: output-format, Given: %q, Choices: \"text\", \"json\", \"stream-json\"", o.format)
	}
	return o, nil
}

// geminiPrompt is `gemini -p PROMPT [-o F] [-m M] [--skip-trust]`. Like
// gemini-cli 0.61.0 it authenticates first (exit 41 with the message on
// stderr and nothing on stdout when there is no usable login — the real
// CLI also ends up here when it cannot reach Google to check a cached
// token), then refuses an untrusted workspace (exit 55).
func geminiPrompt(args []string) int {
	o, err := parseGeminiArgs(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	home, _ := os.UserHomeDir()
	if !geminiLoggedIn(home) {
		fmt.Fprintln(os.Stderr, "Manual authorization is required but the current session is non-interactive. Please run the Gemini CLI in an interactive terminal to log in, provide a GEMINI_API_KEY, or ensure Application Default Credentials are configured.")
		return 41
	}
	if !o.trusted {
		fmt.Fprintln(os.Stderr, "Gemini CLI is not running in a trusted directory. To proceed, either use `--skip-trust`, set the `GEMINI_CLI_TRUST_WORKSPACE=true` environment variable, or trust this directory in interactive mode. For more details, see https://geminicli.com/docs/cli/trusted-folders/#headless-and-automated-environments")
		return 55
	}
	o.cwd, _ = os.Getwd()
	geminiSession(os.Stdout, o)
	return 0
}

// geminiLoggedIn: ~/.gemini/oauth_creds.json exists and holds a token.
func geminiLoggedIn(home string) bool {
	b, err := os.ReadFile(filepath.Join(home, ".gemini", "oauth_creds.json"))
	if err != nil {
		return false
	}
	var c struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
	}
	return json.Unmarshal(b, &c) == nil && (c.AccessToken != "" || c.RefreshToken != "")
}

// geminiSession prints a successful run: stream-json's init, the user
// message echo, assistant deltas, a list_directory tool_use and its
// tool_result, the answer in deltas, and a result with stats.
func geminiSession(w io.Writer, o promptOpts) {
	answer := fakeGeminiAnswer(o.prompt)
	model := o.model
	if model == "" {
		model = "gemini-3.1-pro-preview"
	}
	stats := obj{
		"total_tokens": 18411, "input_tokens": 18190, "output_tokens": 61, "cached": 12288, "input": 5902,
		"duration_ms": 5201, "tool_calls": 1,
		"models": obj{model: obj{"total_tokens": 18411, "input_tokens": 18190, "output_tokens": 61, "cached": 12288, "input": 5902}},
	}
	switch o.format {
	case "text":
		fmt.Fprintln(w, answer)
		return
	case "json":
		b, _ := json.MarshalIndent(obj{"session_id": uuid(o.prompt, "gemini-session"), "response": answer, "stats": stats}, "", "  ")
		fmt.Fprintln(w, string(b))
		return
	}
	ts := func() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000Z") }
	initModel := o.model
	if initModel == "" {
		initModel = "auto"
	}
	toolID := "list_directory-" + id(o.prompt, "gemini-tool", 16)
	emit(w, obj{"type": "init", "timestamp": ts(), "session_id": uuid(o.prompt, "gemini-session"), "model": initModel})
	emit(w, obj{"type": "message", "timestamp": ts(), "role": "user", "content": o.prompt})
	for _, d := range []string{"I'll list the ", "directory first."} {
		emit(w, obj{"type": "message", "timestamp": ts(), "role": "assistant", "content": d, "delta": true})
	}
	emit(w, obj{"type": "tool_use", "timestamp": ts(), "tool_name": "list_directory", "tool_id": toolID, "parameters": obj{"dir_path": "."}})
	emit(w, obj{"type": "tool_result", "timestamp": ts(), "tool_id": toolID, "status": "success",
		"output": fmt.Sprintf("Found %d item(s).", len(listDir(o.cwd)))})
	// The answer arrives in two deltas, split inside the text.
	half := len([]rune(answer)) / 2
	for _, d := range []string{string([]rune(answer)[:half]), string([]rune(answer)[half:])} {
		emit(w, obj{"type": "message", "timestamp": ts(), "role": "assistant", "content": d, "delta": true})
	}
	emit(w, obj{"type": "result", "timestamp": ts(), "status": "success", "stats": stats})
}
