package prompt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
	"github.com/hangar-vm/hangar/internal/creds"
	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/login"
	"github.com/hangar-vm/hangar/internal/prompt/cliout"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// VMs is what prompts need of the VM manager.
type VMs interface {
	List(ctx context.Context, caller store.User) ([]api.VM, error)
	Get(ctx context.Context, caller store.User, id string) (api.VM, error)
	Create(ctx context.Context, caller store.User, req api.CreateVMRequest) (api.VM, error)
	Start(ctx context.Context, caller store.User, id string) (api.VM, error)
	WaitReady(ctx context.Context, caller store.User, id string) (api.VM, error)
	Link(ctx context.Context, caller store.User, id string) (*agentlink.Client, error)
}

// Credentials is what prompts need of the credential manager.
type Credentials interface {
	Use(ctx context.Context, owner, provider, vmID string) (func(), error)
	Ensure(ctx context.Context, owner, provider, vmID string) ([]string, error)
	SyncBack(ctx context.Context, owner, provider, vmID string) error
	BusyOn(owner, provider string) string
}

// Config are the prompt service's limits and places.
type Config struct {
	// DataDir holds logs/prompts/<id>.log, each prompt's raw CLI output
	// (redacted), for debugging.
	DataDir string
	// DefaultTimeout and MaxTimeout bound a CLI run (600 s and 3600 s).
	DefaultTimeout, MaxTimeout time.Duration
	// LeaseWait bounds the wait at the API for a prompt of the same
	// provider running on another VM (default 10 s; see package creds).
	LeaseWait time.Duration
	// ReadyTimeout bounds the wait for the VM to be ready (default 5 min).
	ReadyTimeout time.Duration
}

// Limits of what a prompt request may carry.
const (
	maxPromptBytes = 256 << 10
	maxModelLen    = 128
	maxLineBytes   = 1 << 20
	maxRawLogBytes = 8 << 20
	cancelGrace    = 5 * time.Second
	// ensureTimeout bounds taking the lease and delivering the files (a
	// hand-over syncs another VM back first).
	ensureTimeout = 2 * time.Minute
	// streamGrace is how long past its timeout a CLI's stream may stay
	// open: the agent kills the command at the timeout; if the guest does
	// not end the stream by then, the host closes it.
	streamGrace = 30 * time.Second
	stderrKeep  = 16 << 10
	// maxStoredBytes and maxStoredEvents bound what one prompt's CLI (code
	// in the guest) can make the daemon store: past them the stream says
	// it was cut and further output is dropped (the raw log keeps its own
	// first maxRawLogBytes).
	maxStoredBytes  = 8 << 20
	maxStoredEvents = 50000
)

// Service runs prompts. Safe for concurrent use.
type Service struct {
	cfg     Config
	store   store.Store
	bus     *events.Bus
	vms     VMs
	creds   Credentials
	recipes login.Recipes
	log     *slog.Logger

	mu      sync.Mutex // guards runs, waiters and closing
	runs    map[string]*run
	waiters map[string]chan struct{} // closed on each new event of a prompt
	closing bool
	wg      sync.WaitGroup
}

// run is a live prompt.
type run struct {
	cancel context.CancelCauseFunc
	done   chan struct{}
}

var (
	errCancelled = errors.New("cancelled by the user")
	errShutdown  = errors.New("the daemon is shutting down")
)

// New returns a prompt service.
func New(cfg Config, st store.Store, bus *events.Bus, vms VMs, cr Credentials, recipes login.Recipes, log *slog.Logger) *Service {
	if cfg.DefaultTimeout <= 0 {
		cfg.DefaultTimeout = 10 * time.Minute
	}
	if cfg.MaxTimeout <= 0 {
		cfg.MaxTimeout = time.Hour
	}
	if cfg.LeaseWait <= 0 {
		cfg.LeaseWait = 10 * time.Second
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 5 * time.Minute
	}
	return &Service{cfg: cfg, store: st, bus: bus, vms: vms, creds: cr, recipes: recipes, log: log, runs: map[string]*run{}, waiters: map[string]chan struct{}{}}
}

