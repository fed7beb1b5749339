package devcli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/login/devoauth"
	"github.com/hangar-vm/hangar/internal/testutil"
)

// These tests build the real static binary and run it against the dev
// OAuth server, driving the "browser" part with a plain HTTP client that
// submits the same forms a person would.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func devcli(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hangar-devcli-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "hangar-devcli")
		cmd := exec.Command("go", "build", "-trimpath", "-o", binPath, "../../cmd/hangar-devcli")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// clock lets the test age the server's tokens without waiting.
type clock struct {
	mu     sync.Mutex // guards offset
	offset time.Duration
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return time.Now().Add(c.offset) }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

type fixture struct {
	t      *testing.T
	issuer string
	home   string
	clk    *clock
	srv    *httptest.Server
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{t: t, clk: &clock{}, home: filepath.Join(t.TempDir(), "dev-home")}
	oauth := devoauth.New(devoauth.Options{Prefix: "/dev-oauth", Now: f.clk.Now, Log: testutil.Logger(t).With("component", "devoauth")})
	mux := http.NewServeMux()
	mux.Handle("/dev-oauth/", oauth)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	f.issuer = f.srv.URL + "/dev-oauth"
	return f
}

func (f *fixture) cmd(args ...string) *exec.Cmd {
	cmd := exec.Command(devcli(f.t), args...)
	cmd.Env = append(os.Environ(), "HANGAR_DEV_HOME="+f.home, "HANGAR_DEV_ISSUER="+f.issuer)
	return cmd
}

// run runs a short command and returns stdout, stderr and the exit code.
func (f *fixture) run(stdin string, args ...string) (string, string, int) {
	f.t.Helper()
	cmd := f.cmd(args...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		f.t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// loginProc is a running `hangar-devcli login`.
type loginProc struct {
	cmd    *exec.Cmd
	url    string
	mu     sync.Mutex // guards stderr
	stderr bytes.Buffer
	stdin  io.WriteCloser
	done   chan struct{}
	code   int
}

func (p *loginProc) Stderr() string { p.mu.Lock(); defer p.mu.Unlock(); return p.stderr.String() }

// startLogin starts the login and waits for the URL it prints.
func (f *fixture) startLogin(args ...string) *loginProc {
	f.t.Helper()
	p := &loginProc{cmd: f.cmd(append([]string{"login"}, args...)...), done: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		f.t.Fatal(err)
	}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		f.t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		prev := ""
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.stderr.WriteString(line + "\n")
			p.mu.Unlock()
			if prev == "Open this URL in your browser to log in:" {
				urls <- line
			}
			prev = line
		}
		err := p.cmd.Wait()
		p.code = 0
		if ee, ok := err.(*exec.ExitError); ok {
			p.code = ee.ExitCode()
		}
		close(p.done)
	}()
	f.t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	select {
	case p.url = <-urls:
	case <-p.done:
		f.t.Fatalf("login exited before printing a URL:\n%s", p.Stderr())
	case <-time.After(20 * time.Second):
		f.t.Fatalf("login printed no URL:\n%s", p.Stderr())
	}
	return p
}

func (p *loginProc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(20 * time.Second):
		t.Fatalf("login did not exit:\n%s", p.Stderr())
		return -1
	}
}

var (
	requestRE = regexp.MustCompile(`name="request" value="([^"]+)"`)
	actionRE  = regexp.MustCompile(`<form method="post" action="([^"]+)"`)
)

