package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

func (m *Manager) get(ctx context.Context, caller store.User, id string) (store.VM, error) {
	v, err := m.store.GetVM(ctx, id, caller.Scope())
	if errors.Is(err, store.ErrNotFound) {
		return store.VM{}, errs.E(errs.NotFound, "vm %s not found", id)
	}
	return v, err
}

func (m *Manager) toAPI(v store.VM) api.VM {
	var sp specDoc
	_ = json.Unmarshal(v.Spec, &sp)
	var rt runtimeDoc
	_ = json.Unmarshal(v.Runtime, &rt)
	purpose := sp.Purpose
	if purpose == "" {
		purpose = api.PurposeWorkspace
	}
	out := api.VM{
		ID: v.ID, OwnerID: v.OwnerID, Kind: v.Kind, State: v.State, LastError: v.LastError, Purpose: purpose,
		VCPUs: sp.VCPUs, MemoryMiB: sp.MemoryMiB, Hypervisor: m.driver.Name(), Acceleration: m.accel,
		ImageID: rt.ImageID, KernelVersion: rt.KernelRelease, BootPhases: rt.Phases,
		CreatedAt: v.CreatedAt, UpdatedAt: v.UpdatedAt,
	}
	if v.State == api.VMReady {
		markUnresponsive(&out, m.inst(v.ID).unresponsive())
	}
	if h := rt.Hibernation; h != nil && v.State == api.VMHibernated {
		out.Hibernation = &api.Hibernation{SnapshotBytes: h.SizeBytes, HibernatedAt: h.At, DurationMS: h.FrozenMS}
	}
	return out
}

// Get returns one VM, with its services' states when it runs.
func (m *Manager) Get(ctx context.Context, caller store.User, id string) (api.VM, error) {
	v, err := m.get(ctx, caller, id)
	if err != nil {
		return api.VM{}, err
	}
	out := m.toAPI(v)
	m.addProviders(ctx, v.OwnerID, []*api.VM{&out})
	if c := m.inst(id).client(); c != nil {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if svcs, err := c.Services(sctx); err == nil {
			for _, s := range svcs {
				out.Services = append(out.Services, api.ServiceStatus{Name: s.Name, State: s.State, Restarts: s.Restarts, PID: s.PID, Required: s.Required, Error: serviceError(s)})
			}
		}
	}
	return out, nil
}

// Record returns any VM's record as the API shows it, without asking its
// agent anything (subsystems that need the state only).
func (m *Manager) Record(ctx context.Context, id string) (api.VM, error) {
	v, err := m.get(ctx, store.User{Role: store.RoleAdmin}, id)
	if err != nil {
		return api.VM{}, err
	}
	return m.toAPI(v), nil
}

// List returns the caller's VMs (admin: all), destroyed ones excluded.
func (m *Manager) List(ctx context.Context, caller store.User) ([]api.VM, error) {
	vs, err := m.store.ListVMs(ctx, caller.Scope())
	if err != nil {
		return nil, err
	}
	out := make([]api.VM, 0, len(vs))
	for _, v := range vs {
		if v.State == api.VMDestroyed || hidden(v) {
			continue
		}
		out = append(out, m.toAPI(v))
	}
	ptrs := make([]*api.VM, len(out))
	for i := range out {
		ptrs[i] = &out[i]
	}
	m.addProviders(ctx, caller.Scope(), ptrs)
	return out, nil
}

// addProviders fills in which providers' credential leases each VM holds
// (owner "" looks at everyone's).
func (m *Manager) addProviders(ctx context.Context, owner string, vms []*api.VM) {
	ls, err := m.store.ListLeases(ctx, owner)
	if err != nil {
		m.log.Warn("list credential leases", "err", err)
		return
	}
	for _, l := range ls {
		for _, v := range vms {
			if v.ID == l.VMID {
				v.Providers = append(v.Providers, l.Provider)
			}
		}
	}
}

