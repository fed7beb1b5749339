package e2e

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

var hiddenRequestRE = regexp.MustCompile(`name="request" value="([^"]+)"`)

// devOAuthInBrowser plays the user's own browser for the dev provider: sign
// in, approve, and read the code the provider hands back (code#state).
func devOAuthInBrowser(t *testing.T, base, authorizeURL string) string {
	t.Helper()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 30 * time.Second}
	page := func(resp *http.Response, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", resp.Request.URL.Path, resp.StatusCode, b)
		}
		return string(b)
	}
	login := page(hc.Get(authorizeURL))
	m := hiddenRequestRE.FindStringSubmatch(login)
	if m == nil {
		t.Fatalf("no sign-in form at %s", authorizeURL)
	}
	consent := page(hc.PostForm(base+"/dev-oauth/login", url.Values{"request": {m[1]}, "username": {"demo"}, "password": {"hangar-demo"}}))
	m = hiddenRequestRE.FindStringSubmatch(consent)
	if m == nil {
		t.Fatalf("no consent form after signing in")
	}
	resp, err := hc.PostForm(base+"/dev-oauth/consent", url.Values{"request": {m[1]}, "decision": {"allow"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Query().Get("code") == "" {
		t.Fatalf("consent answered %d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	return loc.Query().Get("code") + "#" + loc.Query().Get("state")
}

// TestAuthLoginCLIPaste runs `hangar auth login dev --mode paste` as a user
// would: it prints the provider's URL, the user logs in with their own
// browser and pastes the code, and the command exits 0 once the
// credentials are stored.
func TestAuthLoginCLIPaste(t *testing.T) {
	requireVMs(t, "cli")
	h := startDaemon(t, nil)
	ctx := context.Background()
	u, err := h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "erin"})
	if err != nil {
		t.Fatal(err)
	}
	bin := buildHangar(t)
	cmd := exec.Command(bin, "--server", h.url, "--token", u.APIKey, "auth", "login", "dev", "--mode", "paste")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var authorize string
	var out []string
	deadline := time.After(4 * time.Minute)
	for authorize == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("hangar auth login ended early:\n%s\n%s", strings.Join(out, "\n"), stderr.String())
			}
			out = append(out, l)
			if strings.HasPrefix(l, h.url+"/dev-oauth/authorize?") {
				authorize = l
			}
		case <-deadline:
			t.Fatalf("no URL from hangar auth login:\n%s\n%s", strings.Join(out, "\n"), stderr.String())
		}
	}
	code := devOAuthInBrowser(t, h.url, authorize)
	if _, err := io.WriteString(stdin, code+"\n"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("hangar auth login: %v\n%s", err, stderr.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("hangar auth login did not finish:\n%s", stderr.String())
	}
	rest := strings.Join(out, "\n")
	for l := range lines {
		rest += "\n" + l
	}
	if !strings.Contains(rest, "Connected dev") {
		t.Fatalf("output:\n%s", rest)
	}
	if strings.Contains(stderr.String()+rest, code) {
		t.Fatal("the pasted code was echoed back")
	}
	creds, err := client.New(h.url, u.APIKey).Credentials(ctx)
	if err != nil || len(creds) != 1 || creds[0].Provider != "dev" || creds[0].Account != "demo@hangar.dev" {
		t.Fatalf("erin's credentials after the CLI login: %+v %v", creds, err)
	}
	t.Logf("hangar auth login stderr:\n%s", stderr.String())
}
