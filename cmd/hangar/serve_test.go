package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/daemon"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/pkg/api"
)

// These tests run the real hangar binary as a separate process, the way a
// user does, so signals, files and flags are exercised for real.

func hangarBin(t *testing.T) string {
	t.Helper()
	return testutil.BuildBinary(t, ".")
}

// proc is a running `hangar serve`.
type proc = testutil.DaemonProcess

// startServe starts the daemon and waits for it to say where it listens.
func startServe(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	argv := append([]string{hangarBin(t), "serve", "--listen", "127.0.0.1:0"}, args...)
	// These tests are about the daemon, not images: a temp data dir would
	// otherwise start a full guest image build. Nor about VM networking,
	// which by default would create slots in this machine's namespace.
	return testutil.StartDaemonProcess(t, argv, append([]string{"HANGAR_BUILD_IMAGES=false", "HANGAR_NETWORK=false"}, env...), 60*time.Second)
}

func get(t *testing.T, url, key string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// runCLI runs a client subcommand against the daemon.
func runCLI(t *testing.T, dataDir, server string, args ...string) string {
	t.Helper()
	cmd := exec.Command(hangarBin(t), append([]string{"--data-dir", dataDir, "--server", server}, args...)...)
	cmd.Env = append(os.Environ(), "HANGAR_TOKEN=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hangar %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func TestServeOnDefaults(t *testing.T) {
	dataDir := t.TempDir()
	p := startServe(t, nil, "--data-dir", dataDir)

	st, _, body := get(t, p.URL+"/health", "")
	var h api.Health
	if st != 200 || json.Unmarshal(body, &h) != nil || h.Status != "ok" || h.Store != "sqlite" {
		t.Fatalf("health: %d %s", st, body)
	}
	keyPath := filepath.Join(dataDir, daemon.AdminKeyFile)
	fi, err := os.Stat(keyPath)
	if err != nil {
		t.Fatalf("admin key not written: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin key mode %v, want 0600", fi.Mode().Perm())
	}
	if !strings.Contains(p.Logs(), keyPath) {
		t.Fatalf("the daemon did not say where the admin key is")
	}
	keyBytes, _ := os.ReadFile(keyPath)
	key := strings.TrimSpace(string(keyBytes))
	if strings.Contains(p.Logs(), key) {
		t.Fatal("the admin key itself appears in the daemon's log")
	}
	if st, _, _ := get(t, p.URL+"/api/v1/me", ""); st != 401 {
		t.Fatalf("me without key: %d, want 401", st)
	}
	if st, _, body := get(t, p.URL+"/api/v1/me", key); st != 200 || !strings.Contains(string(body), `"admin"`) {
		t.Fatalf("me with admin key: %d %s", st, body)
	}

	// The CLI picks up the admin key from the data dir.
	if out := runCLI(t, dataDir, p.URL, "me"); !strings.Contains(out, "admin") || !strings.Contains(out, "ROLE") {
		t.Fatalf("hangar me:\n%s", out)
	}
	out := runCLI(t, dataDir, p.URL, "user", "create", "carol")
	if !strings.Contains(out, "hgr_") {
		t.Fatalf("user create did not print the key:\n%s", out)
	}
	var users []api.User
	if err := json.Unmarshal([]byte(runCLI(t, dataDir, p.URL, "user", "ls", "--json")), &users); err != nil || len(users) != 2 {
		t.Fatalf("user ls --json: %v %+v", err, users)
	}
	var carol api.User
	for _, u := range users {
		if u.Name == "carol" {
			carol = u
		}
	}
	if out := runCLI(t, dataDir, p.URL, "user", "rm", carol.ID); !strings.Contains(out, "deleted "+carol.ID) {
		t.Fatalf("user rm:\n%s", out)
	}
	// Request ids tie log lines to requests.
	if !regexp.MustCompile(`msg=request .*request_id=[0-9a-f]{16} .*user_id=usr_\w+ .*path=/api/v1/me status=200`).MatchString(p.Logs()) {
		t.Fatalf("no request log line with a request id")
	}

	// A restart keeps the same admin and does not write a new key.
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	<-p.Done
	p2 := startServe(t, nil, "--data-dir", dataDir)
	if st, _, _ := get(t, p2.URL+"/api/v1/me", key); st != 200 {
		t.Fatalf("admin key after restart: %d", st)
	}
}

func TestServeRejectsBadConfig(t *testing.T) {
	cmd := exec.Command(hangarBin(t), "serve", "--data-dir", t.TempDir(), "--listen", "nowhere", "--rate-limit", "lots", "--log-level", "loud")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("serve accepted a bad config:\n%s", out)
	}
	for _, want := range []string{`listen "nowhere"`, "rate_limit", `log_level "loud"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("error output lacks %q:\n%s", want, out)
		}
	}
	cfg := filepath.Join(t.TempDir(), "hangar.json")
	os.WriteFile(cfg, []byte(`{"listen":"127.0.0.1:0","colour":"red"}`), 0o600)
	out, err = exec.Command(hangarBin(t), "serve", "--config", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `unknown field "colour"`) {
		t.Fatalf("config file with an unknown key: %v\n%s", err, out)
	}
}

func TestServeRateLimitFlag(t *testing.T) {
	dataDir := t.TempDir()
	p := startServe(t, nil, "--data-dir", dataDir, "--rate-limit", "5/1m")
	keyBytes, _ := os.ReadFile(filepath.Join(dataDir, daemon.AdminKeyFile))
	key := strings.TrimSpace(string(keyBytes))
	for i := 1; i <= 5; i++ {
		if st, _, _ := get(t, p.URL+"/api/v1/me", key); st != 200 {
			t.Fatalf("request %d: %d", i, st)
		}
	}
	st, hdr, body := get(t, p.URL+"/api/v1/me", key)
	if st != 429 || hdr.Get("Retry-After") == "" {
		t.Fatalf("6th request: %d Retry-After=%q %s", st, hdr.Get("Retry-After"), body)
	}
}

// TestGracefulShutdown: SIGTERM while a client follows the event stream;
// the daemon ends the stream, finishes, closes the store and exits 0.
func TestGracefulShutdown(t *testing.T) {
	dataDir := t.TempDir()
	p := startServe(t, nil, "--data-dir", dataDir)
	keyBytes, _ := os.ReadFile(filepath.Join(dataDir, daemon.AdminKeyFile))
	req, _ := http.NewRequest("GET", p.URL+"/api/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(keyBytes)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	start := time.Now()
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.Done:
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon still running 20s after SIGTERM:\n%s", p.Logs())
	}
	if code := p.Cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM:\n%s", code, p.Logs())
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Logf("stream ended with %v", err)
	}
	logs := p.Logs()
	if !strings.Contains(logs, "shutdown complete") || strings.Index(logs, "shutting down") > strings.Index(logs, "shutdown complete") {
		t.Fatalf("no orderly shutdown in the log:\n%s", logs)
	}
	t.Logf("shut down in %s with an open event stream", time.Since(start).Round(time.Millisecond))
}

// TestTaskRerunsAfterSIGKILL kills the daemon while it holds a task; the next
// daemon runs it again exactly once after the lease expires.
func TestTaskRerunsAfterSIGKILL(t *testing.T) {
	for _, dialect := range []string{"sqlite", "postgres"} {
		t.Run(dialect, func(t *testing.T) {
			dataDir := t.TempDir()
			args := []string{"--data-dir", dataDir}
			dsn := filepath.Join(dataDir, "hangar.db")
			if dialect == "postgres" {
				dsn = testutil.PostgresDSN(t)
				args = append(args, "--database", dsn)
			}
			ctx := context.Background()
			st, err := store.Open(ctx, dsn, testutil.Logger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			record := filepath.Join(t.TempDir(), "runs")
			payload, _ := json.Marshal(daemon.DebugTaskPayload{File: record, Sleep: "3s"})
			task, err := st.EnqueueTask(ctx, store.Task{Kind: daemon.DebugTaskKind, Payload: payload})
			if err != nil {
				t.Fatal(err)
			}
			env := []string{"HANGAR_DEBUG_TASKS=1", "HANGAR_TASK_LEASE=2s"}
			lines := func() []string {
				b, _ := os.ReadFile(record)
				return strings.Fields(strings.ReplaceAll(string(b), "\n", " | "))
			}
			waitFor := func(what string, cond func() bool, within time.Duration) {
				deadline := time.Now().Add(within)
				for !cond() {
					if time.Now().After(deadline) {
						t.Fatalf("%s did not happen within %s; runs file: %v", what, within, lines())
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			readRuns := func() string { b, _ := os.ReadFile(record); return string(b) }

			p1 := startServe(t, env, args...)
			waitFor("first run", func() bool { return strings.Contains(readRuns(), "start") }, 30*time.Second)
			killedAt := time.Now()
			_ = p1.Cmd.Process.Signal(syscall.SIGKILL)
			<-p1.Done

			p2 := startServe(t, env, args...)
			waitFor("second run done", func() bool { return strings.Contains(readRuns(), "done") }, 30*time.Second)
			if took := time.Since(killedAt); took < 2*time.Second {
				t.Fatalf("the task ran again %s after the kill, before its 2s lease expired", took)
			}
			// Give a third run every chance to happen, then check it did not.
			time.Sleep(3 * time.Second)
			want := fmt.Sprintf("start %d 1\nstart %d 2\ndone %d 2\n", task.ID, task.ID, task.ID)
			if got := readRuns(); got != want {
				t.Fatalf("runs:\n%s\nwant:\n%s", got, want)
			}
			got, err := st.GetTask(ctx, task.ID)
			if err != nil || got.State != store.TaskDone {
				t.Fatalf("task after the rerun: %+v, %v", got, err)
			}
			_ = p2
		})
	}
}