// browse plays the user's browser: open the URL, sign in, answer the
// consent page, follow the redirect to the CLI's listener. It returns the
// status and body of the CLI's final page.
func (f *fixture) browse(authURL, decision string) (int, string) {
	f.t.Helper()
	client := &http.Client{Timeout: 20 * time.Second}
	get := func(u string) (int, string) {
		resp, err := client.Get(u)
		if err != nil {
			f.t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	post := func(page string, v url.Values) (int, string) {
		a, r := actionRE.FindStringSubmatch(page), requestRE.FindStringSubmatch(page)
		if a == nil || r == nil {
			f.t.Fatalf("no form in page:\n%s", page)
		}
		v.Set("request", r[1])
		resp, err := client.PostForm(f.srv.URL+a[1], v)
		if err != nil {
			f.t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	status, page := get(authURL)
	if status != 200 {
		f.t.Fatalf("authorize page = %d:\n%s", status, page)
	}
	status, page = post(page, url.Values{"username": {devoauth.DemoUsername}, "password": {devoauth.DemoPassword}})
	if status != 200 || !strings.Contains(page, "to access your account?") {
		f.t.Fatalf("consent page = %d:\n%s", status, page)
	}
	return post(page, url.Values{"decision": {decision}})
}

func (f *fixture) readAuth() (authFile, os.FileMode) {
	f.t.Helper()
	path := filepath.Join(f.home, "auth.json")
	fi, err := os.Stat(path)
	if err != nil {
		f.t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		f.t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		f.t.Fatalf("auth.json is not JSON: %v", err)
	}
	for _, k := range []string{"access_token", "refresh_token", "expires_at", "account"} {
		if _, ok := raw[k]; !ok {
			f.t.Fatalf("auth.json lacks %q", k)
		}
	}
	var a authFile
	if err := json.Unmarshal(b, &a); err != nil {
		f.t.Fatal(err)
	}
	return a, fi.Mode().Perm()
}

func TestLoginWhoamiPrompt(t *testing.T) {
	f := newFixture(t)
	// Hold a port so the CLI has to fall back, as it does when 1455 is taken.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port

	p := f.startLogin("--port", strconv.Itoa(busyPort))
	if !strings.Contains(p.Stderr(), fmt.Sprintf("Port %d is busy", busyPort)) {
		t.Fatalf("no fallback message:\n%s", p.Stderr())
	}
	u, err := url.Parse(p.url)
	if err != nil || !strings.HasPrefix(p.url, f.issuer+"/authorize?") {
		t.Fatalf("printed URL %q", p.url)
	}
	q := u.Query()
	redirect, _ := url.Parse(q.Get("redirect_uri"))
	if q.Get("code_challenge_method") != "S256" || q.Get("state") == "" || q.Get("code_challenge") == "" ||
		redirect == nil || redirect.Hostname() != "127.0.0.1" || redirect.Port() == strconv.Itoa(busyPort) {
		t.Fatalf("authorize URL parameters: %v", q)
	}

	// A callback with a forged state is refused and the CLI keeps waiting.
	forged := q.Get("redirect_uri") + "?" + url.Values{"code": {"devac_forged"}, "state": {"not-the-state"}}.Encode()
	resp, err := http.Get(forged)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "State mismatch") {
		t.Fatalf("forged callback = %d %s", resp.StatusCode, body)
	}
	if _, err := os.Stat(filepath.Join(f.home, "auth.json")); !os.IsNotExist(err) {
		t.Fatal("a forged callback wrote credentials")
	}
	select {
	case <-p.done:
		t.Fatalf("login exited after a forged callback:\n%s", p.Stderr())
	default:
	}

	status, page := f.browse(p.url, "allow")
	if status != 200 || !strings.Contains(page, "Login complete, you can close this window") {
		t.Fatalf("final browser page = %d:\n%s", status, page)
	}
	if code := p.wait(t); code != 0 {
		t.Fatalf("login exited %d:\n%s", code, p.Stderr())
	}
	if !strings.Contains(p.Stderr(), "Successfully logged in") {
		t.Fatalf("no success message:\n%s", p.Stderr())
	}
	a, mode := f.readAuth()
	if mode != 0o600 {
		t.Fatalf("auth.json mode = %04o, want 0600", mode)
	}
	if a.Account.Email != devoauth.DemoEmail || a.Issuer != f.issuer || a.AccessToken == "" || a.RefreshToken == "" ||
		a.ExpiresAt.Before(time.Now().Add(50*time.Minute)) {
		t.Fatalf("auth.json = account %q issuer %q expires %v", a.Account.Email, a.Issuer, a.ExpiresAt)
	}
	if di, _ := os.Stat(f.home); di.Mode().Perm()&0o077 != 0 {
		t.Fatalf("credential directory mode = %04o", di.Mode().Perm())
	}
	if strings.Contains(p.Stderr(), a.AccessToken) || strings.Contains(p.Stderr(), a.RefreshToken) {
		t.Fatal("login printed a token")
	}

	out, errOut, code := f.run("", "whoami")
	if code != 0 || !strings.Contains(out, "Logged in as "+devoauth.DemoEmail) {
		t.Fatalf("whoami = %d %q %q", code, out, errOut)
	}
	out, errOut, code = f.run("", "prompt", "hello", "wörld")
	if want := "dev-model answer for " + devoauth.DemoEmail + ": dlröw olleh\n"; code != 0 || out != want {
		t.Fatalf("prompt = %d %q %q, want %q", code, out, errOut, want)
	}
	// --json streams the dev-jsonl events hangar parses: start, the
	// tool the prompt asked for (call and result), text deltas, usage and
	// a final result holding the whole answer.
	out, errOut, code = f.run("", "prompt", "--json", "-m", "dev-2", "use a tool")
	if code != 0 {
		t.Fatalf("prompt --json = %d %q", code, errOut)
	}
	var types []string
	var text strings.Builder
	var result map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("prompt --json printed a line that is not JSON: %q", l)
		}
		typ, _ := ev["type"].(string)
		if len(types) == 0 || types[len(types)-1] != typ {
			types = append(types, typ)
		}
		if typ == "text" {
			text.WriteString(ev["text"].(string))
		}
		if typ == "result" {
			result = ev
		}
	}
	wantAnswer := "dev-model answer for " + devoauth.DemoEmail + ": loot a esu"
	if strings.Join(types, ",") != "start,tool,text,usage,result" || text.String() != wantAnswer || result["text"] != wantAnswer {
		t.Fatalf("prompt --json: types %v, text %q, result %v", types, text.String(), result)
	}
	out, _, code = f.run("from stdin\n", "prompt")
	if code != 0 || !strings.HasSuffix(out, ": nidts morf\n") {
		t.Fatalf("prompt from stdin = %d %q", code, out)
	}

	// The server expires the access token while the file still says it is
	// fresh: the 401 makes the CLI refresh, save the rotated tokens and
	// succeed.
	f.clk.Add(2 * time.Hour)
	before, _ := f.readAuth()
	out, errOut, code = f.run("", "whoami")
	if code != 0 || !strings.Contains(out, devoauth.DemoEmail) {
		t.Fatalf("whoami after server-side expiry = %d %q %q", code, out, errOut)
	}
	after, mode := f.readAuth()
	if after.AccessToken == before.AccessToken || after.RefreshToken == before.RefreshToken || mode != 0o600 {
		t.Fatalf("refresh on 401 did not write new tokens (mode %04o)", mode)
	}

	// The file says the token expired: the CLI refreshes before calling.
	after.ExpiresAt = time.Now().Add(-time.Minute)
	writeAuthFile(t, f.home, after)
	out, errOut, code = f.run("", "prompt", "abc")
	if code != 0 || !strings.HasSuffix(out, ": cba\n") {
		t.Fatalf("prompt with an expired file = %d %q %q", code, out, errOut)
	}
	again, _ := f.readAuth()
	if again.RefreshToken == after.RefreshToken || !again.ExpiresAt.After(time.Now()) {
		t.Fatal("an expired auth.json was not refreshed")
	}

	// A spent refresh token (the copy from before the last refresh) is
	// refused by the issuer, and the CLI says to log in again.
	after.ExpiresAt = time.Now().Add(-time.Minute)
	writeAuthFile(t, f.home, after)
	_, errOut, code = f.run("", "whoami")
	if code == 0 || !strings.Contains(errOut, "run hangar-devcli login again") {
		t.Fatalf("whoami with a spent refresh token = %d %q", code, errOut)
	}
	for _, tok := range []string{after.RefreshToken, after.AccessToken, again.AccessToken, again.RefreshToken} {
		if strings.Contains(errOut, tok) {
			t.Fatal("an error message contains a token")
		}
	}

	if _, _, code := f.run("", "logout"); code != 0 {
		t.Fatal("logout failed")
	}
	_, errOut, code = f.run("", "whoami")
	if code != 1 || !strings.Contains(errOut, "not logged in") {
		t.Fatalf("whoami after logout = %d %q", code, errOut)
	}
}

func writeAuthFile(t *testing.T, home string, a authFile) {
	t.Helper()
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "auth.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoginDenied(t *testing.T) {
	f := newFixture(t)
	p := f.startLogin("--port", "0")
	status, page := f.browse(p.url, "deny")
	if status != 400 || !strings.Contains(page, "Login failed") {
		t.Fatalf("browser page after deny = %d:\n%s", status, page)
	}
	if code := p.wait(t); code != 1 {
		t.Fatalf("login after deny exited %d:\n%s", code, p.Stderr())
	}
	if !strings.Contains(p.Stderr(), "denied") {
		t.Fatalf("no denial message:\n%s", p.Stderr())
	}
	if _, err := os.Stat(filepath.Join(f.home, "auth.json")); !os.IsNotExist(err) {
		t.Fatal("a denied login wrote credentials")
	}
}

func TestLoginTimeoutAndUsage(t *testing.T) {
	f := newFixture(t)
	_, errOut, code := f.run("", "login", "--port", "0", "--timeout", "300ms")
	if code != 1 || !strings.Contains(errOut, "timed out") {
		t.Fatalf("login timeout = %d %q", code, errOut)
	}
	if _, errOut, code := f.run("", "frobnicate"); code != 2 || !strings.Contains(errOut, "unknown command") {
		t.Fatalf("unknown command = %d %q", code, errOut)
	}
	if _, errOut, code := f.run("", "login", "--issuer", "ftp://x"); code != 2 {
		t.Fatalf("bad issuer = %d %q", code, errOut)
	}
}

// TestStdlibOnly keeps the package free of module dependencies: it ships
// inside the agent's static binary in every guest image.
func TestStdlibOnly(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	// Besides itself, only hangar's standard-library-only helpers (their
	// own dependencies would show up in the list too).
	allowed := map[string]bool{
		"github.com/hangar-vm/hangar/internal/devcli":     true,
		"github.com/hangar-vm/hangar/internal/atomicfile": true,
	}
	for _, line := range strings.Fields(string(out)) {
		if !allowed[line] {
			t.Fatalf("hangar-devcli depends on %s", line)
		}
	}
}

var pastedCodeRE = regexp.MustCompile(`id="code">([^<]+)<`)

func TestLoginPaste(t *testing.T) {
	f := newFixture(t)
	p := f.startLogin("--paste")
	u, _ := url.Parse(p.url)
	if got := u.Query().Get("redirect_uri"); got != f.issuer+"/code" {
		t.Fatalf("paste redirect_uri = %q", got)
	}
	status, page := f.browse(p.url, "allow")
	m := pastedCodeRE.FindStringSubmatch(page)
	if status != 200 || m == nil || !strings.Contains(m[1], "#"+u.Query().Get("state")) {
		t.Fatalf("code page = %d:\n%s", status, page)
	}
	// The code is typed back, the way the login driver answers the prompt.
	if _, err := io.WriteString(p.stdin, html.UnescapeString(m[1])+"\r\n"); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t); code != 0 || !strings.Contains(p.Stderr(), "Paste the code here: ") || !strings.Contains(p.Stderr(), "Successfully logged in") {
		t.Fatalf("paste login exited %d:\n%s", code, p.Stderr())
	}
	if a, mode := f.readAuth(); mode != 0o600 || a.Account.Email != devoauth.DemoEmail {
		t.Fatalf("auth.json after paste: mode %04o account %q", mode, a.Account.Email)
	}
	if out, _, code := f.run("", "whoami"); code != 0 || !strings.Contains(out, devoauth.DemoEmail) {
		t.Fatalf("whoami after paste login = %d %q", code, out)
	}

	// A code from another login (wrong state) is refused.
	f2 := newFixture(t)
	p2 := f2.startLogin("--paste")
	_, page = f2.browse(p2.url, "allow")
	m = pastedCodeRE.FindStringSubmatch(page)
	code, _, _ := strings.Cut(html.UnescapeString(m[1]), "#")
	io.WriteString(p2.stdin, code+"#someone-elses-state\n")
	if c := p2.wait(t); c != 1 || !strings.Contains(p2.Stderr(), "state mismatch") {
		t.Fatalf("paste with a wrong state exited %d:\n%s", c, p2.Stderr())
	}
	if _, err := os.Stat(filepath.Join(f2.home, "auth.json")); !os.IsNotExist(err) {
		t.Fatal("a mismatched paste wrote credentials")
	}
}
