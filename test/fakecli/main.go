// Command fakecli reproduces the observable login behaviour of the real
// CLIs hangar drives — codex, claude and gemini — for tests that cannot
// reach the internet: the same commands, prompts, printed URLs (pointing at
// the real providers' hosts), local callback listeners with state checks,
// and credential files at the real paths with the real shapes. It picks the
// CLI by the name it is called as (install it as /usr/local/bin/codex etc.).
//
// `claude -p PROMPT …` and `gemini -p PROMPT …` run a prompt instead:
// they print the real CLIs' stream-json output (prompt.go).
//
// `fakecli get URL` fetches a URL and prints the answer: tests use it inside
// a VM to play the provider's redirect to the CLI's callback listener.
//
// The facts reproduced are in ../shared/notes/browser-and-cli-logins.md.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if name == "fakecli" && len(args) > 0 {
		name, args = args[0], args[1:]
	}
	var err error
	switch name {
	case "get":
		err = get(args)
	case "codex":
		err = codex(args)
	case "claude":
		if isPromptRun(args) {
			os.Exit(claudePrompt(args))
		}
		err = claude(args)
	case "gemini":
		if isPromptRun(args) {
			os.Exit(geminiPrompt(args))
		}
		err = gemini()
	default:
		err = fmt.Errorf("fakecli: unknown CLI %q", name)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func get(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: fakecli get URL")
	}
	resp, err := http.Get(args[0])
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}

func random(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// writeJSON writes v to path (mode 0600, parents 0700) atomically.
func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// callback serves OAuth redirects on ln at path and sends each good code,
// refusing (and waiting on after) a wrong state. Like the real CLIs, the
// browser gets its answer before the CLI moves on: call finish before
// exiting so the answer is not cut off.
func callback(ln net.Listener, path, state string, codes chan<- string) (finish func()) {
	mux := http.NewServeMux()
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("state") != state {
			http.Error(w, "State mismatch", http.StatusBadRequest)
			return
		}
		fmt.Fprintln(w, "Authentication successful. You can close this window.")
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		codes <- q.Get("code")
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}
}

