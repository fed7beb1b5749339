package devoauth

import (
	"bytes"
	"html/template"
	"net/http"
)

// The pages are driven by people through a VNC live view and by tests
// through VNC key and pointer events, so they are plain and large: one
// column, big labelled fields, the first field focused, Tab order username →
// password → submit, Enter submits, and on the consent page Allow is
// focused so Enter approves. No script (the CSP forbids it): nothing to
// load, nothing to wait for. Sized for a 1280x800 screen.

const pageStyle = `
body { margin: 0; background: #eef1f5; font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 22px; color: #14171a; }
main { max-width: 560px; margin: 56px auto 0; background: #fff; padding: 40px 48px 48px; border-radius: 12px; box-shadow: 0 2px 12px rgba(0,0,0,.12); }
h1 { font-size: 32px; margin: 0 0 8px; }
p { line-height: 1.4; }
.sub { color: #4a5560; margin: 0 0 28px; }
label { display: block; font-weight: bold; margin: 20px 0 8px; }
input[type=text], input[type=password] { display: block; box-sizing: border-box; width: 100%; font-size: 26px; padding: 14px 16px; border: 2px solid #7a8691; border-radius: 8px; }
button { font-size: 26px; padding: 16px 40px; border-radius: 8px; border: 2px solid #1a5fb4; cursor: pointer; margin-top: 32px; }
.primary { background: #1a5fb4; color: #fff; }
.secondary { background: #fff; color: #1a5fb4; margin-left: 20px; }
input:focus, button:focus { outline: 4px solid #f5a623; outline-offset: 2px; }
.error { background: #fde8e8; border: 2px solid #c01c28; color: #8a1020; padding: 14px 16px; border-radius: 8px; margin: 0 0 12px; }
.code { font-family: "DejaVu Sans Mono", monospace; font-size: 22px; word-break: break-all; background: #f3f5f7; border: 2px solid #7a8691; padding: 16px; border-radius: 8px; }
ul { margin: 0 0 8px; }
.demo { color: #4a5560; font-size: 18px; margin-top: 28px; }
`

var pages = template.Must(template.New("").Parse(`
{{define "head"}}<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.}} · Hangar dev sign-in</title>
<style>` + pageStyle + `</style></head><body><main>{{end}}

{{define "login"}}{{template "head" "Sign in"}}
<h1>Sign in</h1>
<p class="sub">to continue to <strong>{{.Client}}</strong></p>
{{if .Error}}<p class="error" role="alert" id="error">{{.Error}}</p>{{end}}
<form method="post" action="{{.Action}}" autocomplete="off">
<input type="hidden" name="request" value="{{.Request}}">
<label for="username">Username</label>
<input type="text" id="username" name="username" value="{{.Username}}" autofocus autocapitalize="none" spellcheck="false" required>
<label for="password">Password</label>
<input type="password" id="password" name="password" required>
<button type="submit" id="signin" class="primary">Sign in</button>
</form>
<p class="demo">Hangar development provider. Demo account: <strong>demo</strong> / <strong>hangar-demo</strong>.</p>
</main></body></html>{{end}}

{{define "consent"}}{{template "head" "Allow access"}}
<h1>Allow {{.Client}} to access your account?</h1>
<p class="sub">Signed in as <strong>{{.Email}}</strong></p>
{{if .Scopes}}<p>It asks for:</p><ul>{{range .Scopes}}<li>{{.}}</li>{{end}}</ul>{{end}}
<form method="post" action="{{.Action}}">
<input type="hidden" name="request" value="{{.Request}}">
<button type="submit" id="allow" name="decision" value="allow" class="primary" autofocus>Allow</button><button type="submit" id="deny" name="decision" value="deny" class="secondary">Deny</button>
</form>
</main></body></html>{{end}}

{{define "code"}}{{template "head" "Your code"}}
<h1>Login complete</h1>
<p>Copy this code and paste it into your terminal:</p>
<p class="code" id="code">{{.Code}}</p>
</main></body></html>{{end}}

{{define "error"}}{{template "head" .Title}}
<h1>{{.Title}}</h1>
<p class="error" role="alert" id="error">{{.Message}}</p>
</main></body></html>{{end}}
`))

type loginData struct {
	Action, Request, Client, Username, Error string
}

type consentData struct {
	Action, Request, Client, Email string
	Scopes                         []string
}

type codeData struct{ Code string }

type errorData struct{ Title, Message string }

func (s *Server) render(w http.ResponseWriter, status int, name string, data any) {
	var buf bytes.Buffer
	if err := pages.ExecuteTemplate(&buf, name, data); err != nil {
		s.log.Error("dev oauth page", "page", name, "err", err)
		http.Error(w, "page error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// No script, no framing; no Referer, so the code in the redirect never
	// leaks into a Referer header.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func (s *Server) renderLogin(w http.ResponseWriter, status int, d loginData) {
	s.render(w, status, "login", d)
}

func (s *Server) renderConsent(w http.ResponseWriter, d consentData) {
	s.render(w, http.StatusOK, "consent", d)
}

func (s *Server) renderCode(w http.ResponseWriter, d codeData) {
	s.render(w, http.StatusOK, "code", d)
}

func (s *Server) errorPage(w http.ResponseWriter, status int, title, msg string) {
	s.render(w, status, "error", errorData{Title: title, Message: msg})
}
