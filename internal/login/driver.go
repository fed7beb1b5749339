package login

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// Link is what the driver needs of the agent link (agentlink.Client).
type Link interface {
	StartExec(ctx context.Context, req proto.ExecRequest) (*agentlink.ExecSession, error)
	GetFile(ctx context.Context, path string, maxBytes int64, w io.Writer) (proto.FileStat, error)
	DialPort(ctx context.Context, port int) (net.Conn, error)
}

// Events are the driver's reports while a login runs.
type Events struct {
	// URL: the CLI printed its OAuth URL (and, in browser mode, the VM's
	// browser shows it).
	URL func(url string)
	// DeviceCode: the one-time code of device mode.
	DeviceCode func(code string)
	// WaitingForCode: the CLI waits for a pasted code.
	WaitingForCode func()
	// Capturing: the credential files are being read.
	Capturing func()
}

// Capture is what a successful login yields: each credential file's bytes
// by path. It is secret: never log it.
type Capture struct {
	Files map[string][]byte
}

// Driver runs one login in a VM.
type Driver struct {
	link   Link
	recipe *Recipe
	mode   string
	log    *slog.Logger
	// OpenURL opens the OAuth URL in the VM's browser (browser mode);
	// default: Chromium's DevTools endpoint on guest port 9222.
	OpenURL func(ctx context.Context, url string) error

	mu      sync.Mutex // guards session and typed
	session *agentlink.ExecSession
	// typed holds what was typed into the CLI (pasted codes); the PTY
	// echoes it, so it is cut from any output quoted in errors.
	typed []string
}

// NewDriver prepares a login of recipe in mode over link.
func NewDriver(link Link, recipe *Recipe, mode string, log *slog.Logger) *Driver {
	d := &Driver{link: link, recipe: recipe, mode: mode, log: log}
	d.OpenURL = d.openInChromium
	return d
}

// Input types text into the CLI (a pasted code); Enter is added.
func (d *Driver) Input(text string) error {
	text = strings.TrimRight(text, "\r\n")
	d.mu.Lock()
	s := d.session
	if len(text) >= 4 {
		d.typed = append(d.typed, text)
	}
	d.mu.Unlock()
	if s == nil {
		return errors.New("the login command is not running")
	}
	_, err := s.Write([]byte(text + "\r"))
	return err
}

