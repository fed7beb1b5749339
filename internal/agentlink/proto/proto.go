// Package proto holds the wire protocol shared by hangar-agent (guest) and
// internal/agentlink (host): the kernel command line parameters, the link
// handshake, the HTTP paths and JSON bodies, the exec frame format and the
// service declaration format read from /etc/hangar/services.d.
//
// Protocol summary. The host opens a byte stream to the guest (a QEMU
// virtio-serial chardev socket, or a Firecracker hybrid-vsock socket after
// "CONNECT 1024"), performs the line handshake in handshake.go, then runs a
// yamux client over the stream; the agent runs the yamux server. Every yamux
// stream carries HTTP/1.1 requests under PathPrefix, each authenticated by
// the per-VM token in TokenHeader. Exec and port forwarding upgrade the
// stream (101 Switching Protocols) and continue as exec frames or as a raw
// byte pipe.
package proto

import (
	"encoding/json"
	"fmt"
	"time"
)

// Version is the protocol version. It is part of every path (PathPrefix) and
// of the handshake, so host and agent of different versions fail loudly.
const Version = "1"

// PathPrefix prefixes every HTTP path of the agent.
const PathPrefix = "/v" + Version

// HTTP paths served by the agent.
const (
	PathHealth   = PathPrefix + "/health"
	PathEvents   = PathPrefix + "/events"
	PathExec     = PathPrefix + "/exec"
	PathFiles    = PathPrefix + "/files"
	PathLogs     = PathPrefix + "/logs"
	PathServices = PathPrefix + "/services"
	PathClock    = PathPrefix + "/clock"
	PathShutdown = PathPrefix + "/shutdown"
	PathForward  = PathPrefix + "/forward"
	PathReverse  = PathPrefix + "/reverse"
)

// TokenHeader carries the per-VM token on every request. The agent compares
// it in constant time and never echoes it.
const TokenHeader = "X-Hangar-Token"

// Upgrade protocol names used in the Upgrade header of exec and forward.
const (
	UpgradeExec    = "hangar-exec/" + Version
	UpgradeForward = "hangar-forward/" + Version
)

// VirtioPortName is the name of the QEMU virtserialport carrying the link
// (-device virtserialport,name=org.hangar.agent). The agent finds it under
// /sys/class/virtio-ports/*/name.
const VirtioPortName = "org.hangar.agent"

// VsockPort is the AF_VSOCK port the agent listens on under Firecracker.
const VsockPort = 1024

// Service states reported by the supervisor.
const (
	StatePending   = "pending"    // waiting for the services in After to be ready
	StateStarting  = "starting"   // process running, readiness check not yet passed
	StateReady     = "ready"      // readiness check passed (or none declared)
	StateCrashLoop = "crash_loop" // exited, waiting out the backoff before a restart
	StateFailed    = "failed"     // crash-loop limit reached or could not start; not restarted
	StateExited    = "exited"     // exited and the restart policy says not to restart
)

// Restart policies of a service.
const (
	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
	RestartNever     = "never"
)

// ServiceSpec is one file in /etc/hangar/services.d/*.json, written by the
// image builder and read by the agent at boot.
type ServiceSpec struct {
	// Name identifies the service in logs, events and After lists.
	Name string `json:"name"`
	// Argv is the command; Argv[0] is looked up in PATH when not absolute.
	Argv []string `json:"argv"`
	// Env is added to the default environment (PATH, HOME, USER, LANG).
	Env map[string]string `json:"env,omitempty"`
	// User runs the service as this user (name from /etc/passwd); root when empty.
	User string `json:"user,omitempty"`
	// Dir is the working directory; the user's home (or /) when empty.
	Dir string `json:"dir,omitempty"`
	// After names services that must be ready before this one starts.
	After []string `json:"after,omitempty"`
	// Ready is the readiness check; without one the service is ready once started.
	Ready *ReadyCheck `json:"ready,omitempty"`
	// Required services must be ready before the agent reports the VM ready.
	Required bool `json:"required,omitempty"`
	// Restart is one of RestartAlways, RestartOnFailure (default), RestartNever.
	Restart string `json:"restart,omitempty"`
}

// ReadyCheck declares how the supervisor decides a service is ready.
// Exactly one field is set.
type ReadyCheck struct {
	// TCP is an address that accepts connections once ready, e.g. "127.0.0.1:5900".
	TCP string `json:"tcp,omitempty"`
	// File is a path that exists once ready, e.g. "/tmp/.X11-unix/X99".
	File string `json:"file,omitempty"`
	// Cmd is a command that exits 0 once ready.
	Cmd []string `json:"cmd,omitempty"`
}

// ServiceStatus is the state of one supervised service.
type ServiceStatus struct {
	Name     string    `json:"name"`
	State    string    `json:"state"`
	Required bool      `json:"required,omitempty"`
	PID      int       `json:"pid,omitempty"`
	Restarts int       `json:"restarts"`
	Since    time.Time `json:"since"`
	// LastExit describes the last exit, e.g. "exit status 1" or "signal: killed".
	LastExit string `json:"last_exit,omitempty"`
	// LastOutput is the tail of the service's output, kept when it fails.
	LastOutput []string `json:"last_output,omitempty"`
}

// Health answers GET /v1/health.
type Health struct {
	AgentVersion    string   `json:"agent_version"`
	ProtocolVersion string   `json:"protocol_version"`
	PID1            bool     `json:"pid1"`
	Hostname        string   `json:"hostname"`
	KernelRelease   string   `json:"kernel_release"`
	Uptime          Duration `json:"uptime"`
	// AgentStartedAt is the guest's boot clock (CLOCK_BOOTTIME) when the
	// agent started: as PID 1, the kernel's share of the boot.
	AgentStartedAt Duration `json:"agent_started_at"`
	// ReadyAt is the boot clock when every required service was ready
	// (zero until then).
	ReadyAt  Duration        `json:"ready_at,omitempty"`
	Ready    bool            `json:"ready"`
	Services []ServiceStatus `json:"services"`
}

