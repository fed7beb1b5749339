package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// SupervisorConfig tunes restarts and readiness; zero values take defaults.
type SupervisorConfig struct {
	// BackoffInitial is the delay before the first restart (default 200ms);
	// it doubles per restart up to BackoffMax (default 10s).
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// CrashLimit exits within CrashWindow mark a service failed (default 5 in 60s).
	CrashLimit  int
	CrashWindow time.Duration
	// ReadyPoll is the interval between readiness checks (default 50ms).
	ReadyPoll time.Duration
	// StopTimeout is how long services get after SIGTERM before SIGKILL (default 5s).
	StopTimeout time.Duration
	// KeepLines is how many output lines a failed service keeps in its status (default 20).
	KeepLines int
	// Settle is how long a service without a readiness check must stay up
	// to count as ready (default 500ms): one that dies at once must not
	// make the VM ready.
	Settle time.Duration
}

func (c *SupervisorConfig) defaults() {
	if c.BackoffInitial <= 0 {
		c.BackoffInitial = 200 * time.Millisecond
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 10 * time.Second
	}
	if c.CrashLimit <= 0 {
		c.CrashLimit = 5
	}
	if c.CrashWindow <= 0 {
		c.CrashWindow = 60 * time.Second
	}
	if c.ReadyPoll <= 0 {
		c.ReadyPoll = 50 * time.Millisecond
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = 5 * time.Second
	}
	if c.KeepLines <= 0 {
		c.KeepLines = 20
	}
	if c.Settle <= 0 {
		c.Settle = 500 * time.Millisecond
	}
}

// LoadServices reads every *.json in dir (sorted by file name). A missing
// directory means no services.
func LoadServices(dir string) ([]proto.ServiceSpec, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	sort.Strings(files)
	var specs []proto.ServiceSpec
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read service file: %w", err)
		}
		var s proto.ServiceSpec
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, fmt.Errorf("parse service file %s: %w", f, err)
		}
		specs = append(specs, s)
	}
	return specs, nil
}

// validateServices checks names, policies, references and cycles.
func validateServices(specs []proto.ServiceSpec) error {
	byName := map[string]*proto.ServiceSpec{}
	for i := range specs {
		s := &specs[i]
		if s.Name == "" || s.Name == proto.AgentService {
			return fmt.Errorf("service %d: name %q is empty or reserved", i, s.Name)
		}
		if _, dup := byName[s.Name]; dup {
			return fmt.Errorf("service %q declared twice", s.Name)
		}
		if len(s.Argv) == 0 {
			return fmt.Errorf("service %q: empty argv", s.Name)
		}
		switch s.Restart {
		case "", proto.RestartAlways, proto.RestartOnFailure, proto.RestartNever:
		default:
			return fmt.Errorf("service %q: unknown restart policy %q", s.Name, s.Restart)
		}
		if r := s.Ready; r != nil {
			n := 0
			for _, set := range []bool{r.TCP != "", r.File != "", len(r.Cmd) > 0} {
				if set {
					n++
				}
			}
			if n != 1 {
				return fmt.Errorf("service %q: ready must set exactly one of tcp, file, cmd", s.Name)
			}
		}
		byName[s.Name] = s
	}
	// Depth-first search for cycles; state 1 = on the stack, 2 = done.
	state := map[string]int{}
	var visit func(string) error
	visit = func(n string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("service dependency cycle through %q", n)
		case 2:
			return nil
		}
		state[n] = 1
		for _, d := range byName[n].After {
			if byName[d] == nil {
				return fmt.Errorf("service %q: after names unknown service %q", n, d)
			}
			if err := visit(d); err != nil {
				return err
			}
		}
		state[n] = 2
		return nil
	}
	for _, s := range specs {
		if err := visit(s.Name); err != nil {
			return err
		}
	}
	return nil
}

type service struct {
	spec proto.ServiceSpec
	// satisfied is closed once the service is ready (or exited with status
	// 0 and is not restarted): dependents may start.
	satisfied chan struct{}

	// Fields below are guarded by supervisor.mu.
	status       proto.ServiceStatus
	satisfiedSet bool
	stopping     bool
}

// supervisor runs the image's services.
type supervisor struct {
	cfg    SupervisorConfig
	log    *slog.Logger
	logs   *logHub
	procs  *procTable
	events *eventBus
	now    func() time.Time

	// order is the declaration order, used for status listings.
	order    []string
	services map[string]*service
	wg       sync.WaitGroup
	// cancel ends the services' context at stop (pending and backing-off
	// services return; running ones are signalled).
	cancel context.CancelFunc

	mu sync.Mutex // guards every service's mutable fields, ready, stopping
	// ready is true once every required service is satisfied.
	ready    bool
	stopping bool
	// readyBoot is CLOCK_BOOTTIME when ready became true.
	readyBoot atomic.Int64
}

