// Package agent is the guest side of hangar: the hangar-agent that runs as
// PID 1 in every VM. It supervises the image's services, keeps their output
// in rings and on the console, and serves the host over the agent link
// (see internal/agentlink/proto for the protocol). It is imported only by
// cmd/hangar-agent.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// Defaults for Config.
const (
	DefaultRingBytes    = 256 << 10
	DefaultMaxFileBytes = 256 << 20
)

// Config configures an Agent.
type Config struct {
	// Token is the per-VM token every request must carry. Required.
	Token string
	// Version is the agent's build version, reported in health and the handshake.
	Version string
	// Services are the supervised services (see LoadServices).
	Services   []proto.ServiceSpec
	Supervisor SupervisorConfig
	// Console receives every log line prefixed with "[service] "; nil discards.
	Console io.Writer
	// RingBytes bounds each service's kept output (default DefaultRingBytes).
	RingBytes int
	// MaxFileBytes bounds file puts and gets (default DefaultMaxFileBytes).
	MaxFileBytes int64
	// LogLevel of the agent's own log (default Info).
	LogLevel slog.Level
	// PID1 is reported in health; the caller does the PID 1 duties.
	PID1 bool
	// SetClock sets the system clock; nil leaves the clock alone (not PID 1).
	SetClock func(time.Time) error
	// PowerOff runs after the services stopped on a shutdown request; nil
	// only stops the services (not PID 1).
	PowerOff func(reboot bool)
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Reseed mixes host randomness into the kernel's pool and forces a
	// reseed (ReseedKernelRNG); nil skips it (not PID 1).
	Reseed func(seed []byte) error
	// SetHostname sets the guest's hostname; nil leaves it (not PID 1).
	SetHostname func(name string) error
}

// Agent serves the host and supervises services.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	logs    *logHub
	console *consoleSink
	procs   *procTable
	events  *eventBus
	sup     *supervisor
	started time.Time
	// bootAtStart is CLOCK_BOOTTIME when the agent was created.
	bootAtStart time.Duration
	handler     http.Handler

	// net is the guest network the host configured.
	net netState

	reverseMu sync.Mutex // guards reverse
	// reverse holds the guest listeners of reverse forwards, by address.
	reverse map[string]net.Listener

	// tok is the token requests must carry (rekey.go).
	tok tokenBox

	shutdownOnce sync.Once
	// done is closed when a shutdown has completed.
	done chan struct{}
}

