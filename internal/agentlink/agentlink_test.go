package agentlink_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/agent"
	"github.com/hangar-vm/hangar/internal/agentlink"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

func TestHealth(t *testing.T) {
	ta := startAgent(t, agent.Config{Version: "1.2.3"})
	h, err := ta.client.Health(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	if h.AgentVersion != "1.2.3" || h.ProtocolVersion != proto.Version || !h.Ready || h.KernelRelease == "" || h.AgentStartedAt <= 0 || h.ReadyAt < h.AgentStartedAt {
		t.Fatalf("unexpected health %+v", h)
	}
	if ta.client.AgentVersion() != "1.2.3" {
		t.Fatalf("handshake version %q", ta.client.AgentVersion())
	}
}

func TestExec(t *testing.T) {
	ta := startAgent(t, agent.Config{})
	c := ta.client
	ctx := ctxT(t, 30*time.Second)

	t.Run("output and exit code", func(t *testing.T) {
		var out, errb bytes.Buffer
		code, err := c.Exec(ctx, proto.ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}}, nil, &out, &errb)
		if err != nil || code != 3 || out.String() != "out\n" || errb.String() != "err\n" {
			t.Fatalf("code=%d err=%v stdout=%q stderr=%q", code, err, out.String(), errb.String())
		}
	})
	t.Run("stdin", func(t *testing.T) {
		in := strings.Repeat("line of stdin\n", 10000) // 140 KB: more than one frame and one pipe buffer
		var out bytes.Buffer
		code, err := c.Exec(ctx, proto.ExecRequest{Argv: []string{"cat"}}, strings.NewReader(in), &out, nil)
		if err != nil || code != 0 || out.String() != in {
			t.Fatalf("code=%d err=%v got %d bytes, want %d", code, err, out.Len(), len(in))
		}
	})
	t.Run("env and cwd", func(t *testing.T) {
		dir := t.TempDir()
		var out bytes.Buffer
		code, err := c.Exec(ctx, proto.ExecRequest{Argv: []string{"sh", "-c", `echo "$HANGAR_X"; pwd`}, Env: map[string]string{"HANGAR_X": "forty two"}, Dir: dir}, nil, &out, nil)
		if err != nil || code != 0 || out.String() != "forty two\n"+dir+"\n" {
			t.Fatalf("code=%d err=%v out=%q", code, err, out.String())
		}
	})
	t.Run("timeout kills the process group", func(t *testing.T) {
		marker := filepath.Join(t.TempDir(), "survived")
		start := time.Now()
		// The background child would create marker after 2 s unless the
		// whole group is killed.
		code, err := c.Exec(ctx, proto.ExecRequest{
			Argv:    []string{"sh", "-c", "(sleep 2; touch " + marker + ") & sleep 30"},
			Timeout: proto.Duration(300 * time.Millisecond),
		}, nil, nil, nil)
		if !errors.Is(err, agentlink.ErrTimeout) {
			t.Fatalf("want ErrTimeout, got code=%d err=%v", code, err)
		}
		if code != 128+9 {
			t.Fatalf("exit code %d, want 137", code)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("timeout took %s", el)
		}
		time.Sleep(2500 * time.Millisecond)
		if _, err := os.Stat(marker); err == nil {
			t.Fatalf("background child survived the timeout kill")
		}
	})
	t.Run("as another user", func(t *testing.T) {
		if os.Getuid() != 0 {
			t.Skip("switching users needs root")
		}
		var out bytes.Buffer
		code, err := c.Exec(ctx, proto.ExecRequest{Argv: []string{"sh", "-c", "id -u; echo $HOME"}, User: "nobody"}, nil, &out, nil)
		if err != nil || code != 0 || !strings.HasPrefix(out.String(), "65534\n") {
			t.Fatalf("code=%d err=%v out=%q", code, err, out.String())
		}
	})
	t.Run("signal gets through while stdin is not read", func(t *testing.T) {
		s, err := c.StartExec(ctx, proto.ExecRequest{Argv: []string{"sleep", "30"}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		// 1 MiB of stdin nobody reads: fills the pipe and the agent's queue.
		go func() { _, _ = s.Write(make([]byte, 1<<20)) }()
		time.Sleep(300 * time.Millisecond)
		if err := s.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		done := make(chan proto.ExitStatus, 1)
		go func() {
			st, _ := s.Wait(nil, nil)
			done <- st
		}()
		select {
		case st := <-done:
			if st.ExitCode != 128+15 || st.Signal != "terminated" {
				t.Fatalf("status %+v", st)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("SIGTERM stuck behind unread stdin")
		}
	})
	t.Run("unknown command", func(t *testing.T) {
		_, err := c.Exec(ctx, proto.ExecRequest{Argv: []string{"no-such-command-hangar"}}, nil, nil, nil)
		var pe *proto.Error
		if !errors.As(err, &pe) || pe.Code != proto.CodeBadRequest {
			t.Fatalf("want bad_request, got %v", err)
		}
	})
	t.Run("context cancel kills", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.Exec(cctx, proto.ExecRequest{Argv: []string{"sleep", "30"}}, nil, nil, nil)
		if err == nil || time.Since(start) > 5*time.Second {
			t.Fatalf("err=%v after %s", err, time.Since(start))
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var out bytes.Buffer
				code, err := c.Exec(ctx, proto.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("echo %d", i)}}, nil, &out, nil)
				if err != nil || code != 0 || out.String() != fmt.Sprintf("%d\n", i) {
					errs <- fmt.Errorf("exec %d: code=%d err=%v out=%q", i, code, err, out.String())
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestExecPTY(t *testing.T) {
	ta := startAgent(t, agent.Config{})
	ctx := ctxT(t, 20*time.Second)
	s, err := ta.client.StartExec(ctx, proto.ExecRequest{
		Argv: []string{"sh", "-c", "tty; stty size; read line; echo got:$line; stty size"},
		PTY:  &proto.PTYSize{Rows: 40, Cols: 100},
	})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	defer s.Close()
	var out syncBuffer
	done := make(chan proto.ExitStatus, 1)
	go func() {
		st, err := s.Wait(&out, nil)
		if err != nil {
			t.Errorf("wait: %v", err)
		}
		done <- st
	}()
	waitFor(t, 10*time.Second, "first stty output", func() bool { return contains(out.String(), "40 100") })
	if err := s.Resize(30, 90); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	st := <-done
	o := out.String()
	if st.ExitCode != 0 || !contains(o, "/dev/pts/") || !contains(o, "got:hello") || !contains(o, "30 90") {
		t.Fatalf("exit %+v output %q", st, o)
	}
}

func TestFiles(t *testing.T) {
	ta := startAgent(t, agent.Config{MaxFileBytes: 2 << 20})
	c := ta.client
	ctx := ctxT(t, 30*time.Second)
	dir := t.TempDir()

	t.Run("1 MiB round trip", func(t *testing.T) {
		data := make([]byte, 1<<20)
		_, _ = rand.Read(data)
		path := filepath.Join(dir, "sub", "deeper", "blob.bin")
		uid, gid := 1234, 5678
		st, err := c.PutFile(ctx, agentlink.PutFileRequest{Path: path, Mode: 0o600, UID: &uid, GID: &gid, Mkdir: true, Size: int64(len(data))}, bytes.NewReader(data))
		if err != nil {
			t.Fatalf("put: %v", err)
		}
		if st.Size != 1<<20 || st.Mode != 0o600 || st.UID != uid || st.GID != gid {
			t.Fatalf("put stat %+v", st)
		}
		var got bytes.Buffer
		gst, err := c.GetFile(ctx, path, 0, &got)
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if sha256.Sum256(got.Bytes()) != sha256.Sum256(data) || gst.Mode != 0o600 || gst.UID != uid {
			t.Fatalf("checksum or stat mismatch: %+v", gst)
		}
		// No temporary files are left beside it.
		entries, _ := os.ReadDir(filepath.Dir(path))
		if len(entries) != 1 {
			t.Fatalf("directory holds %d entries, want 1", len(entries))
		}
	})
	t.Run("overwrite is atomic replace", func(t *testing.T) {
		path := filepath.Join(dir, "over.txt")
		for _, s := range []string{"first", "second"} {
			if _, err := c.PutFile(ctx, agentlink.PutFileRequest{Path: path}, strings.NewReader(s)); err != nil {
				t.Fatal(err)
			}
		}
		b, _ := os.ReadFile(path)
		if string(b) != "second" {
			t.Fatalf("content %q", b)
		}
	})
	t.Run("dotdot refused", func(t *testing.T) {
		_, err := c.PutFile(ctx, agentlink.PutFileRequest{Path: dir + "/../escape.txt"}, strings.NewReader("x"))
		if !errors.Is(err, &proto.Error{Code: proto.CodeForbidden}) {
			t.Fatalf("want forbidden, got %v", err)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escape.txt")); err == nil {
			t.Fatal("file written through ..")
		}
		_, err = c.GetFile(ctx, dir+"/../../etc/passwd", 0, io.Discard)
		if !errors.Is(err, &proto.Error{Code: proto.CodeForbidden}) {
			t.Fatalf("get: want forbidden, got %v", err)
		}
	})
	t.Run("symlink escapes refused", func(t *testing.T) {
		outside := t.TempDir()
		secret := filepath.Join(outside, "secret")
		if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, filepath.Join(dir, "link-dir")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(secret, filepath.Join(dir, "link-file")); err != nil {
			t.Fatal(err)
		}
		_, err := c.PutFile(ctx, agentlink.PutFileRequest{Path: filepath.Join(dir, "link-dir", "planted")}, strings.NewReader("x"))
		if !errors.Is(err, &proto.Error{Code: proto.CodeForbidden}) {
			t.Fatalf("put through symlinked dir: want forbidden, got %v", err)
		}
		if _, err := os.Stat(filepath.Join(outside, "planted")); err == nil {
			t.Fatal("file planted through a symlink")
		}
		_, err = c.GetFile(ctx, filepath.Join(dir, "link-file"), 0, io.Discard)
		if !errors.Is(err, &proto.Error{Code: proto.CodeForbidden}) {
			t.Fatalf("get of symlink: want forbidden, got %v", err)
		}
		_, err = c.GetFile(ctx, filepath.Join(dir, "link-dir", "secret"), 0, io.Discard)
		if !errors.Is(err, &proto.Error{Code: proto.CodeForbidden}) {
			t.Fatalf("get through symlinked dir: want forbidden, got %v", err)
		}
		// Putting over a symlink replaces the link, never the target.
		if _, err := c.PutFile(ctx, agentlink.PutFileRequest{Path: filepath.Join(dir, "link-file")}, strings.NewReader("new")); err != nil {
			t.Fatalf("put over symlink: %v", err)
		}
		if b, _ := os.ReadFile(secret); string(b) != "secret" {
			t.Fatalf("symlink target modified: %q", b)
		}
	})
	t.Run("size limit", func(t *testing.T) {
		path := filepath.Join(dir, "big")
		big := make([]byte, 3<<20)
		_, err := c.PutFile(ctx, agentlink.PutFileRequest{Path: path, Size: int64(len(big))}, bytes.NewReader(big))
		if !errors.Is(err, &proto.Error{Code: proto.CodeTooLarge}) {
			t.Fatalf("want too_large with length, got %v", err)
		}
		// Without a declared length (chunked), the agent stops at the limit.
		_, err = c.PutFile(ctx, agentlink.PutFileRequest{Path: path}, io.MultiReader(bytes.NewReader(big)))
		if !errors.Is(err, &proto.Error{Code: proto.CodeTooLarge}) {
			t.Fatalf("want too_large chunked, got %v", err)
		}
		if _, err := os.Stat(path); err == nil {
			t.Fatal("oversized file was written")
		}
		if err := os.WriteFile(path, make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = c.GetFile(ctx, path, 1000, io.Discard)
		if !errors.Is(err, &proto.Error{Code: proto.CodeTooLarge}) {
			t.Fatalf("get over max: want too_large, got %v", err)
		}
	})
	t.Run("proc files read to EOF", func(t *testing.T) {
		// /proc reports size 0 for files with content.
		want, err := os.ReadFile("/proc/version")
		if err != nil || len(want) == 0 {
			t.Skipf("no /proc/version here: %v", err)
		}
		var got bytes.Buffer
		st, err := c.GetFile(ctx, "/proc/version", 0, &got)
		if err != nil || got.String() != string(want) || st.Size != int64(len(want)) {
			t.Fatalf("get /proc/version = %q (size %d), %v; want %q", got.String(), st.Size, err, want)
		}
		// The cap still holds for them.
		_, err = c.GetFile(ctx, "/proc/version", 10, io.Discard)
		if !errors.Is(err, &proto.Error{Code: proto.CodeTooLarge}) {
			t.Fatalf("get /proc/version over max: want too_large, got %v", err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		_, err := c.GetFile(ctx, filepath.Join(dir, "nope"), 0, io.Discard)
		if !errors.Is(err, &proto.Error{Code: proto.CodeNotFound}) {
			t.Fatalf("want not_found, got %v", err)
		}
	})
}

func TestWrongTokenRefused(t *testing.T) {
	ta := startAgent(t, agent.Config{})
	const wrong = "wrong-token-abcdefghijklmnop"
	c, err := agentlink.DialQEMU(ctxT(t, 10*time.Second), ta.sock, agentlink.Options{Token: wrong})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_, err = c.Health(ctxT(t, 10*time.Second))
	if !errors.Is(err, &proto.Error{Code: proto.CodeUnauthorized}) {
		t.Fatalf("want unauthorized, got %v", err)
	}
	_, err = c.Exec(ctxT(t, 10*time.Second), proto.ExecRequest{Argv: []string{"true"}}, nil, nil, nil)
	if !errors.Is(err, &proto.Error{Code: proto.CodeUnauthorized}) {
		t.Fatalf("exec: want unauthorized, got %v", err)
	}
	for _, s := range []string{err.Error(), ta.console.String()} {
		if strings.Contains(s, wrong) || strings.Contains(s, testToken) {
			t.Fatalf("token leaked into %q", s)
		}
	}
}

func TestPortForward(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				// Greet first, like an RFB server, then echo.
				_, _ = c.Write([]byte("RFB 003.008\n"))
				_, _ = io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	ta := startAgent(t, agent.Config{})
	ctx := ctxT(t, 20*time.Second)
	port := ln.Addr().(*net.TCPAddr).Port
	conn, err := ta.client.DialPort(ctx, port)
	if err != nil {
		t.Fatalf("dial port: %v", err)
	}
	greet := make([]byte, 12)
	if _, err := io.ReadFull(conn, greet); err != nil || string(greet) != "RFB 003.008\n" {
		t.Fatalf("greeting %q err %v", greet, err)
	}
	msg := bytes.Repeat([]byte("ping "), 100000)
	go func() { _, _ = conn.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo mismatch: %v", err)
	}
	conn.Close()

	// A closed port is reported, not hung on.
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := l2.Addr().(*net.TCPAddr).Port
	l2.Close()
	_, err = ta.client.DialPort(ctx, closed)
	if !errors.Is(err, &proto.Error{Code: proto.CodeUnavailable}) {
		t.Fatalf("closed port: want unavailable, got %v", err)
	}
}

func TestClockAndShutdown(t *testing.T) {
	var mu sync.Mutex
	var clocks []time.Time
	powered := make(chan bool, 1)
	ta := startAgent(t, agent.Config{
		SetClock: func(tm time.Time) error {
			mu.Lock()
			defer mu.Unlock()
			clocks = append(clocks, tm)
			return nil
		},
		PowerOff: func(reboot bool) { powered <- reboot },
	})
	// The agent sets its clock right after it answers the handshake, so
	// the host may be a moment ahead of it.
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(clocks)
	}
	waitFor(t, 5*time.Second, "the clock set on connect", func() bool { return count() >= 1 })
	if n := count(); n != 1 {
		t.Fatalf("clock set %d times on connect, want 1", n)
	}
	want := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := ta.client.SetClock(ctxT(t, 5*time.Second), want); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	last := clocks[len(clocks)-1]
	mu.Unlock()
	if !last.Equal(want) {
		t.Fatalf("clock set to %s, want %s", last, want)
	}
	if err := ta.client.Shutdown(ctxT(t, 5*time.Second), true); err != nil {
		t.Fatal(err)
	}
	select {
	case reboot := <-powered:
		if !reboot {
			t.Fatal("reboot flag lost")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("power off not called")
	}
}

// TestReconnectPersistentStream is the daemon-restart case: the host drops
// its connection to a virtio-serial-like stream and a new host connects;
// exec must work on the new session without restarting the agent.
func TestReconnectPersistentStream(t *testing.T) {
	for _, eof := range []bool{true, false} {
		t.Run(fmt.Sprintf("guest_sees_eof=%v", eof), func(t *testing.T) {
			port := newFakePort(eof)
			a, err := agent.New(agent.Config{Token: testToken, Console: io.Discard})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { _ = a.Run(ctx) }()
			served := make(chan struct{})
			go func() {
				defer close(served)
				_ = a.ServePort(ctx, port.open)
			}()
			for i := range 3 {
				dctx, dcancel := context.WithTimeout(ctx, 15*time.Second)
				c, err := agentlink.New(dctx, port.connect(), agentlink.Options{Token: testToken})
				dcancel()
				if err != nil {
					t.Fatalf("connect %d: %v", i, err)
				}
				var out bytes.Buffer
				code, err := c.Exec(ctxT(t, 10*time.Second), proto.ExecRequest{Argv: []string{"echo", fmt.Sprint("round ", i)}}, nil, &out, nil)
				if err != nil || code != 0 || out.String() != fmt.Sprintf("round %d\n", i) {
					t.Fatalf("round %d: code=%d err=%v out=%q", i, code, err, out.String())
				}
				// Leave an event stream open, so the old session has live
				// streams when the host vanishes, then drop without a goodbye.
				if _, err := c.Events(ctxT(t, 10*time.Second)); err != nil {
					t.Fatal(err)
				}
				c.Close()
			}
			cancel()
			<-served
		})
	}
}
