package login

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzProviderOutput feeds arbitrary CLI output (it comes from a VM) to
// what the login driver reads out of it with every provider's recipe.
// Properties: nothing panics; the text has no carriage returns; a URL or
// device code found is part of the text; output quoted in an error keeps
// no URL (their queries carry codes); the buffer stays bounded.
func FuzzProviderOutput(f *testing.F) {
	rs, err := LoadRecipes()
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte("\x1b[1mIf your browser did not open, navigate to this URL to authenticate:\x1b[0m\r\n\r\nhttps://auth.openai.com/oauth/authorize?response_type=code&state=abc\r\n"))
	f.Add([]byte("Browser didn't open? Use the url below to sign in:\n\nhttps://claude.ai/oauth/authorize?code=true&state=x\n"))
	f.Add([]byte("Open this URL in your browser to log in:\nhttp://127.0.0.1:4000/dev-oauth/authorize?client_id=hangar-devcli&state=q\n"))
	f.Add([]byte("Enter the code ABCD-EFGH at https://example.com/device\nPaste code here > "))
	f.Add([]byte("\x1b]0;title\x07\x1b[2J\x1bPhttps://x.test/?a=b\x1b\\ Successfully logged in\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		o := &output{wake: make(chan struct{}, 1)}
		o.Write(in)
		o.Write(in) // twice: a repeated redraw
		text := o.text()
		if strings.Contains(text, "\r") {
			t.Fatalf("text keeps a carriage return: %q", text)
		}
		d := &Driver{typed: []string{"typed-secret"}}
		if q := d.redact(o.tail(3)); urlRE.FindString(q) != "" {
			t.Fatalf("error text keeps a URL: %q", q)
		}
		for name, r := range rs {
			if u := r.urlRE.FindString(text); u != "" && (!strings.Contains(text, u) || strings.ContainsAny(u, " \n\t")) {
				t.Fatalf("%s: url %q is not a whole word of the text", name, u)
			}
			if r.deviceRE != nil {
				if m := r.deviceRE.FindStringSubmatch(text); len(m) > 1 && !strings.Contains(text, m[1]) {
					t.Fatalf("%s: device code %q not in the text", name, m[1])
				}
			}
			for _, p := range r.Prompts {
				p.re.MatchString(text)
			}
		}
		o.mu.Lock()
		n := o.buf.Len()
		o.mu.Unlock()
		if n > 1<<20+len(in) {
			t.Fatalf("output buffer holds %d bytes", n)
		}
	})
}

// FuzzCredentialJSON: credential files come from the VM; checking their
// required fields must not panic on any JSON and any dotted path.
func FuzzCredentialJSON(f *testing.F) {
	f.Add([]byte(`{"tokens":{"access_token":"a","refresh_token":"r"}}`), "tokens.access_token")
	f.Add([]byte(`{"claudeAiOauth":{"expiresAt":1700000000000}}`), "claudeAiOauth.expiresAt")
	f.Add([]byte(`[1,2,{"a":null}]`), "a.b.c")
	f.Add([]byte(`"just a string"`), "")
	f.Fuzz(func(t *testing.T, doc []byte, path string) {
		var v any
		if json.Unmarshal(doc, &v) != nil {
			return
		}
		// A field counts as present only with a value: a JSON null in a
		// credential file is a missing token.
		if got, ok := lookup(v, path); ok && got == nil {
			t.Fatalf("lookup(%s, %q) reports a null as present", doc, path)
		}
		_ = parseExpiry(v, "unix_ms")
		_ = parseExpiry(v, "rfc3339")
	})
}