// New builds an agent. Call Run to start the services and one of the Serve
// methods to serve the host.
func New(cfg Config) (*Agent, error) {
	if cfg.Token == "" {
		return nil, errors.New("agent token is empty")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RingBytes <= 0 {
		cfg.RingBytes = DefaultRingBytes
	}
	if cfg.MaxFileBytes <= 0 {
		cfg.MaxFileBytes = DefaultMaxFileBytes
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	a := &Agent{cfg: cfg, events: newEventBus(), started: cfg.Now(), bootAtStart: bootClock(), done: make(chan struct{}), reverse: map[string]net.Listener{}}
	a.tok.set(cfg.Token)
	if cfg.Console != nil {
		a.console = newConsoleSink(cfg.Console)
	}
	a.logs = newLogHub(cfg.RingBytes, a.console, cfg.Now)
	a.log = slog.New(slog.NewTextHandler(newLineWriter(a.logs, proto.AgentService), &slog.HandlerOptions{
		Level: cfg.LogLevel,
		ReplaceAttr: func(groups []string, at slog.Attr) slog.Attr {
			// The console and the ring carry their own time; drop slog's.
			if len(groups) == 0 && at.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return at
		},
	}))
	a.procs = newProcTable(a.log)
	sup, err := newSupervisor(cfg.Supervisor, cfg.Services, a.log, a.logs, a.procs, a.events, cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("services: %w", err)
	}
	a.sup = sup
	a.handler = a.routes()
	return a, nil
}

// SetServices replaces the declared services; call it before Run (PID 1
// reads the declarations only after it has switched to the overlay root,
// but wants its logger, and thus the agent, from the first instruction).
func (a *Agent) SetServices(specs []proto.ServiceSpec) error {
	sup, err := newSupervisor(a.cfg.Supervisor, specs, a.log, a.logs, a.procs, a.events, a.cfg.Now)
	if err != nil {
		return fmt.Errorf("services: %w", err)
	}
	a.cfg.Services = specs
	a.sup = sup
	return nil
}

// Logger is the agent's logger: its lines go to the console and the
// "agent" ring.
func (a *Agent) Logger() *slog.Logger { return a.log }

// Handler is the agent's HTTP handler (authenticated).
func (a *Agent) Handler() http.Handler { return a.handler }

// Done is closed once a shutdown requested by the host has completed.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Run starts the reaper and the services and blocks until ctx ends or a
// shutdown completes; on ctx end it stops the services.
func (a *Agent) Run(ctx context.Context) error {
	// The reaper outlives ctx: stopping the services needs their exit statuses.
	reapCtx, stopReaper := context.WithCancel(context.WithoutCancel(ctx))
	defer stopReaper()
	go a.procs.run(reapCtx)
	a.sup.start(ctx)
	a.log.Info("agent started", "version", a.cfg.Version, "pid1", a.cfg.PID1, "services", len(a.cfg.Services))
	select {
	case <-ctx.Done():
		a.sup.stop()
		return ctx.Err()
	case <-a.done:
		return nil
	}
}

// Shutdown stops the services and then calls Config.PowerOff. It runs once;
// later calls wait for the first.
func (a *Agent) Shutdown(reboot bool) {
	a.shutdownOnce.Do(func() {
		a.log.Info("shutting down", "reboot", reboot)
		a.events.publish(proto.Event{Type: proto.EventShutdown, Time: a.cfg.Now()})
		a.sup.stop()
		a.log.Info("services stopped")
		if a.console != nil {
			a.console.flush(2 * time.Second)
		}
		if a.cfg.PowerOff != nil {
			a.cfg.PowerOff(reboot)
		}
		close(a.done)
	})
	<-a.done
}

func (a *Agent) setClock(t time.Time) {
	if a.cfg.SetClock == nil {
		return
	}
	before := a.cfg.Now()
	if err := a.cfg.SetClock(t); err != nil {
		a.log.Error("set clock", "err", err)
		return
	}
	a.log.Info("clock set from host", "skew", t.Sub(before).Round(time.Millisecond).String())
}

func (a *Agent) health() proto.Health {
	return a.healthFrom(a.sup.isReady(), a.sup.statuses())
}

// bootClock reads CLOCK_BOOTTIME: time since the kernel started, immune to
// the clock being set from the host.
func bootClock() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func (a *Agent) healthFrom(ready bool, services []proto.ServiceStatus) proto.Health {
	h := proto.Health{
		AgentVersion:    a.cfg.Version,
		ProtocolVersion: proto.Version,
		PID1:            a.cfg.PID1,
		Uptime:          proto.Duration(a.cfg.Now().Sub(a.started)),
		AgentStartedAt:  proto.Duration(a.bootAtStart),
		ReadyAt:         proto.Duration(a.sup.readyAt()),
		Ready:           ready,
		Services:        services,
	}
	h.Hostname, _ = os.Hostname()
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		h.KernelRelease = unix.ByteSliceToString(uts.Release[:])
	}
	return h
}

func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+proto.PathHealth, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.health())
	})
	mux.HandleFunc("GET "+proto.PathServices, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.sup.statuses())
	})
	mux.HandleFunc("GET "+proto.PathEvents, a.handleEvents)
	mux.HandleFunc("GET "+proto.PathLogs, a.handleLogs)
	mux.HandleFunc("POST "+proto.PathExec, a.handleExec)
	mux.HandleFunc("PUT "+proto.PathFiles, a.handlePutFile)
	mux.HandleFunc("GET "+proto.PathFiles, a.handleGetFile)
	mux.HandleFunc("POST "+proto.PathForward, a.handleForward)
	mux.HandleFunc("POST "+proto.PathReverse, a.handleReverse)
	mux.HandleFunc("POST "+proto.PathNetwork, a.handleNetwork)
	mux.HandleFunc("POST "+proto.PathClock, func(w http.ResponseWriter, r *http.Request) {
		var req proto.ClockRequest
		if !readJSON(w, r, &req) {
			return
		}
		a.setClock(time.Unix(0, req.UnixNano))
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST "+proto.PathRekey, a.handleRekey)
	mux.HandleFunc("POST "+proto.PathShutdown, func(w http.ResponseWriter, r *http.Request) {
		var req proto.ShutdownRequest
		if !readJSON(w, r, &req) {
			return
		}
		w.WriteHeader(http.StatusAccepted)
		go a.Shutdown(req.Reboot)
	})
	return a.authenticate(mux)
}

// authenticate checks the per-VM token in constant time.
func (a *Agent) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.tok.matches(r.Header.Get(proto.TokenHeader)) {
			a.log.Warn("request refused: missing or wrong token", "method", r.Method, "path", r.URL.Path)
			writeError(w, http.StatusUnauthorized, proto.CodeUnauthorized, "missing or wrong token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *Agent) handleEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, proto.CodeInternal, "streaming unsupported")
		return
	}
	ch := a.sup.subscribe(func(ready bool, services []proto.ServiceStatus) proto.Event {
		h := a.healthFrom(ready, services)
		return proto.Event{Type: proto.EventHello, Time: a.cfg.Now(), Health: &h}
	})
	defer a.events.unsubscribe(ch)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return // fell behind; the host reconnects and gets a new hello
			}
			if err := enc.Encode(ev); err != nil {
				return
			}
			fl.Flush()
		case <-r.Context().Done():
			return
		}
	}
}

func (a *Agent) handleLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	service := q.Get(proto.QueryService)
	if service != "" && service != proto.AgentService && a.sup.services[service] == nil {
		writeError(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no service %q", service))
		return
	}
	tail, _ := strconv.Atoi(q.Get(proto.QueryTail))
	follow := q.Get(proto.QueryFollow) == "1" || q.Get(proto.QueryFollow) == "true"
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	if !follow {
		for _, l := range a.logs.backlog(service, tail) {
			if err := enc.Encode(l); err != nil {
				return
			}
		}
		return
	}
	backlog, sub := a.logs.subscribe(service, tail)
	defer a.logs.unsubscribe(sub)
	fl, _ := w.(http.Flusher)
	for _, l := range backlog {
		if err := enc.Encode(l); err != nil {
			return
		}
	}
	if fl != nil {
		fl.Flush()
	}
	for {
		select {
		case l := <-sub.ch:
			if err := enc.Encode(l); err != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		case <-r.Context().Done():
			return
		}
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, proto.ErrorBody{Error: &proto.Error{Status: status, Code: code, Message: msg}})
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "invalid JSON body: "+err.Error())
		return false
	}
	return true
}