// ansiRE matches terminal escape sequences (CSI, OSC, and two-byte ESC).
var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-Z\\-_]`)

// StripANSI removes terminal escape sequences from CLI output (the prompt
// runner classifies failures by what a CLI printed, as logins do).
func StripANSI(s string) string { return ansiRE.ReplaceAllString(s, "") }

// output collects the CLI's output and wakes the driver on every write.
type output struct {
	mu   sync.Mutex // guards buf
	buf  strings.Builder
	wake chan struct{}
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	// Never grow without bound: a chatty TUI redraws constantly.
	if o.buf.Len() > 1<<20 {
		s := o.buf.String()
		o.buf.Reset()
		o.buf.WriteString(s[len(s)-256<<10:])
	}
	o.buf.Write(p)
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

// text is the output so far with escape sequences removed and the PTY's
// carriage returns folded.
func (o *output) text() string {
	o.mu.Lock()
	s := o.buf.String()
	o.mu.Unlock()
	s = ansiRE.ReplaceAllString(s, "")
	return strings.ReplaceAll(s, "\r", "")
}

// tail is the last n non-empty lines of the output, for error messages.
func (o *output) tail(n int) string {
	lines := strings.Split(strings.TrimSpace(o.text()), "\n")
	var keep []string
	for i := len(lines) - 1; i >= 0 && len(keep) < n; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			keep = append([]string{l}, keep...)
		}
	}
	return strings.Join(keep, " | ")
}

// Run starts the login command and drives it until the credentials are
// captured or ctx ends.
func (d *Driver) Run(ctx context.Context, ev Events) (Capture, error) {
	cmd := d.recipe.command(d.mode)
	user := cmd.User
	if user == "" {
		user = "hangar"
	}
	env := map[string]string{"HOME": "/home/" + user, "TERM": "xterm-256color", "DISPLAY": ":99", "LANG": "C.UTF-8"}
	if user == "root" {
		env["HOME"] = "/root"
	}
	for k, v := range cmd.Env {
		env[k] = v
	}
	// A wide terminal keeps long URLs on one line.
	sess, err := d.link.StartExec(ctx, proto.ExecRequest{Argv: cmd.Argv, Env: env, User: user, PTY: &proto.PTYSize{Rows: 50, Cols: 1000}})
	if err != nil {
		return Capture{}, fmt.Errorf("start %s: %w", cmd.Argv[0], err)
	}
	defer sess.Close()
	d.mu.Lock()
	d.session = sess
	d.mu.Unlock()

	out := &output{wake: make(chan struct{}, 1)}
	type exit struct {
		st  proto.ExitStatus
		err error
	}
	exited := make(chan exit, 1)
	go func() {
		st, err := sess.Wait(out, out)
		exited <- exit{st, err}
	}()

	answered := make([]bool, len(d.recipe.Prompts))
	var sawURL, sawCode, sawPaste, succeeded bool
	var exitSt *proto.ExitStatus
	poll := time.NewTicker(500 * time.Millisecond)
	defer poll.Stop()
	for {
		text := out.text()
		for i, p := range d.recipe.Prompts {
			if !answered[i] && p.re.MatchString(text) {
				answered[i] = true
				d.log.Info("login: answering a prompt", "provider", d.recipe.Name, "prompt", p.Match)
				if _, err := sess.Write([]byte(p.Answer)); err != nil {
					return Capture{}, fmt.Errorf("answer prompt: %w", err)
				}
			}
		}
		if !sawURL {
			if u := d.recipe.urlRE.FindString(text); u != "" {
				sawURL = true
				d.log.Info("login: the CLI printed its OAuth URL", "provider", d.recipe.Name, "host", hostOf(u))
				if d.mode == "browser" {
					if err := d.OpenURL(ctx, u); err != nil {
						return Capture{}, fmt.Errorf("open the login page in the VM's browser: %w", err)
					}
				}
				if ev.URL != nil {
					ev.URL(u)
				}
			}
		}
		if !sawCode && d.mode == "device" && d.recipe.deviceRE != nil {
			if m := d.recipe.deviceRE.FindStringSubmatch(text); len(m) > 1 {
				sawCode = true
				if ev.DeviceCode != nil {
					ev.DeviceCode(m[1])
				}
			}
		}
		if !sawPaste && d.recipe.pasteRE != nil && d.recipe.pasteRE.MatchString(text) {
			sawPaste = true
			if ev.WaitingForCode != nil {
				ev.WaitingForCode()
			}
		}
		if d.recipe.successRE != nil && d.recipe.successRE.MatchString(text) {
			succeeded = true
		}
		if exitSt != nil || succeeded {
			if exitSt != nil && exitSt.ExitCode != 0 && !succeeded {
				return Capture{}, fmt.Errorf("the %s login command exited with code %d: %s", d.recipe.Name, exitSt.ExitCode, d.redact(out.tail(3)))
			}
			if ev.Capturing != nil {
				ev.Capturing()
			}
			c, err := d.capture(ctx)
			if err == nil {
				return c, nil
			}
			if exitSt != nil {
				// The CLI is gone and the files are not right: no point
				// waiting for them.
				return Capture{}, err
			}
			d.log.Info("login: success printed, waiting for the credential files", "provider", d.recipe.Name, "reason", err)
		}
		select {
		case <-ctx.Done():
			return Capture{}, ctx.Err()
		case x := <-exited:
			if x.err != nil {
				return Capture{}, fmt.Errorf("login command: %w", x.err)
			}
			exitSt = &x.st
		case <-out.wake:
		case <-poll.C:
		}
	}
}

// maxCredentialFileBytes bounds one credential file read from the guest.
// agentlink.Client.GetFile enforces it on the host (it copies at most
// cap+1 bytes and fails), so a hostile guest cannot make the daemon buffer
// more, whatever its agent answers.
const maxCredentialFileBytes = 1 << 20

// capture reads every credential file twice, half a second apart, and
// accepts them when they are complete and stable.
func (d *Driver) capture(ctx context.Context) (Capture, error) {
	read := func() (map[string][]byte, error) {
		files := map[string][]byte{}
		for _, f := range d.recipe.Credentials {
			var b bytes.Buffer
			if _, err := d.link.GetFile(ctx, f.Path, maxCredentialFileBytes, &b); err != nil {
				if f.Required {
					return nil, fmt.Errorf("credential file %s: %w", f.Path, err)
				}
				continue
			}
			if f.JSON {
				var doc any
				if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
					return nil, fmt.Errorf("credential file %s is not valid JSON", f.Path)
				}
				for _, field := range f.RequiredFields {
					if _, ok := lookup(doc, field); !ok {
						return nil, fmt.Errorf("credential file %s lacks %s", f.Path, field)
					}
				}
			}
			files[f.Path] = b.Bytes()
		}
		return files, nil
	}
	first, err := read()
	if err != nil {
		return Capture{}, err
	}
	select {
	case <-ctx.Done():
		return Capture{}, ctx.Err()
	case <-time.After(500 * time.Millisecond):
	}
	second, err := read()
	if err != nil {
		return Capture{}, err
	}
	for p, b := range first {
		if !bytes.Equal(b, second[p]) {
			return Capture{}, fmt.Errorf("credential file %s is still changing", p)
		}
	}
	return Capture{Files: second}, nil
}

// openTabTimeout bounds one DevTools request. Opening a tab makes Chromium
// start loading the page, which under emulation on a busy host has taken
// more than 20 s (a login then failed for no reason the user could act
// on); the whole login has its own, much longer deadline.
const openTabTimeout = 90 * time.Second

// openInChromium asks the VM's Chromium, over its DevTools HTTP endpoint on
// guest port 9222 (reached through the agent link), to open url in a tab,
// then closes the other tabs so the user sees one window with the page.
func (d *Driver) openInChromium(ctx context.Context, u string) error {
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return d.link.DialPort(ctx, 9222) },
	}, Timeout: openTabTimeout}
	defer hc.CloseIdleConnections()
	// Chromium unescapes what follows "?" before it navigates, so the URL
	// goes escaped (an OAuth URL carries escaped redirect URIs itself).
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://127.0.0.1:9222/json/new?"+url.QueryEscape(u), nil)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	var target struct {
		ID string `json:"id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&target)
	resp.Body.Close()
	if err != nil || target.ID == "" {
		return fmt.Errorf("chromium did not open a tab (HTTP %d)", resp.StatusCode)
	}
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9222/json/list", nil)
	resp, err = hc.Do(req)
	if err != nil {
		return nil // the page is open; leftover tabs are cosmetic
	}
	var tabs []struct {
		ID   string `json:"id"`
		Type string `json:"type"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tabs)
	resp.Body.Close()
	for _, t := range tabs {
		if t.Type == "page" && t.ID != target.ID {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9222/json/close/"+t.ID, nil)
			if resp, err := hc.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	}
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9222/json/activate/"+target.ID, nil)
	if resp, err := hc.Do(req); err == nil {
		resp.Body.Close()
	}
	return nil
}

// redact cuts URLs (their queries carry codes) and everything typed into
// the CLI from output quoted in an error.
func (d *Driver) redact(s string) string {
	d.mu.Lock()
	typed := append([]string(nil), d.typed...)
	d.mu.Unlock()
	for _, t := range typed {
		s = strings.ReplaceAll(s, t, "<typed input>")
	}
	return redactURLs(s)
}

// hostOf is the host of a URL, the only part of an OAuth URL worth logging.
func hostOf(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "?"
	}
	return p.Host
}

var urlRE = regexp.MustCompile(`https?://\S+`)

// redactURLs keeps only the host of URLs in CLI output that goes into an
// error message: query strings can carry codes.
func redactURLs(s string) string {
	return urlRE.ReplaceAllStringFunc(s, func(u string) string { return "<" + hostOf(u) + " URL>" })
}
