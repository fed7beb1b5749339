// Package login runs browser logins for the CLIs hangar hosts: a session
// boots a throwaway browser VM, starts the provider's login command there
// under a PTY, answers its prompts, opens the OAuth URL it prints in the
// VM's Chromium (which the user drives through the live view), captures the
// credential files the CLI writes, seals them, and destroys the VM through
// the durable task queue.
//
// What differs between providers is data: one JSON recipe per provider in
// providers/, documented in providers/README.md.
package login

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"sort"
	"strings"
)

//go:embed providers/*.json
var recipeFS embed.FS

// Command is a program the driver runs in the VM.
type Command struct {
	Argv []string          `json:"argv"`
	Env  map[string]string `json:"env,omitempty"`
	// User runs it; the browser VM's unprivileged "hangar" by default.
	User string `json:"user,omitempty"`
}

// Prompt is a question the CLI asks and the answer the driver types.
type Prompt struct {
	// Match is a regular expression over the CLI's output (ANSI stripped).
	Match string `json:"match"`
	// Answer is typed as is; end it with \r for Enter.
	Answer string `json:"answer"`
	re     *regexp.Regexp
}

// CredentialFile is a file the CLI writes when the login succeeds.
type CredentialFile struct {
	// Path is absolute inside the VM (~ is /home/hangar).
	Path string `json:"path"`
	// Required files must exist for the login to count.
	Required bool `json:"required"`
	// JSON files must parse; RequiredFields (dotted paths) must be set.
	JSON           bool     `json:"json"`
	RequiredFields []string `json:"required_fields,omitempty"`
}

// Metadata says where the credential file names the account, expiry and
// plan (dotted JSON paths into the first credential file).
type Metadata struct {
	Account string `json:"account,omitempty"`
	Expiry  string `json:"expiry,omitempty"`
	// ExpiryUnit is rfc3339, unix_ms or unix_s.
	ExpiryUnit string `json:"expiry_unit,omitempty"`
	Plan       string `json:"plan,omitempty"`
}

// Recipe describes one provider's login.
type Recipe struct {
	Name        string `json:"name"`
	DisplayName string `json:"display_name"`
	// Version changes whenever the recipe does; it is recorded with each
	// captured credential.
	Version int `json:"version"`
	// CLIVersion is the pinned CLI version the recipe was checked against.
	CLIVersion string `json:"cli_version,omitempty"`
	// Modes the provider supports: browser, paste, device.
	Modes []string `json:"modes"`
	// Login is the command of browser mode; PasteLogin and DeviceLogin
	// those of the other modes (Login when absent).
	Login       Command  `json:"login"`
	PasteLogin  *Command `json:"paste_login,omitempty"`
	DeviceLogin *Command `json:"device_login,omitempty"`
	// URLPattern finds the OAuth URL in the output (first match wins).
	URLPattern string `json:"url_pattern"`
	// DeviceCodePattern finds the one-time code in device mode (group 1).
	DeviceCodePattern string `json:"device_code_pattern,omitempty"`
	// PastePattern recognises the prompt that waits for a pasted code.
	PastePattern string   `json:"paste_pattern,omitempty"`
	Prompts      []Prompt `json:"prompts,omitempty"`
	// Success recognises the CLI's success message; with it the driver
	// does not wait for the CLI to exit (interactive CLIs stay open).
	SuccessPattern string           `json:"success_pattern,omitempty"`
	Credentials    []CredentialFile `json:"credentials"`
	Metadata       Metadata         `json:"metadata"`
	// Prompt runs one prompt non-interactively in a CLI VM.
	Prompt PromptCommand `json:"prompt"`
	// APIHosts are the hosts the CLI talks to when it runs a prompt; a
	// CLI VM's egress policy must reach them (see the README, Network).
	APIHosts []string `json:"api_hosts,omitempty"`

	urlRE, deviceRE, pasteRE, successRE *regexp.Regexp
}

