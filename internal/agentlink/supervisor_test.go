package agentlink_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/agent"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// TestFailingServiceVisible: a required service that prints an error and
// exits 1 goes crash_loop then failed; its message is in the ring, on the
// console and in its status; ready is never sent; exec keeps working.
func TestFailingServiceVisible(t *testing.T) {
	ta := startAgent(t, agent.Config{
		Services: []proto.ServiceSpec{{
			Name:     "broken",
			Argv:     []string{"sh", "-c", "echo 'fatal: cannot open display :99' >&2; exit 1"},
			Required: true,
			Restart:  proto.RestartAlways,
		}},
		Supervisor: agent.SupervisorConfig{BackoffInitial: 20 * time.Millisecond, CrashLimit: 4, CrashWindow: time.Minute},
	})
	ctx := ctxT(t, 30*time.Second)
	events, err := ta.client.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	sawReady := false
	for ev := range events {
		if ev.Type == proto.EventReady || (ev.Type == proto.EventHello && ev.Health.Ready) {
			sawReady = true
		}
		if ev.Type == proto.EventHello {
			for _, s := range ev.Health.Services {
				states = append(states, s.State)
			}
		}
		if ev.Type == proto.EventService {
			states = append(states, ev.Service.State)
			if ev.Service.State == proto.StateFailed {
				if !strings.Contains(strings.Join(ev.Service.LastOutput, "\n"), "fatal: cannot open display") {
					t.Fatalf("failed status lacks the last output: %+v", ev.Service)
				}
				break
			}
		}
	}
	if sawReady {
		t.Fatal("ready reported although a required service failed")
	}
	joined := strings.Join(states, ",")
	if !strings.Contains(joined, proto.StateCrashLoop) || !strings.HasSuffix(joined, proto.StateFailed) {
		t.Fatalf("states %s: want crash_loop then failed", joined)
	}
	var lines []string
	if err := ta.client.Logs(ctx, proto.LogsRequest{Service: "broken"}, func(l proto.LogLine) error {
		lines = append(lines, l.Line)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(lines) != 4 || lines[0] != "fatal: cannot open display :99" {
		t.Fatalf("ring holds %q, want the message once per run (4 runs)", lines)
	}
	waitFor(t, 5*time.Second, "console line", func() bool {
		return strings.Contains(ta.console.String(), "[broken] fatal: cannot open display :99\n")
	})
	svcs, err := ta.client.Services(ctx)
	if err != nil || len(svcs) != 1 || svcs[0].State != proto.StateFailed || svcs[0].Restarts != 3 || svcs[0].LastExit != "exit status 1" {
		t.Fatalf("services %+v err %v", svcs, err)
	}
	var out bytes.Buffer
	if code, err := ta.client.Exec(ctx, proto.ExecRequest{Argv: []string{"echo", "still here"}}, nil, &out, nil); err != nil || code != 0 || out.String() != "still here\n" {
		t.Fatalf("exec after failure: code=%d err=%v out=%q", code, err, out.String())
	}
	// The agent's own account of the failure is in the "agent" ring.
	var agentLines strings.Builder
	_ = ta.client.Logs(ctx, proto.LogsRequest{Service: proto.AgentService}, func(l proto.LogLine) error {
		agentLines.WriteString(l.Line + "\n")
		return nil
	})
	if !strings.Contains(agentLines.String(), "service broken failed") {
		t.Fatalf("agent log lacks the failure:\n%s", agentLines.String())
	}
}

// TestDependencyOrderAndReadiness: "display" becomes ready by creating a
// file after a delay, "vnc" (after display) by listening on TCP, "browser"
// (after vnc) has a command check. Each starts only after its dependency is
// ready, and ready is pushed after the last required one.
func TestDependencyOrderAndReadiness(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sockFile := filepath.Join(dir, "X99")
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	startedVNC := filepath.Join(dir, "vnc-started")
	specs := []proto.ServiceSpec{
		{
			Name:     "browser",
			Argv:     []string{"sh", "-c", "echo browser up; exec sleep 60"},
			After:    []string{"vnc"},
			Ready:    &proto.ReadyCheck{Cmd: []string{"test", "-e", startedVNC}},
			Required: true,
		},
		{
			Name:     "vnc",
			Argv:     []string{"sh", "-c", "test -e " + sockFile + " || { echo display not ready; exit 9; }; touch " + startedVNC + "; exec env HANGAR_TEST_HELPER=echo-listen " + exe + " " + addr},
			After:    []string{"display"},
			Ready:    &proto.ReadyCheck{TCP: addr},
			Required: true,
			Restart:  proto.RestartNever,
		},
		{
			Name:     "display",
			Argv:     []string{"sh", "-c", "sleep 0.5; touch " + sockFile + "; exec sleep 60"},
			Ready:    &proto.ReadyCheck{File: sockFile},
			Required: true,
		},
	}
	ta := startAgent(t, agent.Config{Services: specs})
	ctx := ctxT(t, 30*time.Second)
	events, err := ta.client.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	readyAt := -1
	for ev := range events {
		switch ev.Type {
		case proto.EventHello:
			if ev.Health.Ready {
				readyAt = len(order)
			}
		case proto.EventService:
			order = append(order, ev.Service.Name+":"+ev.Service.State)
		case proto.EventReady:
			readyAt = len(order)
		}
		if readyAt >= 0 {
			break
		}
	}
	want := []string{"display:starting", "display:ready", "vnc:starting", "vnc:ready", "browser:starting", "browser:ready"}
	// The hello snapshot may already include display:starting.
	got := strings.Join(order, " ")
	if !strings.HasSuffix(" "+got, " "+strings.Join(want[len(want)-len(order):], " ")) || len(order) < 4 {
		t.Fatalf("order %q, want suffix of %q", got, want)
	}
	if readyAt != len(order) {
		t.Fatalf("ready at %d of %v", readyAt, order)
	}
	h, err := ta.client.Health(ctx)
	if err != nil || !h.Ready {
		t.Fatalf("health %+v %v", h, err)
	}
	// The vnc helper really is reachable through a forwarded port.
	_, p, _ := net.SplitHostPort(addr)
	var port int
	for _, c := range p {
		port = port*10 + int(c-'0')
	}
	conn, err := ta.client.DialPort(ctx, port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(b); err != nil || b[0] != 'x' {
		t.Fatalf("echo through forward: %q %v", b, err)
	}
}

// TestRingBound: a chatty service's kept output stays within RingBytes and
// keeps the newest lines.
func TestRingBound(t *testing.T) {
	const ringBytes = 4096
	ta := startAgent(t, agent.Config{
		RingBytes: ringBytes,
		Services: []proto.ServiceSpec{{
			Name:    "chatty",
			Argv:    []string{"sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line-$i-padding-padding-padding; i=$((i+1)); done"},
			Restart: proto.RestartNever,
		}},
	})
	ctx := ctxT(t, 30*time.Second)
	waitFor(t, 20*time.Second, "chatty to exit", func() bool {
		s, err := ta.client.Services(ctx)
		return err == nil && s[0].State == proto.StateExited
	})
	total := 0
	var last string
	n := 0
	if err := ta.client.Logs(ctx, proto.LogsRequest{Service: "chatty"}, func(l proto.LogLine) error {
		total += len(l.Line)
		last = l.Line
		n++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Each kept line also counts its overhead (about 90 bytes) against
	// the budget, so 4 KiB keeps a few dozen of these.
	if total > ringBytes || n < 20 || last != "line-1999-padding-padding-padding" {
		t.Fatalf("ring holds %d bytes in %d lines, last %q", total, n, last)
	}
	// Follow: a new line written after the request arrives.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	got := make(chan string, 1)
	go func() {
		_ = ta.client.Logs(lctx, proto.LogsRequest{Service: proto.AgentService, Follow: true, Tail: 1}, func(l proto.LogLine) error {
			if strings.Contains(l.Line, "marker-for-follow") {
				got <- l.Line
			}
			return nil
		})
	}()
	time.Sleep(200 * time.Millisecond)
	ta.agent.Logger().Info("marker-for-follow")
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("followed line not delivered")
	}
}
