package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeQMP is a QMP server on a Unix socket speaking the protocol as QEMU
// 7.2 does: greeting, then qmp_capabilities, then commands answered by
// handler (which may also push events).
type fakeQMP struct {
	t    *testing.T
	path string
	ln   net.Listener

	mu sync.Mutex // guards cmds, conn
	// cmds records every command received, in order.
	cmds []string
	conn net.Conn
}

// handler answers one command: return value or error; it may write events
// through send first.
type qmpHandler func(cmd string, args json.RawMessage, send func(any)) (ret any, errClass, errDesc string)

func newFakeQMP(t *testing.T, h qmpHandler) *fakeQMP {
	t.Helper()
	f := &fakeQMP{t: t, path: filepath.Join(t.TempDir(), "qmp.sock")}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conn = c
			f.mu.Unlock()
			go f.serve(c, h)
		}
	}()
	return f
}

func (f *fakeQMP) serve(c net.Conn, h qmpHandler) {
	defer c.Close()
	var wmu sync.Mutex
	send := func(v any) {
		b, _ := json.Marshal(v)
		wmu.Lock()
		_, _ = c.Write(append(b, '\r', '\n'))
		wmu.Unlock()
	}
	send(map[string]any{"QMP": map[string]any{
		"version":      map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 22}, "package": "Debian"},
		"capabilities": []string{"oob"},
	}})
	sc := bufio.NewScanner(c)
	negotiated := false
	for sc.Scan() {
		var req struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
			ID        json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			send(map[string]any{"error": map[string]string{"class": "GenericError", "desc": "JSON parse error"}})
			continue
		}
		f.mu.Lock()
		f.cmds = append(f.cmds, req.Execute)
		f.mu.Unlock()
		reply := map[string]any{"id": req.ID}
		switch {
		case req.Execute == "qmp_capabilities":
			negotiated = true
			reply["return"] = map[string]any{}
		case !negotiated:
			reply["error"] = map[string]string{"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}
		default:
			ret, class, desc := h(req.Execute, req.Arguments, send)
			if class != "" {
				reply["error"] = map[string]string{"class": class, "desc": desc}
			} else {
				if ret == nil {
					ret = map[string]any{}
				}
				reply["return"] = ret
			}
		}
		send(reply)
	}
}

func (f *fakeQMP) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.cmds...)
}