// Event types pushed on GET /v1/events.
const (
	// EventHello is always the first event: Health holds the current state,
	// so a host that connects late misses nothing.
	EventHello = "hello"
	// EventService reports a state change of one service.
	EventService = "service"
	// EventReady is sent once, when every required service is ready.
	EventReady = "ready"
	// EventShutdown is sent when the agent starts shutting down.
	EventShutdown = "shutdown"
)

// Event is one line of the event stream (JSON, newline delimited).
type Event struct {
	Type    string         `json:"type"`
	Time    time.Time      `json:"time"`
	Health  *Health        `json:"health,omitempty"`
	Service *ServiceStatus `json:"service,omitempty"`
}

// ExecRequest is the JSON body of POST /v1/exec.
type ExecRequest struct {
	Argv []string          `json:"argv"`
	Env  map[string]string `json:"env,omitempty"`
	Dir  string            `json:"dir,omitempty"`
	// User runs the command as this user; root (the agent's user) when empty.
	User string `json:"user,omitempty"`
	// Timeout kills the command's process group after this long; 0 means none.
	Timeout Duration `json:"timeout,omitempty"`
	// PTY runs the command on a pseudo-terminal; stdout and stderr are merged.
	PTY *PTYSize `json:"pty,omitempty"`
}

// PTYSize is a terminal size.
type PTYSize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExitStatus is the payload of FrameExit.
type ExitStatus struct {
	// ExitCode is the process's exit code, or 128+signal when killed by a signal.
	ExitCode int    `json:"exit_code"`
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	// Error reports an agent-side failure while running the command.
	Error string `json:"error,omitempty"`
}

// FileStat describes a file returned by GET /v1/files (in headers) and is
// the result of a put.
type FileStat struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	Mode uint32 `json:"mode"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
}

// Query parameters and headers of the files endpoint.
const (
	QueryPath    = "path"
	QueryMode    = "mode"  // octal, e.g. "0600"
	QueryUID     = "uid"   // numeric
	QueryGID     = "gid"   // numeric
	QueryMkdir   = "mkdir" // "1": create missing parent directories (mode 0755, same owner)
	QueryMax     = "max"   // GET: refuse files larger than this many bytes
	QueryService = "service"
	QueryFollow  = "follow"
	QueryTail    = "tail"
	QueryPort    = "port"
	HeaderMode   = "X-Hangar-Mode"
	HeaderUID    = "X-Hangar-Uid"
	HeaderGID    = "X-Hangar-Gid"
)

// LogsRequest selects log lines for GET /v1/logs.
type LogsRequest struct {
	// Service selects one service ("agent" is the agent itself); all when empty.
	Service string
	// Follow keeps the stream open and sends new lines as they are written.
	Follow bool
	// Tail limits the backlog to the last Tail lines; 0 means all kept lines.
	Tail int
}

// AgentService is the service name of the agent's own log lines.
const AgentService = "agent"

// LogLine is one line of a service's output (JSON, newline delimited).
type LogLine struct {
	Service string    `json:"service"`
	Time    time.Time `json:"time"`
	Line    string    `json:"line"`
}

// ClockRequest is the body of POST /v1/clock.
type ClockRequest struct {
	UnixNano int64 `json:"unix_nano"`
}

// ShutdownRequest is the body of POST /v1/shutdown.
type ShutdownRequest struct {
	// Reboot restarts the VM instead of powering it off.
	Reboot bool `json:"reboot,omitempty"`
}

// Error codes carried in ErrorBody.
const (
	CodeBadRequest   = "bad_request"
	CodeUnauthorized = "unauthorized"
	CodeNotFound     = "not_found"
	CodeForbidden    = "forbidden" // e.g. a path with ".." or through a symlink
	CodeTooLarge     = "too_large"
	CodeUnavailable  = "unavailable"
	CodeInternal     = "internal"
	CodeNoSpace      = "no_space" // 507: the guest's filesystem (or quota) is full
)

// ErrorBody is the JSON body of every non-2xx answer.
type ErrorBody struct {
	Error *Error `json:"error"`
}

// Error is an error reported by the agent. Messages never contain the token.
type Error struct {
	Status  int    `json:"status"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error implements error.
func (e *Error) Error() string {
	return fmt.Sprintf("agent: %s (%s)", e.Message, e.Code)
}

// Is lets errors.Is match on the code: errors.Is(err, &proto.Error{Code: proto.CodeForbidden}).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Duration is a time.Duration encoded as a JSON string ("1.5s") that also
// accepts a number of seconds.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err2 := json.Unmarshal(b, &secs); err2 != nil {
			return fmt.Errorf("duration must be a string or a number of seconds: %w", err)
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("parse duration: %w", err)
	}
	*d = Duration(v)
	return nil
}

// ReverseRequest is the body of POST /v1/reverse: listen on Listen inside
// the guest (a 127.0.0.1 address) and carry every connection to the host
// as a new stream the agent opens, tagged with Name. The listener lives as
// long as the host session that asked for it. It lets guest programs reach
// a service the host chooses (the dev OAuth provider) without any guest
// network and without exposing anything else of the host.
type ReverseRequest struct {
	Listen string `json:"listen"`
	Name   string `json:"name"`
}

// ReverseMagic starts the first line of a stream the agent opens for a
// reverse-forwarded connection: ReverseMagic + name + "\n".
const ReverseMagic = "HANGAR-REVERSE/1 "