// PromptCommand runs one prompt non-interactively. In Argv, "{{prompt}}"
// is replaced by the prompt text (inside one argument, such as
// "--prompt={{prompt}}", never through a shell) and an argument
// "{{model_args}}" by ModelArgs with "{{model}}" replaced when the caller
// asked for a model, or by nothing. The CLI's stdin is closed at start.
type PromptCommand struct {
	Argv      []string          `json:"argv"`
	ModelArgs []string          `json:"model_args,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	// User runs it; "hangar" (uid 1000, home /home/hangar) by default.
	User string `json:"user,omitempty"`
	// Format names the parser of the CLI's stdout (internal/prompt/cliout):
	// codex-jsonl, claude-stream-json, gemini-stream-json, dev-jsonl, text.
	Format string `json:"format"`
	// Failures classify a failed run by its output (ANSI stripped, stdout
	// and stderr): the first match decides the message the user sees.
	Failures []FailurePattern `json:"failures,omitempty"`
}

// FailurePattern maps CLI output to a failure kind: "auth" (the login is
// no longer valid: log in again) or "unreachable" (the provider's API could
// not be reached).
type FailurePattern struct {
	Match string `json:"match"`
	Kind  string `json:"kind"`
	// Early stops the CLI as soon as one line of its output matches,
	// instead of waiting for it to give up (codex retries a missing
	// network forever).
	Early bool `json:"early,omitempty"`
	re    *regexp.Regexp
}

// Args builds the prompt's argv.
func (c PromptCommand) Args(prompt, model string) []string {
	var out []string
	for _, a := range c.Argv {
		switch a {
		case "{{model_args}}":
			if model != "" {
				for _, m := range c.ModelArgs {
					out = append(out, strings.ReplaceAll(m, "{{model}}", model))
				}
			}
		default:
			out = append(out, strings.ReplaceAll(a, "{{prompt}}", prompt))
		}
	}
	return out
}

// EarlyFailure returns the kind of the first early failure pattern that
// matches one line of output, or "".
func (c PromptCommand) EarlyFailure(line string) string {
	for _, f := range c.Failures {
		if f.Early && f.re != nil && f.re.MatchString(line) {
			return f.Kind
		}
	}
	return ""
}

// Classify returns the kind of the first failure pattern matching output,
// or "".
func (c PromptCommand) Classify(output string) string {
	for _, f := range c.Failures {
		if f.re != nil && f.re.MatchString(output) {
			return f.Kind
		}
	}
	return ""
}

// Recipes are the built-in providers, by name.
type Recipes map[string]*Recipe

// LoadRecipes reads and checks the embedded recipes.
func LoadRecipes() (Recipes, error) {
	out := Recipes{}
	err := fs.WalkDir(recipeFS, "providers", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".json") {
			return err
		}
		b, err := recipeFS.ReadFile(path)
		if err != nil {
			return err
		}
		r, err := ParseRecipe(b)
		if err != nil {
			return fmt.Errorf("recipe %s: %w", path, err)
		}
		out[r.Name] = r
		return nil
	})
	return out, err
}

// Names lists the providers in order.
func (rs Recipes) Names() []string {
	var names []string
	for n := range rs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ParseRecipe reads one recipe and compiles its patterns.
func ParseRecipe(b []byte) (*Recipe, error) {
	var r Recipe
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, err
	}
	if r.Name == "" || r.Version < 1 || len(r.Login.Argv) == 0 || r.URLPattern == "" || len(r.Credentials) == 0 || len(r.Modes) == 0 {
		return nil, fmt.Errorf("name, version, modes, login.argv, url_pattern and credentials are required")
	}
	if len(r.Prompt.Argv) == 0 || r.Prompt.Format == "" || !slices.ContainsFunc(r.Prompt.Argv, func(a string) bool { return strings.Contains(a, "{{prompt}}") }) {
		return nil, fmt.Errorf("prompt.argv (with a {{prompt}} argument) and prompt.format are required")
	}
	var err error
	compile := func(p string) *regexp.Regexp {
		if p == "" || err != nil {
			return nil
		}
		var re *regexp.Regexp
		re, err = regexp.Compile(p)
		return re
	}
	r.urlRE, r.deviceRE, r.pasteRE, r.successRE = compile(r.URLPattern), compile(r.DeviceCodePattern), compile(r.PastePattern), compile(r.SuccessPattern)
	for i := range r.Prompts {
		r.Prompts[i].re = compile(r.Prompts[i].Match)
	}
	for i := range r.Prompt.Failures {
		r.Prompt.Failures[i].re = compile(r.Prompt.Failures[i].Match)
		if k := r.Prompt.Failures[i].Kind; k != "auth" && k != "unreachable" && err == nil {
			err = fmt.Errorf("prompt failure kind %q: want auth or unreachable", k)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("pattern: %w", err)
	}
	for _, m := range r.Modes {
		switch m {
		case "browser", "paste", "device":
		default:
			return nil, fmt.Errorf("mode %q: want browser, paste or device", m)
		}
	}
	return &r, nil
}

// Supports reports whether the recipe has mode.
func (r *Recipe) Supports(mode string) bool {
	for _, m := range r.Modes {
		if m == mode {
			return true
		}
	}
	return false
}

// command returns the command of mode.
func (r *Recipe) command(mode string) Command {
	switch {
	case mode == "paste" && r.PasteLogin != nil:
		return *r.PasteLogin
	case mode == "device" && r.DeviceLogin != nil:
		return *r.DeviceLogin
	}
	return r.Login
}

// lookup follows a dotted path into a decoded JSON document.
func lookup(doc any, path string) (any, bool) {
	if path == "" {
		return nil, false
	}
	cur := doc
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok {
			return nil, false
		}
	}
	return cur, cur != nil
}