func terminal(state string) bool {
	return state == api.PromptCompleted || state == api.PromptFailed || state == api.PromptCancelled
}

// Create validates a prompt, picks its VM and starts it in the background.
func (s *Service) Create(ctx context.Context, caller store.User, req api.CreatePromptRequest) (api.Prompt, error) {
	r := s.recipes[req.Provider]
	if r == nil {
		return api.Prompt{}, errs.E(errs.Invalid, "provider %q: want one of %s", req.Provider, strings.Join(s.recipes.Names(), ", "))
	}
	switch {
	case strings.TrimSpace(req.Prompt) == "":
		return api.Prompt{}, errs.E(errs.Invalid, "prompt is required")
	case len(req.Prompt) > maxPromptBytes:
		return api.Prompt{}, errs.E(errs.TooLarge, "prompt is %d bytes; the limit is %d", len(req.Prompt), maxPromptBytes)
	case !utf8.ValidString(req.Prompt) || strings.ContainsRune(req.Prompt, 0):
		return api.Prompt{}, errs.E(errs.Invalid, "prompt must be UTF-8 text without NUL bytes")
	case req.Cwd != "" && (!strings.HasPrefix(req.Cwd, "/") || filepath.Clean(req.Cwd) != req.Cwd || strings.ContainsRune(req.Cwd, 0)):
		return api.Prompt{}, errs.E(errs.Invalid, "cwd %q: want a clean absolute path", req.Cwd)
	case len(req.Model) > maxModelLen || strings.ContainsFunc(req.Model, func(c rune) bool { return c <= ' ' || c == 0x7f }):
		return api.Prompt{}, errs.E(errs.Invalid, "model: at most %d printable characters without spaces", maxModelLen)
	case req.TimeoutS < 0 || time.Duration(req.TimeoutS)*time.Second > s.cfg.MaxTimeout:
		return api.Prompt{}, errs.E(errs.Invalid, "timeout_s %d: want 1 to %d (0 for the default, %d)", req.TimeoutS, int(s.cfg.MaxTimeout/time.Second), int(s.cfg.DefaultTimeout/time.Second))
	}
	if req.TimeoutS == 0 {
		req.TimeoutS = int(s.cfg.DefaultTimeout / time.Second)
	}
	if _, err := s.store.GetCredential(ctx, caller.ID, r.Name); errors.Is(err, store.ErrNotFound) {
		return api.Prompt{}, errs.E(errs.Conflict, "you have not connected %s: log in first (hangar auth login %s)", r.DisplayName, r.Name)
	} else if err != nil {
		return api.Prompt{}, err
	}
	vm, err := s.pickVM(ctx, caller, req.VMID)
	if err != nil {
		return api.Prompt{}, err
	}
	// A prompt of this provider running on another VM holds the
	// credential: wait for it a bounded time, else say who holds it.
	deadline := time.Now().Add(s.cfg.LeaseWait)
	for {
		busy := s.creds.BusyOn(caller.ID, r.Name)
		if busy == "" || busy == vm.ID {
			break
		}
		if time.Now().After(deadline) {
			return api.Prompt{}, errs.E(errs.Conflict, "%s", (&creds.LeaseHeldError{Provider: r.Name, VMID: busy}).Error())
		}
		select {
		case <-ctx.Done():
			return api.Prompt{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	now := time.Now().UTC()
	p := store.Prompt{ID: store.NewID("prm"), OwnerID: caller.ID, VMID: vm.ID, Provider: r.Name, State: api.PromptQueued,
		Prompt: req.Prompt, Cwd: req.Cwd, Model: req.Model, TimeoutS: req.TimeoutS, CreatedAt: now}
	if err := s.store.CreatePrompt(ctx, p); err != nil {
		return api.Prompt{}, err
	}
	s.log.Info("prompt queued", "prompt_id", p.ID, "user_id", caller.ID, "provider", r.Name, "vm_id", vm.ID, "prompt_bytes", len(req.Prompt))
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return api.Prompt{}, errs.E(errs.Unavailable, "the daemon is shutting down; retry shortly")
	}
	rctx, cancel := context.WithCancelCause(context.Background())
	rn := &run{cancel: cancel, done: make(chan struct{})}
	s.runs[p.ID] = rn
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer close(rn.done)
		defer cancel(nil)
		s.execute(rctx, caller, p, r)
		s.mu.Lock()
		delete(s.runs, p.ID)
		s.mu.Unlock()
	}()
	return s.toAPI(p), nil
}

// pickVM returns the VM a prompt runs in: the one asked for (a CLI
// workspace of the caller's), else the caller's first CLI workspace, else
// a new one.
func (s *Service) pickVM(ctx context.Context, caller store.User, id string) (api.VM, error) {
	if id != "" {
		vm, err := s.vms.Get(ctx, caller, id)
		if err != nil {
			return vm, err
		}
		if vm.OwnerID != caller.ID {
			return vm, errs.E(errs.NotFound, "vm %s not found", id)
		}
		if vm.Kind != api.KindCLI || vm.Purpose != api.PurposeWorkspace {
			return vm, errs.E(errs.Invalid, "vm %s is a %s %s VM; prompts run in cli workspace VMs", id, vm.Kind, vm.Purpose)
		}
		return vm, nil
	}
	vms, err := s.vms.List(ctx, caller)
	if err != nil {
		return api.VM{}, err
	}
	for _, v := range vms { // oldest first
		if v.OwnerID == caller.ID && v.Kind == api.KindCLI && v.Purpose == api.PurposeWorkspace && v.State != api.VMStopping {
			return v, nil
		}
	}
	vm, err := s.vms.Create(ctx, caller, api.CreateVMRequest{Kind: api.KindCLI})
	if err != nil {
		return vm, fmt.Errorf("create your CLI workspace VM: %w", err)
	}
	s.log.Info("created a cli workspace vm for prompts", "user_id", caller.ID, "vm_id", vm.ID)
	return vm, nil
}

// ending is how a prompt ended.
type ending struct {
	state    string
	reason   string
	message  string
	exitCode *int
}

// execute runs one prompt to its end.
func (s *Service) execute(ctx context.Context, caller store.User, p store.Prompt, r *login.Recipe) {
	log := s.log.With("prompt_id", p.ID, "provider", p.Provider, "vm_id", p.VMID)
	started := time.Now()
	var usage *api.PromptUsage
	end := s.runCLI(ctx, log, caller, &p, r, &usage)
	if cause := context.Cause(ctx); cause != nil && end.state != api.PromptCompleted {
		switch {
		case errors.Is(cause, errCancelled):
			end = ending{state: api.PromptCancelled, reason: api.ReasonCancelled, message: "the prompt was cancelled", exitCode: end.exitCode}
		case errors.Is(cause, errShutdown):
			end = ending{state: api.PromptFailed, reason: api.ReasonRestart, message: "the daemon shut down while this prompt ran; run it again", exitCode: end.exitCode}
		}
	}
	s.finish(log, &p, end, usage, time.Since(started))
}

// runCLI waits for the VM and the credential, runs the CLI and streams its
// events. It returns how the prompt ended.
func (s *Service) runCLI(ctx context.Context, log *slog.Logger, caller store.User, p *store.Prompt, r *login.Recipe, usage **api.PromptUsage) ending {
	fail := func(reason, format string, args ...any) ending {
		return ending{state: api.PromptFailed, reason: reason, message: fmt.Sprintf(format, args...)}
	}
	// The VM: start it when stopped, then wait until it is ready.
	rctx, rcancel := context.WithTimeout(ctx, s.cfg.ReadyTimeout)
	vm, err := s.vms.Get(rctx, caller, p.VMID)
	if err == nil && (vm.State == api.VMStopped || vm.State == api.VMFailed) {
		log.Info("starting the cli vm for a prompt", "state", vm.State)
		_, err = s.vms.Start(rctx, caller, p.VMID)
	}
	if err == nil {
		_, err = s.vms.WaitReady(rctx, caller, p.VMID)
	}
	rcancel()
	if err != nil {
		if ctx.Err() != nil {
			return fail(api.ReasonCancelled, "the prompt ended before its VM was ready")
		}
		return fail(api.ReasonVM, "the CLI VM %s is not ready: %v", p.VMID, err)
	}
	// The credential: one prompt per user and provider at a time.
	release, err := s.creds.Use(ctx, p.OwnerID, p.Provider, p.VMID)
	if err != nil {
		var lh *creds.LeaseHeldError
		if errors.As(err, &lh) {
			return fail(api.ReasonLeaseHeld, "%s", lh.Error())
		}
		return fail(api.ReasonCancelled, "the prompt ended while waiting for the %s credentials", r.DisplayName)
	}
	defer release()
	ectx, ecancel := context.WithTimeout(ctx, ensureTimeout)
	secrets, err := s.creds.Ensure(ectx, p.OwnerID, p.Provider, p.VMID)
	ecancel()
	if errors.Is(err, creds.ErrNotConnected) {
		return fail(api.ReasonNotConnected, "you have not connected %s (or logged out): log in with hangar auth login %s", r.DisplayName, r.Name)
	}
	if err != nil {
		var lh *creds.LeaseHeldError
		if errors.As(err, &lh) {
			return fail(api.ReasonLeaseHeld, "%s", lh.Error())
		}
		log.Warn("credential delivery failed", "err", err)
		return fail(api.ReasonVM, "the %s credentials could not be put into VM %s: %v", r.DisplayName, p.VMID, err)
	}
	red := newRedactor(secrets)
	defer func() {
		// Read the files back while the slot is held: a refresh the CLI
		// did is re-sealed before another prompt can use the credential.
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.creds.SyncBack(sctx, p.OwnerID, p.Provider, p.VMID); err != nil {
			log.Warn("credential sync-back after the prompt failed", "err", err)
		}
	}()

	link, err := s.vms.Link(ctx, caller, p.VMID)
	if err != nil {
		return fail(api.ReasonVM, "the CLI VM %s has no agent link: %v", p.VMID, err)
	}
	// running
	prev := p.State
	p.State, p.StartedAt = api.PromptRunning, time.Now().UTC()
	if err := s.store.UpdatePrompt(context.Background(), *p, prev); err != nil {
		return fail(api.ReasonCancelled, "the prompt changed state before it could run: %v", err)
	}
	s.appendEvent(log, p.ID, api.PromptEventStarted, api.PromptStarted{VMID: p.VMID, Provider: p.Provider, Model: p.Model})
	s.publish(p.OwnerID, "prompt_started", p.ID, map[string]any{"provider": p.Provider, "vm_id": p.VMID})
	log.Info("prompt running")

	cmd := r.Prompt
	user := cmd.User
	if user == "" {
		user = "hangar"
	}
	home := "/home/" + user
	if user == "root" {
		home = "/root"
	}
	env := map[string]string{"HOME": home, "LANG": "C.UTF-8", "TERM": "dumb", "NO_COLOR": "1", "CI": "1"}
	for k, v := range cmd.Env {
		env[k] = v
	}
	cwd := p.Cwd
	if cwd == "" {
		cwd = home
	}
	timeout := time.Duration(p.TimeoutS) * time.Second
	sess, err := link.StartExec(ctx, proto.ExecRequest{Argv: cmd.Args(p.Prompt, p.Model), Env: env, Dir: cwd, User: user, Timeout: proto.Duration(timeout)})
	if err != nil {
		return fail(api.ReasonVM, "could not start %s in VM %s: %s", cmd.Argv[0], p.VMID, red.apply(err.Error()))
	}
	defer sess.Close()
	// No CLI gets input: codex would wait for stdin to close, gemini
	// would append it to the prompt.
	if err := sess.CloseStdin(); err != nil {
		log.Warn("close the CLI's stdin", "err", err)
	}
	// Cancelling sends SIGTERM to the CLI's process group, then closes the
	// stream, which makes the agent SIGKILL the group.
	hostStop := time.AfterFunc(timeout+streamGrace, func() {
		log.Warn("the CLI's stream outlived its timeout; closing it on the host", "timeout", timeout)
		sess.Close()
	})
	defer hostStop.Stop()
	stopCancel := context.AfterFunc(ctx, func() {
		_ = sess.Signal(syscall.SIGTERM)
		time.AfterFunc(cancelGrace, func() { sess.Close() })
	})
	defer stopCancel()

	raw := s.openRawLog(log, p.ID)
	defer raw.Close()
	parser, err := cliout.NewParser(cmd.Format)
	if err != nil {
		return fail(api.ReasonCLI, "provider %s: %v", r.Name, err)
	}
	var result *cliout.Event
	var outTail tailBuffer
	storedBytes, storedEvents, cut := 0, 0, false
	// stream stores one parsed event unless the prompt's budget is spent.
	stream := func(typ string, data any, size int) {
		if cut {
			return
		}
		if storedBytes+size > maxStoredBytes || storedEvents >= maxStoredEvents {
			cut = true
			log.Warn("prompt output over its storage bound; the rest is dropped", "bytes", storedBytes, "events", storedEvents)
			s.appendEvent(log, p.ID, api.PromptEventOutput, api.PromptOutput{Text: fmt.Sprintf("\n[hangar: output cut after %d MiB / %d events; the rest was not stored]\n", maxStoredBytes>>20, maxStoredEvents)})
			return
		}
		storedBytes += size
		storedEvents++
		s.appendEvent(log, p.ID, typ, data)
	}
	// early is set when a line shows the CLI will not succeed (a recipe's
	// early failure pattern): the CLI is stopped at once.
	var early string
	checkEarly := func(line []byte) {
		if early != "" {
			return
		}
		if kind := cmd.EarlyFailure(login.StripANSI(string(line))); kind != "" {
			early = kind
			log.Info("the CLI's output shows it cannot succeed; stopping it", "kind", kind)
			_ = sess.Signal(syscall.SIGTERM)
			time.AfterFunc(cancelGrace, func() { sess.Close() })
		}
	}
	stdout := newLineWriter(func(line []byte) {
		line = []byte(red.apply(string(line)))
		raw.line("out", line)
		checkEarly(line)
		for _, ev := range parser.Line(line) {
			switch ev.Type {
			case "output":
				outTail.Write([]byte(ev.Text))
				stream(api.PromptEventOutput, api.PromptOutput{Text: red.apply(ev.Text)}, len(ev.Text))
			case "tool":
				if ev.Tool != nil {
					t := *ev.Tool
					t.Input, t.Output = red.apply(t.Input), red.apply(t.Output)
					stream(api.PromptEventTool, api.PromptTool{Name: t.Name, ID: t.ID, Phase: t.Phase, Input: t.Input, Output: t.Output, Status: t.Status}, len(t.Name)+len(t.Input)+len(t.Output))
				}
			case "usage":
				if ev.Usage != nil {
					u := api.PromptUsage{InputTokens: ev.Usage.InputTokens, OutputTokens: ev.Usage.OutputTokens, CachedTokens: ev.Usage.CachedTokens, CostUSD: ev.Usage.CostUSD}
					*usage = &u
					stream(api.PromptEventUsage, u, 64)
				}
			case "result":
				e := ev
				result = &e
			}
		}
	})
	var errTail tailBuffer
	stderr := newLineWriter(func(line []byte) {
		line = []byte(red.apply(string(line)))
		raw.line("err", line)
		checkEarly(line)
		errTail.Write(append(line, '\n'))
	})
	st, werr := sess.Wait(stdout, stderr)
	stdout.flush()
	stderr.flush()
	code := st.ExitCode
	if werr != nil && early == "" {
		if ctx.Err() != nil {
			return ending{state: api.PromptFailed, reason: api.ReasonCancelled, message: "the prompt was stopped"}
		}
		return fail(api.ReasonVM, "lost the CLI's output stream from VM %s: %s", p.VMID, red.apply(werr.Error()))
	}
	log.Info("prompt cli exited", "exit_code", code, "timed_out", st.TimedOut, "signal", st.Signal)
	detail := ""
	if result != nil && result.Message != "" {
		detail = result.Message
	}
	all := login.StripANSI(outTail.String() + "\n" + errTail.String() + "\n" + detail)
	kind := early
	if kind == "" {
		kind = cmd.Classify(all)
	}
	if st.TimedOut {
		if kind == "unreachable" {
			// A CLI that retries a missing network until it is killed
			// failed for that reason, not for slowness.
			return ending{state: api.PromptFailed, reason: api.ReasonUnreachable, exitCode: &code,
				message: fmt.Sprintf("%s's provider is unreachable from VM %s (it needs %s): check the VM's network policy; the CLI was stopped after its timeout of %s", r.DisplayName, p.VMID, apiHosts(r), timeout)}
		}
		return ending{state: api.PromptFailed, reason: api.ReasonTimeout, message: fmt.Sprintf("the prompt ran longer than its timeout of %s and was stopped", timeout), exitCode: &code}
	}
	if ctx.Err() != nil {
		return ending{state: api.PromptFailed, reason: api.ReasonCancelled, message: "the prompt was stopped", exitCode: &code}
	}
	isErr := code != 0 || (result != nil && result.IsError) || early != ""
	if !isErr {
		return ending{state: api.PromptCompleted, exitCode: &code}
	}
	switch kind {
	case "auth":
		return ending{state: api.PromptFailed, reason: api.ReasonAuth, exitCode: &code,
			message: fmt.Sprintf("%s refused the stored login (token expired or revoked): log in again with hangar auth login %s", r.DisplayName, r.Name)}
	case "unreachable":
		return ending{state: api.PromptFailed, reason: api.ReasonUnreachable, exitCode: &code,
			message: fmt.Sprintf("%s's provider is unreachable from VM %s (it needs %s): check the VM's network policy", r.DisplayName, p.VMID, apiHosts(r))}
	}
	if detail == "" {
		detail = lastLine(errTail.String())
	}
	if detail == "" {
		detail = lastLine(outTail.String())
	}
	return ending{state: api.PromptFailed, reason: api.ReasonCLI, exitCode: &code,
		message: red.apply(fmt.Sprintf("%s exited with code %d: %s", cmd.Argv[0], code, sanitize(detail)))}
}

// apiHosts names the hosts a provider's CLI needs.
func apiHosts(r *login.Recipe) string {
	if len(r.APIHosts) == 0 {
		return "its API"
	}
	return strings.Join(r.APIHosts, ", ")
}

// finish records the end, appends the final event and publishes it.
func (s *Service) finish(log *slog.Logger, p *store.Prompt, end ending, usage *api.PromptUsage, took time.Duration) {
	prev := p.State
	p.State, p.Reason, p.Error, p.ExitCode, p.FinishedAt = end.state, end.reason, end.message, end.exitCode, time.Now().UTC()
	if usage != nil {
		p.Usage, _ = json.Marshal(usage)
	}
	if err := s.store.UpdatePrompt(context.Background(), *p, prev); err != nil {
		log.Error("record the end of a prompt", "err", err)
		return
	}
	data := api.PromptEnd{ExitCode: end.exitCode, DurationMS: took.Milliseconds(), Reason: end.reason, Message: end.message}
	if end.state == api.PromptCompleted {
		s.appendEvent(log, p.ID, api.PromptEventCompleted, data)
		s.publish(p.OwnerID, "prompt_completed", p.ID, map[string]any{"provider": p.Provider, "vm_id": p.VMID, "duration_ms": data.DurationMS})
		log.Info("prompt completed", "duration_ms", data.DurationMS)
		return
	}
	s.appendEvent(log, p.ID, api.PromptEventFailed, data)
	s.publish(p.OwnerID, "prompt_failed", p.ID, map[string]any{"provider": p.Provider, "vm_id": p.VMID, "state": end.state, "reason": end.reason, "message": end.message})
	log.Warn("prompt failed", "state", end.state, "reason", end.reason, "message", end.message)
}

func (s *Service) appendEvent(log *slog.Logger, id, typ string, data any) {
	b, _ := json.Marshal(data)
	if _, err := s.store.AppendPromptEvent(context.Background(), store.PromptEvent{PromptID: id, Type: typ, Data: b}); err != nil {
		log.Error("store a prompt event", "type", typ, "err", err)
		return
	}
	s.mu.Lock()
	if ch := s.waiters[id]; ch != nil {
		close(ch)
		delete(s.waiters, id)
	}
	s.mu.Unlock()
}

func (s *Service) publish(owner, typ, subject string, data any) {
	if _, err := s.bus.Publish(context.Background(), owner, typ, subject, data); err != nil {
		s.log.Warn("publish", "type", typ, "err", err)
	}
}

// ---- output plumbing ----

// lineWriter splits a stream into lines (a line longer than maxLineBytes is
// cut there) and hands each to fn.
type lineWriter struct {
	buf bytes.Buffer
	fn  func([]byte)
}

func newLineWriter(fn func([]byte)) *lineWriter { return &lineWriter{fn: fn} }

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			room := maxLineBytes - w.buf.Len()
			if len(p) < room {
				w.buf.Write(p)
				return n, nil
			}
			w.buf.Write(p[:room])
			p = p[room:]
			w.emit()
			continue
		}
		w.buf.Write(p[:i])
		p = p[i+1:]
		w.emit()
	}
	return n, nil
}

