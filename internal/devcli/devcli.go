// Package devcli is the CLI of hangar's "dev" provider. It behaves
// like the login of a real AI coding CLI (codex login): a local callback
// listener, PKCE, a URL printed for the user's browser, a code exchange, and
// a credential file, so that hangar's browser-login and credential delivery
// can be tested offline against the built-in dev OAuth server.
//
// It uses the standard library only and is built static (CGO_ENABLED=0) to
// ship inside the cli and browser guest images.
//
//	hangar-devcli login  [--issuer URL] [--port 1455] [--client-id ID] [--timeout 10m] [--paste]
//	hangar-devcli whoami [--issuer URL]
//	hangar-devcli prompt [--issuer URL] [--json] [-m MODEL] TEXT...   (TEXT from stdin when absent)
//	hangar-devcli logout
//
// login --paste is the flow for a browser that cannot reach the CLI's
// listener (Claude Code's "Paste code here if prompted"): redirect_uri is the
// issuer's /code page, which shows code#state; the CLI prompts
// "Paste the code here: " on stderr and reads it from stdin.
//
// The issuer is --issuer, else $HANGAR_DEV_ISSUER, else (for whoami and
// prompt) the one recorded at login, else http://127.0.0.1:4000/dev-oauth.
// Credentials are in $HANGAR_DEV_HOME/auth.json, default
// ~/.hangar-dev/auth.json, mode 0600.
package devcli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Defaults shared with the dev provider's server side.
const (
	defaultIssuer   = "http://127.0.0.1:4000/dev-oauth"
	defaultClientID = "hangar-devcli"
	defaultPort     = 1455 // the port codex login uses
	defaultScope    = "openid email profile offline_access"
)

// errUsage marks command-line mistakes (exit status 2).
var errUsage = errors.New("usage")

const usage = `usage:
  hangar-devcli login  [--issuer URL] [--port N] [--client-id ID] [--timeout D] [--paste]
  hangar-devcli whoami [--issuer URL]
  hangar-devcli prompt [--issuer URL] [--json] [-m MODEL] TEXT...
  hangar-devcli logout

environment: HANGAR_DEV_ISSUER (default ` + defaultIssuer + `),
             HANGAR_DEV_HOME (default ~/.hangar-dev)
`

// Main runs the CLI with args (without the program name) and returns the
// exit status. It is the whole of cmd/hangar-devcli, and hangar-agent runs
// it when invoked as hangar-devcli: the images carry one static binary, with
// /usr/local/bin/hangar-devcli a symlink to the agent.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, args, os.Stdin, os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(os.Stderr, "hangar-devcli: %v\n%s", err, usage)
		return 2
	default:
		fmt.Fprintf(os.Stderr, "hangar-devcli: %v\n", err)
		return 1
	}
}

// env is what every command needs from its surroundings.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	home           string // directory of auth.json
	issuer         string // from the flag or environment; "" for the default
	now            func() time.Time
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command given", errUsage)
	}
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr, now: time.Now, issuer: os.Getenv("HANGAR_DEV_ISSUER")}
	home, err := authHome()
	if err != nil {
		return err
	}
	e.home = home
	cmd, rest := args[0], args[1:]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var issuer string
	fs.StringVar(&issuer, "issuer", "", "OAuth issuer URL")
	switch cmd {
	case "login":
		var o loginOptions
		fs.IntVar(&o.port, "port", defaultPort, "local callback port (falls back to a random port when busy)")
		fs.StringVar(&o.clientID, "client-id", defaultClientID, "OAuth client id")
		fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "how long to wait for the browser")
		fs.BoolVar(&o.paste, "paste", false, "no local listener: the issuer's page shows a code to paste here")
		if err := fs.Parse(rest); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		if fs.NArg() != 0 {
			return fmt.Errorf("%w: login takes no arguments", errUsage)
		}
		e.setIssuer(issuer)
		if o.paste {
			return e.loginPaste(ctx, o)
		}
		return e.login(ctx, o)
	case "whoami":
		if err := fs.Parse(rest); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		e.setIssuer(issuer)
		info, _, err := e.validate(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "Logged in as %s (%s)\n", info.Email, info.Name)
		return nil
	case "prompt":
		var o promptOptions
		fs.StringVar(&o.model, "model", "", "model to ask (the dev model answers any name)")
		fs.StringVar(&o.model, "m", "", "short for --model")
		fs.BoolVar(&o.json, "json", false, "print JSON lines: start, text, tool, usage, result")
		if err := fs.Parse(rest); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		e.setIssuer(issuer)
		text := strings.Join(fs.Args(), " ")
		if fs.NArg() == 0 {
			b, err := io.ReadAll(io.LimitReader(stdin, 1<<20))
			if err != nil {
				return fmt.Errorf("read prompt from stdin: %w", err)
			}
			text = strings.TrimRight(string(b), "\n")
		}
		return e.prompt(ctx, text, o)
	case "logout":
		if err := os.Remove(authPath(e.home)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("logout: %w", err)
		}
		fmt.Fprintln(stderr, "Logged out")
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
	}
}

func (e *env) setIssuer(flagValue string) {
	if flagValue != "" {
		e.issuer = flagValue
	}
	e.issuer = strings.TrimRight(e.issuer, "/")
}