// readyClient returns the agent link of a ready VM or says why there is
// none.
func (m *Manager) readyClient(ctx context.Context, caller store.User, id string) (*agentlink.Client, error) {
	if err := m.resumeIfHibernated(ctx, caller, id); err != nil {
		return nil, err
	}
	v, err := m.get(ctx, caller, id)
	if err != nil {
		return nil, err
	}
	if v.State != api.VMReady {
		return nil, errs.E(errs.Conflict, "vm %s is %s, not ready", id, v.State)
	}
	if since := m.inst(id).unresponsive(); !since.IsZero() {
		return nil, errs.E(errs.Unavailable, "vm %s is unresponsive: its agent has not answered since %s", id, since.UTC().Format(time.RFC3339))
	}
	// Right after a daemon restart the record says ready while the link is
	// being re-attached (well under a second): wait for it briefly.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c := m.inst(id).client(); c != nil {
			return c, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, errs.E(errs.Unavailable, "vm %s has no agent link right now; retry shortly", id)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// serviceError summarises why a service is not running.
func serviceError(s proto.ServiceStatus) string {
	if s.LastExit == "" {
		return ""
	}
	msg := s.LastExit
	if n := len(s.LastOutput); n > 0 {
		msg += ": " + s.LastOutput[n-1]
	}
	return msg
}

// Exec runs a command in the VM.
func (m *Manager) Exec(ctx context.Context, caller store.User, id string, req api.ExecRequest, stdout, stderr io.Writer) (int, error) {
	defer m.hib.begin(id)()
	c, err := m.readyClient(ctx, caller, id)
	if err != nil {
		return 0, err
	}
	var stdin io.Reader
	if req.Stdin != "" {
		stdin = strings.NewReader(req.Stdin)
	}
	timeout := time.Duration(req.TimeoutS) * time.Second
	preq := proto.ExecRequest{Argv: req.Argv, Env: req.Env, Dir: req.Cwd, User: req.User, Timeout: proto.Duration(timeout)}
	if timeout > 0 {
		// The agent enforces the timeout, but a frozen guest enforces
		// nothing: the host gives up too, a little later.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, timeout+execTimeoutGrace, errExecNoAnswer)
		defer cancel()
	}
	code, err := c.Exec(ctx, preq, stdin, stdout, stderr)
	if err != nil {
		if errors.Is(context.Cause(ctx), errExecNoAnswer) {
			return 0, errs.E(errs.Unavailable, "vm %s did not end the command within %s of its %s timeout; the VM may be unresponsive", id, execTimeoutGrace, timeout)
		}
		return 0, agentErr(err)
	}
	return code, nil
}

// execTimeoutGrace is how long past a command's timeout the host waits
// for the agent's answer.
const execTimeoutGrace = 5 * time.Second

var errExecNoAnswer = errors.New("no answer from the agent after the command's timeout")

// agentErr turns an agent's refusal into a user-facing error.
func agentErr(err error) error {
	var pe *proto.Error
	if errors.As(err, &pe) {
		switch {
		case pe.Status == 400 || pe.Status == 403 && pe.Code != proto.CodeUnauthorized:
			return errs.E(errs.Invalid, "%s", pe.Message)
		case pe.Status == 404:
			return errs.E(errs.NotFound, "%s", pe.Message)
		case pe.Status == 413:
			return errs.E(errs.TooLarge, "%s", pe.Message)
		case pe.Code == proto.CodeNoSpace:
			return errs.E(errs.NoSpace, "%s", pe.Message)
		}
	}
	if errors.Is(err, agentlink.ErrTooLarge) {
		return errs.E(errs.TooLarge, "%s", err.Error())
	}
	return err
}

// PutFile writes a file in the VM atomically.
func (m *Manager) PutFile(ctx context.Context, caller store.User, id, path string, mode uint32, r io.Reader) error {
	c, err := m.readyClient(ctx, caller, id)
	if err != nil {
		return err
	}
	_, err = c.PutFile(ctx, agentlink.PutFileRequest{Path: path, Mode: mode, Mkdir: true}, r)
	return agentErr(err)
}

// GetFile streams a file from the VM, at most Config.MaxFileBytes. Nothing
// is staged on the host: the agent announces the size before the content,
// so refusals (missing, too large) still become error statuses, and a
// transfer cut short shows as a body shorter than its Content-Length.
func (m *Manager) GetFile(ctx context.Context, caller store.User, id, path string) (io.ReadCloser, api.FileInfo, error) {
	c, err := m.readyClient(ctx, caller, id)
	if err != nil {
		return nil, api.FileInfo{}, err
	}
	body, st, err := c.OpenFile(ctx, path, m.cfg.MaxFileBytes)
	if err != nil {
		return nil, api.FileInfo{}, agentErr(err)
	}
	if st.Size < 0 {
		body.Close()
		return nil, api.FileInfo{}, errs.E(errs.Unavailable, "vm %s: the agent sent a file without its size", id)
	}
	return body, api.FileInfo{Size: st.Size, Mode: st.Mode}, nil
}

// Logs writes the console log or one service's log.
func (m *Manager) Logs(ctx context.Context, caller store.User, id, service string, follow bool, w io.Writer) error {
	v, err := m.get(ctx, caller, id)
	if err != nil {
		return err
	}
	defer m.hib.begin(id)()
	if service == "" || service == "console" {
		return m.consoleLog(ctx, v.ID, follow, w)
	}
	if c := m.inst(id).client(); c != nil && v.State == api.VMReady {
		err := c.Logs(ctx, proto.LogsRequest{Service: service, Follow: follow}, func(l proto.LogLine) error {
			_, err := fmt.Fprintf(w, "%s [%s] %s\n", l.Time.UTC().Format(time.RFC3339Nano), l.Service, l.Line)
			return err
		})
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if e := agentErr(err); !errors.Is(e, err) {
			return e
		}
		m.log.Warn("service logs from agent failed; reading the console instead", "vm_id", id, "err", err)
	}
	// The VM is gone or unreachable: every service line also went to the
	// console with a "[name] " prefix.
	return m.filterConsole(v.ID, service, w)
}

// consoleLog copies the console log line by line (the rotated older file
// first), with the agent token that the kernel prints in its command line
// at boot redacted; following, it waits for more until ctx ends and
// follows the file across rotations. Lines are bounded (lineReader).
func (m *Manager) consoleLog(ctx context.Context, id string, follow bool, w io.Writer) error {
	path := m.ConsolePath(id)
	write := func(line string) bool {
		_, err := io.WriteString(w, proto.RedactKernelArgs(line))
		return err == nil
	}
	copyFrom := func(name string, off int64) (bool, error) {
		f, err := os.Open(name)
		if errors.Is(err, os.ErrNotExist) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		defer f.Close()
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return false, err
		}
		lr := newLineReader(f)
		for {
			line, err := lr.next(true)
			if err == io.EOF {
				return true, nil
			}
			if err != nil {
				return false, err
			}
			if !write(line) {
				return false, nil
			}
		}
	}
	if ok, err := copyFrom(path+rotatedSuffix, 0); !ok || err != nil {
		return err
	}
	var f *os.File
	for {
		var err error
		f, err = os.Open(path)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
	defer f.Close()
	rotatedID := fileID(path + rotatedSuffix)
	lr := newLineReader(f)
	for {
		line, err := lr.next(!follow)
		if err == nil {
			if !write(line) {
				return nil
			}
			continue
		}
		if err != io.EOF {
			return err
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		if id := fileID(path + rotatedSuffix); id != rotatedID {
			// Rotated (every rotation renames a new older file into
			// place): what was written after our last read and before
			// the rotation is at the end of the older file.
			rotatedID = id
			cur, _ := f.Seek(0, io.SeekCurrent)
			if ok, err := copyFrom(path+rotatedSuffix, cur); !ok || err != nil {
				return err
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			lr.reset(f)
		}
	}
}

// filterConsole writes the console lines (rotated file first) that carry
// "[service] ", from that prefix on, each line bounded.
func (m *Manager) filterConsole(id, service string, w io.Writer) error {
	prefix := "[" + service + "] "
	for _, name := range []string{m.ConsolePath(id) + rotatedSuffix, m.ConsolePath(id)} {
		f, err := os.Open(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		lr := newLineReader(f)
		for {
			line, err := lr.next(true)
			if err != nil {
				f.Close()
				if err != io.EOF {
					return err
				}
				break
			}
			line = strings.TrimRight(line, "\r\n")
			if i := strings.Index(line, prefix); i >= 0 {
				if _, err := fmt.Fprintln(w, proto.RedactKernelArgs(line[i:])); err != nil {
					f.Close()
					return nil
				}
			}
		}
	}
	return nil
}

// Stop shuts the VM down: gracefully through the agent, then hard.
func (m *Manager) Stop(ctx context.Context, caller store.User, id string) (api.VM, error) {
	v, err := m.get(ctx, caller, id)
	if err != nil {
		return api.VM{}, err
	}
	switch v.State {
	case api.VMStopped:
		return m.toAPI(v), nil
	case api.VMDestroyed:
		return api.VM{}, errs.E(errs.NotFound, "vm %s not found", id)
	case api.VMCreating, api.VMBooting, api.VMReady, api.VMFailed:
	case api.VMHibernated:
		m.discardHibernation(ctx, id)
	default:
		return api.VM{}, errs.E(errs.Conflict, "vm %s is %s", id, v.State)
	}
	// From here the work belongs to the daemon, not to the request: a
	// client that disconnects must not turn a graceful stop (the guest
	// syncs its disks) into a kill.
	ctx, cancel := m.lifecycleContext(ctx)
	defer cancel()
	if v.State == api.VMReady {
		m.stopping(id)
	}
	if v, err = m.setState(ctx, id, api.VMStopping, ""); err != nil {
		return api.VM{}, err
	}
	m.stopInstance(ctx, id)
	m.releaseSlot(ctx, id)
	v, err = m.setState(context.Background(), id, api.VMStopped, "")
	if err != nil {
		return api.VM{}, err
	}
	m.publish(v, "vm_stopped", nil)
	return m.toAPI(v), nil
}

// stopInstance ends the boot, asks the agent to power off, waits, then
// stops the hypervisor hard.
func (m *Manager) stopInstance(ctx context.Context, id string) {
	in := m.inst(id)
	in.mu.Lock()
	in.expectExit = true
	cancel, h, link := in.cancel, in.handle, in.link
	in.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if h == nil {
		return
	}
	if link != nil {
		sctx, scancel := context.WithTimeout(ctx, m.cfg.StopTimeout)
		if err := link.Shutdown(sctx, false); err != nil {
			m.log.Warn("graceful shutdown through the agent failed; stopping hard", "vm_id", id, "err", err)
		} else if err := h.Wait(sctx); err != nil {
			m.log.Warn("vm did not power off in time; stopping hard", "vm_id", id, "timeout", m.cfg.StopTimeout)
		}
		scancel()
	}
	if !isDone(h) {
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		if err := h.Stop(sctx); err != nil {
			m.log.Warn("hard stop failed; killing", "vm_id", id, "err", err)
			_ = h.Kill()
		}
		scancel()
	}
	<-h.Done()
}

// Start boots a stopped or failed VM again; a persistent VM keeps its disk.
func (m *Manager) Start(ctx context.Context, caller store.User, id string) (api.VM, error) {
	v, err := m.get(ctx, caller, id)
	if err != nil {
		return api.VM{}, err
	}
	switch v.State {
	case api.VMStopped, api.VMFailed:
	case api.VMReady, api.VMBooting, api.VMCreating:
		return m.toAPI(v), nil
	default:
		return api.VM{}, errs.E(errs.Conflict, "vm %s is %s and cannot be started", id, v.State)
	}
	if v, err = m.setState(ctx, id, api.VMCreating, ""); err != nil {
		return api.VM{}, err
	}
	m.startBoot(id)
	return m.toAPI(v), nil
}

// Destroy stops the VM and removes everything of it but its logs.
func (m *Manager) Destroy(ctx context.Context, caller store.User, id string) error {
	v, err := m.get(ctx, caller, id)
	if err != nil {
		return err
	}
	if v.State == api.VMDestroyed {
		return errs.E(errs.NotFound, "vm %s not found", id)
	}
	ctx, cancel := m.lifecycleContext(ctx)
	defer cancel()
	return m.destroy(ctx, v)
}

// lifecycleContext detaches lifecycle work (stop, destroy) from the
// request that asked for it, keeping its values, and bounds it instead by
// the graceful-stop timeout plus time for the hard stop and the network.
func (m *Manager) lifecycleContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), m.cfg.StopTimeout+time.Minute)
}

func (m *Manager) destroy(ctx context.Context, v store.VM) error {
	if v.State == api.VMReady {
		m.stopping(v.ID)
	}
	in := m.inst(v.ID)
	in.mu.Lock()
	in.expectExit = true
	h := in.handle
	in.mu.Unlock()
	m.stopInstance(ctx, v.ID)
	if h != nil {
		_ = h.Release()
	}
	m.releaseSlot(ctx, v.ID)
	if err := os.RemoveAll(m.runDir(v.ID)); err != nil {
		return fmt.Errorf("remove runtime dir of %s: %w", v.ID, err)
	}
	v, err := m.update(context.Background(), v.ID, func(v *store.VM, rt *runtimeDoc) {
		v.State = api.VMDestroyed
		rt.VMM, rt.Token = nil, ""
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil // destroyed meanwhile by a concurrent destroy (or its user deleted)
	}
	if err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.vms, v.ID)
	m.mu.Unlock()
	m.log.Info("vm destroyed", "vm_id", v.ID, "logs", m.logDir(v.ID))
	m.publish(v, "vm_destroyed", nil)
	return nil
}

// DialPort opens a raw stream to 127.0.0.1:port inside a ready VM over the
// agent link (the live view carries VNC this way); no guest network is
// involved.
func (m *Manager) DialPort(ctx context.Context, caller store.User, id string, port int) (net.Conn, error) {
	c, err := m.readyClient(ctx, caller, id)
	if err != nil {
		return nil, err
	}
	conn, err := c.DialPort(ctx, port)
	if err != nil {
		return nil, agentErr(err)
	}
	return conn, nil
}

// HypervisorPID is the process id of a VM's hypervisor, 0 when none runs
// (operators and tests).
func (m *Manager) HypervisorPID(id string) int {
	in := m.inst(id)
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.handle == nil {
		return 0
	}
	return in.handle.State().PID
}

// Link returns the agent link of a ready VM the caller may use; subsystems
// (the login driver) talk to the agent through it.
func (m *Manager) Link(ctx context.Context, caller store.User, id string) (*agentlink.Client, error) {
	return m.readyClient(ctx, caller, id)
}

// WaitReady waits until the VM is ready, failing early when it fails or is
// destroyed.
func (m *Manager) WaitReady(ctx context.Context, caller store.User, id string) (api.VM, error) {
	if err := m.resumeIfHibernated(ctx, caller, id); err != nil {
		return api.VM{}, err
	}
	for {
		v, err := m.get(ctx, caller, id)
		if err != nil {
			return api.VM{}, err
		}
		switch v.State {
		case api.VMReady:
			if m.inst(id).client() != nil {
				return m.toAPI(v), nil
			}
		case api.VMFailed, api.VMDestroyed, api.VMStopped:
			return m.toAPI(v), fmt.Errorf("vm %s is %s: %s", id, v.State, v.LastError)
		}
		select {
		case <-ctx.Done():
			return m.toAPI(v), ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// DestroyTaskKind is the durable task that destroys a VM (throwaway login
// VMs after their purpose ended). Its payload is DestroyTask.
const DestroyTaskKind = "vm.destroy"

// DestroyTask is the payload of a vm.destroy task.
type DestroyTask struct {
	VMID string `json:"vm_id"`
}

// RunDestroyTask is the handler of vm.destroy: idempotent, so a task run
// again after a daemon crash does no harm.
func (m *Manager) RunDestroyTask(ctx context.Context, payload []byte) error {
	var p DestroyTask
	if err := json.Unmarshal(payload, &p); err != nil || p.VMID == "" {
		return fmt.Errorf("bad vm.destroy payload: %v", err)
	}
	v, err := m.store.GetVM(ctx, p.VMID, "")
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if v.State == api.VMDestroyed {
		return nil
	}
	return m.destroy(ctx, v)
}