func (s *supervisor) readyAt() time.Duration { return time.Duration(s.readyBoot.Load()) }

func newSupervisor(cfg SupervisorConfig, specs []proto.ServiceSpec, log *slog.Logger, logs *logHub, procs *procTable, events *eventBus, now func() time.Time) (*supervisor, error) {
	cfg.defaults()
	if err := validateServices(specs); err != nil {
		return nil, err
	}
	s := &supervisor{cfg: cfg, log: log, logs: logs, procs: procs, events: events, now: now, services: map[string]*service{}}
	for _, sp := range specs {
		if sp.Restart == "" {
			sp.Restart = proto.RestartOnFailure
		}
		s.order = append(s.order, sp.Name)
		s.services[sp.Name] = &service{
			spec:      sp,
			satisfied: make(chan struct{}),
			status:    proto.ServiceStatus{Name: sp.Name, State: proto.StatePending, Required: sp.Required, Since: now()},
		}
	}
	return s, nil
}

// start launches one goroutine per service; each waits for its dependencies.
func (s *supervisor) start(ctx context.Context) {
	ctx, s.cancel = context.WithCancel(ctx)
	s.mu.Lock()
	s.checkReadyLocked()
	s.mu.Unlock()
	for _, name := range s.order {
		svc := s.services[name]
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.runService(ctx, svc)
		}()
	}
}

// statuses returns every service's status in declaration order.
func (s *supervisor) statuses() []proto.ServiceStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statusesLocked()
}

func (s *supervisor) statusesLocked() []proto.ServiceStatus {
	out := make([]proto.ServiceStatus, 0, len(s.order))
	for _, n := range s.order {
		st := s.services[n].status
		st.LastOutput = append([]string(nil), st.LastOutput...)
		out = append(out, st)
	}
	return out
}

func (s *supervisor) isReady() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready
}

// subscribe opens an event stream whose first event is built by hello from
// a consistent snapshot.
func (s *supervisor) subscribe(hello func(ready bool, services []proto.ServiceStatus) proto.Event) chan proto.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.events.subscribe(hello(s.ready, s.statusesLocked()))
}

// setState records a state change and publishes it. Caller holds s.mu.
func (s *supervisor) setStateLocked(svc *service, state string) {
	svc.status.State = state
	svc.status.Since = s.now()
	if state == proto.StateReady && !svc.satisfiedSet {
		svc.satisfiedSet = true
		close(svc.satisfied)
	}
	st := svc.status
	st.LastOutput = append([]string(nil), st.LastOutput...)
	s.events.publish(proto.Event{Type: proto.EventService, Time: s.now(), Service: &st})
	s.log.Info("service state", "service", svc.spec.Name, "state", state, "pid", st.PID, "restarts", st.Restarts, "last_exit", st.LastExit)
	s.checkReadyLocked()
}

func (s *supervisor) checkReadyLocked() {
	if s.ready {
		return
	}
	for _, svc := range s.services {
		if svc.spec.Required && !svc.satisfiedSet {
			return
		}
	}
	s.ready = true
	s.readyBoot.Store(int64(bootClock()))
	s.log.Info("all required services ready", "boot_clock", bootClock().Round(time.Millisecond).String())
	s.events.publish(proto.Event{Type: proto.EventReady, Time: s.now()})
}

func (s *supervisor) runService(ctx context.Context, svc *service) {
	for _, dep := range svc.spec.After {
		select {
		case <-s.services[dep].satisfied:
		case <-ctx.Done():
			return
		}
	}
	var exits []time.Time
	backoff := s.cfg.BackoffInitial
	for {
		ws, err := s.runOnce(ctx, svc)
		s.mu.Lock()
		svc.status.PID = 0
		if err != nil {
			svc.status.LastExit = "start failed: " + err.Error()
			s.logs.add(svc.spec.Name, "hangar-agent: start failed: "+err.Error())
		} else {
			svc.status.LastExit = describeExit(ws)
		}
		success := err == nil && ws.Exited() && ws.ExitStatus() == 0
		if svc.stopping || s.stopping {
			s.setStateLocked(svc, proto.StateExited)
			s.mu.Unlock()
			return
		}
		if svc.spec.Restart == proto.RestartNever || (svc.spec.Restart == proto.RestartOnFailure && success) {
			if success && !svc.satisfiedSet {
				// A one-shot service that succeeded satisfies its dependents.
				svc.satisfiedSet = true
				close(svc.satisfied)
			}
			s.setStateLocked(svc, proto.StateExited)
			s.mu.Unlock()
			return
		}
		now := s.now()
		exits = append(exits, now)
		for len(exits) > 0 && now.Sub(exits[0]) > s.cfg.CrashWindow {
			exits = exits[1:]
		}
		if len(exits) >= s.cfg.CrashLimit {
			svc.status.LastOutput = s.logs.tailLines(svc.spec.Name, s.cfg.KeepLines)
			s.setStateLocked(svc, proto.StateFailed)
			s.mu.Unlock()
			s.logs.add(proto.AgentService, fmt.Sprintf("service %s failed: %d exits within %s, last: %s", svc.spec.Name, len(exits), s.cfg.CrashWindow, svc.status.LastExit))
			return
		}
		svc.status.Restarts++
		svc.status.LastOutput = s.logs.tailLines(svc.spec.Name, s.cfg.KeepLines)
		s.setStateLocked(svc, proto.StateCrashLoop)
		s.mu.Unlock()
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(backoff*2, s.cfg.BackoffMax)
	}
}

