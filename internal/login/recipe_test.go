package login

import (
	"strings"
	"testing"
	"time"
)

func TestRecipesLoadAndMatch(t *testing.T) {
	rs, err := LoadRecipes()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rs.Names(), ","); got != "claude,codex,dev,gemini" {
		t.Fatalf("recipes %s", got)
	}
	samples := map[string]string{
		"codex":  "\x1b[1mIf your browser did not open, navigate to this URL to authenticate:\x1b[0m\r\n\r\nhttps://auth.openai.com/oauth/authorize?response_type=code&state=abc\r\n",
		"claude": "Browser didn't open? Use the url below to sign in:\n\nhttps://claude.ai/oauth/authorize?code=true&state=x\n",
		"gemini": "Otherwise navigate to:\n\nhttps://accounts.google.com/o/oauth2/v2/auth?access_type=offline&state=s\n",
		"dev":    "Open this URL in your browser to log in:\nhttp://127.0.0.1:4000/dev-oauth/authorize?client_id=hangar-devcli&state=q\n",
	}
	for name, out := range samples {
		o := &output{wake: make(chan struct{}, 1)}
		o.Write([]byte(out))
		u := rs[name].urlRE.FindString(o.text())
		if u == "" || strings.ContainsAny(u, "\x1b\r") || !strings.Contains(u, "state=") {
			t.Errorf("%s: url %q from %q", name, u, out)
		}
	}
	if !rs["gemini"].Prompts[0].re.MatchString("Opening authentication page in your browser. Do you want to continue? [Y/n]: ") {
		t.Error("gemini consent prompt not recognised")
	}
	if !rs["claude"].pasteRE.MatchString("Paste code here if prompted > ") {
		t.Error("claude paste prompt not recognised")
	}
}

func TestRecipeRejectsUnknownKeys(t *testing.T) {
	_, err := ParseRecipe([]byte(`{"name":"x","version":1,"modes":["browser"],"login":{"argv":["x"]},"url_pattern":"u","credentials":[{"path":"/p"}],"colour":"red"}`))
	if err == nil || !strings.Contains(err.Error(), "colour") {
		t.Fatalf("unknown key: %v", err)
	}
	_, err = ParseRecipe([]byte(`{"name":"x","version":1,"modes":["telepathy"],"login":{"argv":["x"]},"url_pattern":"u","credentials":[{"path":"/p"}]}`))
	if err == nil {
		t.Fatal("unknown mode accepted")
	}
}

func TestRedactTypedInputAndURLs(t *testing.T) {
	d := &Driver{}
	d.typed = []string{"c0de#st4te"}
	got := d.redact("Paste code here > c0de#st4te | see https://claude.ai/oauth/authorize?code=secret")
	if strings.Contains(got, "c0de#st4te") || strings.Contains(got, "secret") || !strings.Contains(got, "<claude.ai URL>") {
		t.Fatalf("redacted: %q", got)
	}
}

func TestExpiryUnits(t *testing.T) {
	ms := float64(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli())
	if got := parseExpiry(ms, "unix_ms"); got.Year() != 2030 || got.Second() != 5 {
		t.Fatalf("unix_ms: %v", got)
	}
	if got := parseExpiry("2030-01-02T03:04:05Z", "rfc3339"); got.Year() != 2030 {
		t.Fatalf("rfc3339: %v", got)
	}
	if got := parseExpiry("soon", "rfc3339"); !got.IsZero() {
		t.Fatalf("garbage expiry: %v", got)
	}
}