func (w *lineWriter) emit() {
	line := bytes.TrimRight(w.buf.Bytes(), "\r")
	w.fn(append([]byte(nil), line...))
	w.buf.Reset()
}

func (w *lineWriter) flush() {
	if w.buf.Len() > 0 {
		w.emit()
	}
}

// tailBuffer keeps the last stderrKeep bytes written.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > stderrKeep {
		t.b = append([]byte(nil), t.b[len(t.b)-stderrKeep:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			if len(l) > 500 {
				l = l[:500] + "…"
			}
			return l
		}
	}
	return ""
}

// redactor replaces the delivered credential's token-like values.
type redactor struct{ secrets []string }

func newRedactor(secrets []string) *redactor { return &redactor{secrets: secrets} }

func (r *redactor) apply(s string) string {
	for _, sec := range r.secrets {
		if sec != "" && strings.Contains(s, sec) {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return s
}

// rawLog is a prompt's raw CLI output, capped.
type rawLog struct {
	f       *os.File
	written int64
}

func (s *Service) openRawLog(log *slog.Logger, id string) *rawLog {
	dir := filepath.Join(s.cfg.DataDir, "logs", "prompts")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		log.Warn("prompt raw log", "err", err)
		return &rawLog{}
	}
	f, err := os.OpenFile(filepath.Join(dir, id+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		log.Warn("prompt raw log", "err", err)
		return &rawLog{}
	}
	return &rawLog{f: f}
}

func (l *rawLog) line(stream string, b []byte) {
	if l.f == nil || l.written > maxRawLogBytes {
		return
	}
	n, _ := fmt.Fprintf(l.f, "%s %s %s\n", time.Now().UTC().Format("15:04:05.000"), stream, b)
	l.written += int64(n)
	if l.written > maxRawLogBytes {
		fmt.Fprintln(l.f, "[raw log truncated at its size limit]")
	}
}

func (l *rawLog) Close() {
	if l.f != nil {
		l.f.Close()
	}
}

// RawLogPath is where a prompt's raw output is kept.
func (s *Service) RawLogPath(id string) string {
	return filepath.Join(s.cfg.DataDir, "logs", "prompts", id+".log")
}

var _ io.Writer = (*lineWriter)(nil)