// codex: `codex login` listens on 127.0.0.1:1455, prints the URL on
// stderr, exchanges the code, writes ~/.codex/auth.json, prints
// "Successfully logged in" and exits 0.
func codex(args []string) error {
	if len(args) == 0 || args[0] != "login" {
		return errors.New("fake codex only knows `codex login`")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:1455")
	if err != nil {
		return fmt.Errorf("Port 127.0.0.1:1455 is already in use: %w", err)
	}
	state := random(32)
	q := url.Values{
		"response_type": {"code"}, "client_id": {"app_EMoamEEZ73f0CkXaXp7hrann"},
		"redirect_uri": {"http://127.0.0.1:1455/auth/callback"}, "scope": {"openid profile email offline_access"},
		"code_challenge": {random(16)}, "code_challenge_method": {"S256"}, "id_token_add_organizations": {"true"},
		"codex_cli_simplified_flow": {"true"}, "state": {state}, "originator": {"codex_cli_rs"},
	}
	fmt.Fprintf(os.Stderr, "Starting local login server on http://127.0.0.1:1455.\nIf your browser did not open, navigate to this URL to authenticate:\n\nhttps://auth.openai.com/oauth/authorize?%s\n", q.Encode())
	codes := make(chan string, 1)
	finish := callback(ln, "/auth/callback", state, codes)
	code := <-codes
	defer finish()
	home, _ := os.UserHomeDir()
	err = writeJSON(filepath.Join(home, ".codex", "auth.json"), map[string]any{
		"auth_mode": "chatgpt", "OPENAI_API_KEY": nil,
		"tokens": map[string]any{
			"id_token": "eyJfake." + random(8), "access_token": "fake-codex-access-" + code + "-" + random(12),
			"refresh_token": "fake-codex-refresh-" + random(12), "account_id": "acct_fake123",
		},
		"last_refresh": time.Now().UTC().Format(time.RFC3339),
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "Successfully logged in")
	return nil
}

// claude: `claude auth login` prints the URL on stdout, listens on a random
// localhost port, and also prompts "Paste code here if prompted > " for a
// code#state from the manual page; writes ~/.claude/.credentials.json.
func claude(args []string) error {
	if len(args) < 2 || args[0] != "auth" || args[1] != "login" {
		return errors.New("fake claude only knows `claude auth login`")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	state := random(16)
	q := url.Values{
		"code": {"true"}, "client_id": {"9d1c250a-e61b-44d9-88ed-5944d1962f5e"}, "response_type": {"code"},
		"redirect_uri": {fmt.Sprintf("http://localhost:%d/callback", port)}, "scope": {"org:create_api_key user:profile user:inference"},
		"code_challenge": {random(16)}, "code_challenge_method": {"S256"}, "state": {state},
	}
	fmt.Printf("Opening browser to sign in…\nBrowser didn't open? Use the url below to sign in:\n\nhttps://claude.ai/oauth/authorize?%s\n\n", q.Encode())
	codes := make(chan string, 2)
	finish := callback(ln, "/callback", state, codes)
	defer finish()
	go func() {
		in := bufio.NewReader(os.Stdin)
		for {
			fmt.Print("Paste code here if prompted > ")
			line, err := in.ReadString('\n')
			if err != nil && line == "" {
				return
			}
			line = strings.TrimSpace(strings.TrimRight(line, "\r"))
			c, s, _ := strings.Cut(line, "#")
			if s != state {
				fmt.Println("\nInvalid code. Please make sure the full code was copied")
				continue
			}
			codes <- c
			return
		}
	}()
	code := <-codes
	home, _ := os.UserHomeDir()
	err = writeJSON(filepath.Join(home, ".claude", ".credentials.json"), map[string]any{
		"claudeAiOauth": map[string]any{
			"accessToken": "sk-ant-oat01-fake-" + code + "-" + random(12), "refreshToken": "sk-ant-ort01-fake-" + random(12),
			"expiresAt": time.Now().Add(8 * time.Hour).UnixMilli(), "scopes": []string{"user:inference", "user:profile"},
			"subscriptionType": "max", "rateLimitTier": "default_claude_max_20x",
		},
	})
	if err != nil {
		return err
	}
	fmt.Println("\nLogin successful. Press Enter to continue…")
	return nil
}

// gemini: interactive `gemini` with the oauth-personal auth type asks for
// consent, prints the URL, waits for the callback (or, with NO_BROWSER,
// for a pasted code), writes ~/.gemini/oauth_creds.json and stays open.
func gemini() error {
	in := bufio.NewReader(os.Stdin)
	noBrowser := os.Getenv("NO_BROWSER") == "true"
	state := random(32)
	q := url.Values{
		"access_type": {"offline"}, "scope": {"https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile"},
		"state": {state}, "response_type": {"code"}, "client_id": {"681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"},
	}
	codes := make(chan string, 1)
	if noBrowser {
		q.Set("redirect_uri", "https://codeassist.google.com/authcode")
		q.Set("code_challenge_method", "S256")
		q.Set("code_challenge", random(16))
		fmt.Printf("Please visit the following URL to authorize the application:\n\nhttps://accounts.google.com/o/oauth2/v2/auth?%s\n\nEnter the authorization code: ", q.Encode())
		line, _ := in.ReadString('\n')
		codes <- strings.TrimSpace(strings.TrimRight(line, "\r"))
	} else {
		fmt.Print("Opening authentication page in your browser. Do you want to continue? [Y/n]: ")
		ans, _ := in.ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(ans)); a != "" && a != "y" && a != "yes" {
			return errors.New("authentication cancelled")
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		q.Set("redirect_uri", fmt.Sprintf("http://127.0.0.1:%d/oauth2callback", ln.Addr().(*net.TCPAddr).Port))
		fmt.Printf("\n\nCode Assist login required.\nAttempting to open authentication page in your browser.\nOtherwise navigate to:\n\nhttps://accounts.google.com/o/oauth2/v2/auth?%s\n\n\nWaiting for authentication...\n", q.Encode())
		defer callback(ln, "/oauth2callback", state, codes)()
	}
	code := <-codes
	home, _ := os.UserHomeDir()
	err := writeJSON(filepath.Join(home, ".gemini", "oauth_creds.json"), map[string]any{
		"access_token": "ya29.fake-" + code + "-" + random(12), "refresh_token": "1//fake-" + random(12),
		"scope": "https://www.googleapis.com/auth/cloud-platform", "token_type": "Bearer",
		"id_token": "eyJfake." + random(8), "expiry_date": time.Now().Add(time.Hour).UnixMilli(),
	})
	if err != nil {
		return err
	}
	fmt.Println("Authentication succeeded")
	// The real CLI stays in its interactive UI; so does this one.
	_, _ = io.Copy(io.Discard, in)
	select {}
}