func dialFake(t *testing.T, f *fakeQMP) *QMP {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := net.Dial("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	q, err := NewQMP(ctx, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func TestQMPHandshakeExecuteAndErrors(t *testing.T) {
	f := newFakeQMP(t, func(cmd string, args json.RawMessage, send func(any)) (any, string, string) {
		switch cmd {
		case "query-status":
			return map[string]any{"running": true, "singlestep": false, "status": "running"}, "", ""
		case "migrate":
			var a struct {
				URI string `json:"uri"`
			}
			_ = json.Unmarshal(args, &a)
			if strings.HasPrefix(a.URI, "file:") {
				return nil, "GenericError", "unknown migration protocol: " + a.URI
			}
			return nil, "", ""
		}
		return nil, "CommandNotFound", "The command " + cmd + " has not been found"
	})
	q := dialFake(t, f)
	if q.Version != "7.2.22" {
		t.Fatalf("version %q", q.Version)
	}
	ctx := context.Background()
	st, err := q.QueryStatus(ctx)
	if err != nil || !st.Running || st.Status != "running" {
		t.Fatalf("query-status = %+v, %v", st, err)
	}
	err = q.Execute(ctx, "migrate", map[string]string{"uri": "file:/x"}, nil)
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Class != "GenericError" || !strings.Contains(qe.Desc, "unknown migration protocol") || qe.Command != "migrate" {
		t.Fatalf("error answer: %v", err)
	}
	if err := q.Execute(ctx, "no-such", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v", err)
	}
	want := []string{"qmp_capabilities", "query-status", "migrate", "no-such"}
	if got := f.commands(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("commands %v, want %v", got, want)
	}
}

func TestQMPConcurrentCommandsMatchByID(t *testing.T) {
	// Answers arrive out of order: "slow" is answered after "fast".
	release := make(chan struct{})
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		w := func(s string) { _, _ = c.Write([]byte(s + "\n")) }
		w(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}`)
		r := bufio.NewScanner(c)
		for r.Scan() {
			var req struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			_ = json.Unmarshal(r.Bytes(), &req)
			switch req.Execute {
			case "slow":
				go func(id json.RawMessage) {
					<-release
					w(`{"return": {"who": "slow"}, "id": ` + string(id) + `}`)
				}(req.ID)
			default:
				w(`{"return": {"who": "` + req.Execute + `"}, "id": ` + string(req.ID) + `}`)
			}
		}
	}()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	q, err := NewQMP(context.Background(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	type who struct {
		Who string `json:"who"`
	}
	slow := make(chan string)
	go func() {
		var w who
		_ = q.Execute(context.Background(), "slow", nil, &w)
		slow <- w.Who
	}()
	time.Sleep(50 * time.Millisecond)
	var w who
	if err := q.Execute(context.Background(), "fast", nil, &w); err != nil || w.Who != "fast" {
		t.Fatalf("fast = %q, %v", w.Who, err)
	}
	close(release)
	if got := <-slow; got != "slow" {
		t.Fatalf("slow = %q", got)
	}
}

func TestQMPEventsAndClose(t *testing.T) {
	f := newFakeQMP(t, func(cmd string, args json.RawMessage, send func(any)) (any, string, string) {
		switch cmd {
		case "stop":
			send(map[string]any{"event": "STOP", "timestamp": map[string]int64{"seconds": 1700000000, "microseconds": 5}})
			return nil, "", ""
		case "quit":
			send(map[string]any{"event": "SHUTDOWN", "data": map[string]any{"guest": false, "reason": "host-qmp-quit"},
				"timestamp": map[string]int64{"seconds": 1700000001, "microseconds": 0}})
			return nil, "", ""
		case "hang":
			// Never answered: the connection closes under it.
			select {}
		}
		return nil, "", ""
	})
	q := dialFake(t, f)
	events, unsub := q.Subscribe()
	defer unsub()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := q.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	ev := <-events
	if ev.Name != "STOP" || ev.Timestamp.Seconds != 1700000000 {
		t.Fatalf("event %+v", ev)
	}
	if err := q.Execute(ctx, "quit", nil, nil); err != nil {
		t.Fatal(err)
	}
	ev = <-events
	var data struct {
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal(ev.Data, &data); ev.Name != "SHUTDOWN" || err != nil || data.Reason != "host-qmp-quit" {
		t.Fatalf("event %+v (%v)", ev, err)
	}
	// A command pending when the server goes away fails with
	// ErrQMPClosed instead of hanging.
	errc := make(chan error, 1)
	go func() { errc <- q.Execute(ctx, "hang", nil, nil) }()
	time.Sleep(50 * time.Millisecond)
	f.mu.Lock()
	f.conn.Close()
	f.mu.Unlock()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrQMPClosed) {
			t.Fatalf("pending command: %v, want ErrQMPClosed", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("pending command not failed after close")
	}
	if _, ok := <-events; ok {
		t.Fatal("event channel not closed after connection end")
	}
	if err := q.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrQMPClosed) {
		t.Fatalf("command after close: %v", err)
	}
}

func TestQMPContextCancelsCommand(t *testing.T) {
	f := newFakeQMP(t, func(cmd string, args json.RawMessage, send func(any)) (any, string, string) {
		time.Sleep(2 * time.Second)
		return nil, "", ""
	})
	q := dialFake(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := q.Execute(ctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want deadline exceeded", err)
	}
}

func TestQMPRejectsNonQMPGreeting(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = c.Write([]byte("SSH-2.0-OpenSSH\n"))
			time.Sleep(time.Second)
			c.Close()
		}
	}()
	c, err := net.Dial("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := NewQMP(ctx, c, nil); err == nil || !strings.Contains(err.Error(), "greeting") {
		t.Fatalf("err %v, want greeting error", err)
	}
}