// runOnce starts the service, runs its readiness check, and returns its
// exit status.
func (s *supervisor) runOnce(ctx context.Context, svc *service) (unix.WaitStatus, error) {
	cmd, err := buildCmd(svc.spec.Argv, svc.spec.Env, svc.spec.Dir, svc.spec.User)
	if err != nil {
		return 0, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("output pipe: %w", err)
	}
	defer r.Close()
	// One pipe for stdout and stderr keeps the service's line order.
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr.Setpgid = true
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		w.Close()
		return 0, errors.New("supervisor is stopping")
	}
	waitCh, err := s.procs.start(cmd)
	w.Close()
	if err != nil {
		s.mu.Unlock()
		return 0, err
	}
	pid := cmd.Process.Pid
	svc.status.PID = pid
	s.setStateLocked(svc, proto.StateStarting)
	s.mu.Unlock()
	defer cmd.Process.Release()

	copied := make(chan struct{})
	go func() {
		defer close(copied)
		lw := newLineWriter(s.logs, svc.spec.Name)
		_, _ = io.Copy(lw, r)
		lw.Flush()
	}()

	readyCtx, cancelReady := context.WithCancel(ctx)
	defer cancelReady()
	go s.awaitReady(readyCtx, svc, pid)

	ws := <-waitCh
	cancelReady()
	// A daemonised grandchild may keep the pipe open; do not wait for it
	// forever.
	select {
	case <-copied:
	case <-time.After(time.Second):
		r.Close()
		<-copied
	}
	return ws, nil
}

func (s *supervisor) awaitReady(ctx context.Context, svc *service, pid int) {
	check := svc.spec.Ready
	if check == nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.cfg.Settle):
		}
	}
	for {
		if check == nil || s.checkOnce(ctx, check) {
			s.mu.Lock()
			if svc.status.PID == pid && svc.status.State == proto.StateStarting {
				s.setStateLocked(svc, proto.StateReady)
			}
			s.mu.Unlock()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.cfg.ReadyPoll):
		}
	}
}

func (s *supervisor) checkOnce(ctx context.Context, c *proto.ReadyCheck) bool {
	switch {
	case c.TCP != "":
		d := net.Dialer{Timeout: 500 * time.Millisecond}
		conn, err := d.DialContext(ctx, "tcp", c.TCP)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	case c.File != "":
		_, err := os.Stat(c.File)
		return err == nil
	case len(c.Cmd) > 0:
		cmd, err := buildCmd(c.Cmd, nil, "", "")
		if err != nil {
			return false
		}
		cmd.SysProcAttr.Setpgid = true
		waitCh, err := s.procs.start(cmd)
		if err != nil {
			return false
		}
		defer cmd.Process.Release()
		select {
		case ws := <-waitCh:
			return ws.Exited() && ws.ExitStatus() == 0
		case <-time.After(10 * time.Second):
			_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
			<-waitCh
			return false
		case <-ctx.Done():
			_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
			<-waitCh
			return false
		}
	}
	return false
}

// stop sends SIGTERM to every service's process group, then SIGKILL after
// StopTimeout, and waits for the service goroutines.
func (s *supervisor) stop() {
	s.mu.Lock()
	s.stopping = true
	var pids []int
	for _, svc := range s.services {
		svc.stopping = true
		if svc.status.PID > 0 {
			pids = append(pids, svc.status.PID)
		}
	}
	s.mu.Unlock()
	for _, pid := range pids {
		_ = unix.Kill(-pid, syscall.SIGTERM)
	}
	if s.cancel != nil {
		s.cancel()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-time.After(s.cfg.StopTimeout):
	}
	s.mu.Lock()
	for _, svc := range s.services {
		if svc.status.PID > 0 {
			_ = unix.Kill(-svc.status.PID, syscall.SIGKILL)
		}
	}
	s.mu.Unlock()
	<-done
}
