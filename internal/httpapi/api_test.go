package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/httpapi"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// env is one API server on a real store, with an admin key.
type env struct {
	url      string
	store    store.Store
	adminKey string
}

func newEnv(t *testing.T, dialect string, limit int) *env {
	t.Helper()
	dsn := filepath.Join(t.TempDir(), "hangar.db")
	if dialect == "postgres" {
		dsn = testutil.PostgresDSN(t)
	}
	log := testutil.Logger(t)
	ctx := context.Background()
	st, err := store.Open(ctx, dsn, log)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	if st.Dialect() != dialect {
		t.Fatalf("store dialect = %q, want %q", st.Dialect(), dialect)
	}
	srv := httpapi.New(httpapi.Options{
		Store: st, Events: events.NewBus(st, log), Log: log, Version: "test",
		RateLimit: limit, RateWindow: 15 * time.Minute, MaxBodyBytes: 4096,
	})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { srv.Close(); hs.Close() })

	u := store.User{ID: store.NewID("usr"), Name: "root", Role: store.RoleAdmin, CreatedAt: time.Now()}
	if err := st.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	key := httpapi.NewKey()
	if err := st.CreateAPIKey(ctx, store.APIKey{ID: store.NewID("key"), UserID: u.ID, Hash: httpapi.HashKey(key), Prefix: key[:8], CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return &env{url: hs.URL, store: st, adminKey: key}
}

func forEachStore(t *testing.T, fn func(t *testing.T, dialect string)) {
	for _, d := range []string{"sqlite", "postgres"} {
		t.Run(d, func(t *testing.T) { fn(t, d) })
	}
}

// raw sends a request and returns status, headers and body.
func raw(t *testing.T, method, url, key, body string) (int, http.Header, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, rd)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func errorCode(t *testing.T, body string) string {
	t.Helper()
	var er api.ErrorResponse
	if err := json.Unmarshal([]byte(body), &er); err != nil || er.Error.Code == "" || er.Error.Message == "" {
		t.Fatalf("body is not an error envelope with code and message: %q", body)
	}
	return er.Error.Code
}

func TestHealthAndAuth(t *testing.T) {
	forEachStore(t, func(t *testing.T, dialect string) {
		e := newEnv(t, dialect, 1000)
		ctx := context.Background()
		h, err := client.New(e.url, "").Health(ctx)
		if err != nil || h.Status != "ok" || h.Store != dialect || h.Version != "test" {
			t.Fatalf("health = %+v, %v", h, err)
		}

		st, hdr, body := raw(t, "GET", e.url+"/api/v1/me", "", "")
		if st != 401 || errorCode(t, body) != api.CodeUnauthenticated || hdr.Get("WWW-Authenticate") == "" {
			t.Fatalf("me without key: %d %q", st, body)
		}
		st, _, body = raw(t, "GET", e.url+"/api/v1/me", "hgr_notakey", "")
		if st != 401 || strings.Contains(body, "hgr_notakey") {
			t.Fatalf("me with a wrong key: %d %q (the key must not be echoed)", st, body)
		}
		me, err := client.New(e.url, e.adminKey).Me(ctx)
		if err != nil || me.Role != store.RoleAdmin || me.Name != "root" {
			t.Fatalf("me with admin key = %+v, %v", me, err)
		}

		// A user key works for /me but is 403 on admin routes.
		admin := client.New(e.url, e.adminKey)
		alice, err := admin.CreateUser(ctx, api.CreateUserRequest{Name: "alice"})
		if err != nil || !strings.HasPrefix(alice.APIKey, "hgr_") || alice.Role != "user" {
			t.Fatalf("create alice = %+v, %v", alice, err)
		}
		ac := client.New(e.url, alice.APIKey)
		if me, err := ac.Me(ctx); err != nil || me.ID != alice.ID {
			t.Fatalf("alice me = %+v, %v", me, err)
		}
		if _, err := ac.ListUsers(ctx); !client.IsStatus(err, 403) {
			t.Fatalf("alice lists users: %v, want 403", err)
		}
		if _, err := ac.CreateUser(ctx, api.CreateUserRequest{Name: "mallory"}); !client.IsStatus(err, 403) {
			t.Fatalf("alice creates a user: %v, want 403", err)
		}
		// The key is stored only as a hash.
		if _, _, err := e.store.LookupAPIKey(ctx, alice.APIKey); err == nil {
			t.Fatal("the raw key found a stored key; keys must be stored hashed")
		}
		// Duplicate names conflict.
		if _, err := admin.CreateUser(ctx, api.CreateUserRequest{Name: "alice"}); !client.IsStatus(err, 409) {
			t.Fatalf("duplicate user: %v, want 409", err)
		}
		// Deleting a user revokes their key.
		if err := admin.DeleteUser(ctx, alice.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := ac.Me(ctx); !client.IsStatus(err, 401) {
			t.Fatalf("deleted user's key: %v, want 401", err)
		}
		if err := admin.DeleteUser(ctx, alice.ID); !client.IsStatus(err, 404) {
			t.Fatalf("delete missing user: %v, want 404", err)
		}
	})
}

func TestBadInput(t *testing.T) {
	forEachStore(t, func(t *testing.T, dialect string) {
		e := newEnv(t, dialect, 1000)
		u := e.url + "/api/v1/users"
		cases := []struct {
			name, body, want string
			status           int
		}{
			{"unknown field", `{"name":"bob","colour":"red"}`, `"colour"`, 400},
			{"malformed", `{"name":`, "malformed", 400},
			{"wrong type", `{"name":5}`, `"name"`, 400},
			{"empty name", `{"name":""}`, "name is required", 400},
			{"bad name", `{"name":"a b"}`, "letters", 400},
			{"bad role", `{"name":"bob","role":"god"}`, "role", 400},
			{"two objects", `{"name":"bob"}{"name":"eve"}`, "single JSON object", 400},
			{"too large", `{"name":"` + strings.Repeat("x", 5000) + `"}`, "larger than 4096", 413},
		}
		for _, c := range cases {
			st, _, body := raw(t, "POST", u, e.adminKey, c.body)
			errorCode(t, body)
			var er api.ErrorResponse
			_ = json.Unmarshal([]byte(body), &er)
			if st != c.status || !strings.Contains(er.Error.Message, c.want) {
				t.Errorf("%s: %d %q, want %d containing %q", c.name, st, er.Error.Message, c.status, c.want)
			}
		}
		st, _, body := raw(t, "GET", e.url+"/api/v1/nothing", e.adminKey, "")
		if st != 404 || errorCode(t, body) != api.CodeNotFound {
			t.Errorf("unknown route: %d %s", st, body)
		}
		st, _, body = raw(t, "PUT", e.url+"/api/v1/me", e.adminKey, "")
		if st != 405 && st != 404 {
			t.Errorf("wrong method: %d %s", st, body)
		}
	})
}

func TestRateLimit(t *testing.T) {
	forEachStore(t, func(t *testing.T, dialect string) {
		e := newEnv(t, dialect, 5)
		for i := 1; i <= 5; i++ {
			if st, _, body := raw(t, "GET", e.url+"/api/v1/me", e.adminKey, ""); st != 200 {
				t.Fatalf("request %d: %d %s", i, st, body)
			}
		}
		st, hdr, body := raw(t, "GET", e.url+"/api/v1/me", e.adminKey, "")
		if st != 429 || errorCode(t, body) != api.CodeRateLimited {
			t.Fatalf("6th request: %d %s, want 429", st, body)
		}
		var secs int
		if _, err := fmt.Sscan(hdr.Get("Retry-After"), &secs); err != nil || secs < 1 || secs > 900 {
			t.Fatalf("Retry-After = %q, want 1..900 seconds", hdr.Get("Retry-After"))
		}
		// Unauthenticated calls are limited per address, separately.
		for i := 1; i <= 5; i++ {
			if st, _, _ := raw(t, "GET", e.url+"/api/v1/me", "", ""); st != 401 {
				t.Fatalf("anonymous request %d: %d, want 401", i, st)
			}
		}
		if st, hdr, _ := raw(t, "GET", e.url+"/api/v1/me", "", ""); st != 429 || hdr.Get("Retry-After") == "" {
			t.Fatalf("6th anonymous request: %d, want 429 with Retry-After", st)
		}
		// Probes are not limited.
		if st, _, _ := raw(t, "GET", e.url+"/health", "", ""); st != 200 {
			t.Fatalf("health after limit: %d", st)
		}
	})
}

// TestOwnerScoping proves through the API that one user cannot see or touch
// another's resources.
func TestOwnerScoping(t *testing.T) {
	forEachStore(t, func(t *testing.T, dialect string) {
		e := newEnv(t, dialect, 1000)
		ctx := context.Background()
		admin := client.New(e.url, e.adminKey)
		alice, err := admin.CreateUser(ctx, api.CreateUserRequest{Name: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		bob, err := admin.CreateUser(ctx, api.CreateUserRequest{Name: "bob"})
		if err != nil {
			t.Fatal(err)
		}
		ac, bc := client.New(e.url, alice.APIKey), client.New(e.url, bob.APIKey)
		if err := bc.DeleteUser(ctx, alice.ID); !client.IsStatus(err, 403) {
			t.Fatalf("bob deletes alice: %v, want 403", err)
		}
		if _, err := ac.Me(ctx); err != nil {
			t.Fatalf("alice after bob's attempt: %v", err)
		}

		// Events: each sees their own only; the admin sees both.
		seen := func(c *client.Client) map[string]bool {
			got := map[string]bool{}
			cctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
			defer cancel()
			_ = c.Events(cctx, 0, func(ev api.Event) error {
				got[ev.Type+":"+ev.Subject] = true
				return nil
			})
			return got
		}
		a, b, all := seen(ac), seen(bc), seen(admin)
		if !a["user_created:"+alice.ID] || a["user_created:"+bob.ID] {
			t.Errorf("alice's events = %v: want her own user_created and not bob's", a)
		}
		if !b["user_created:"+bob.ID] || b["user_created:"+alice.ID] {
			t.Errorf("bob's events = %v: want his own user_created and not alice's", b)
		}
		if !all["user_created:"+alice.ID] || !all["user_created:"+bob.ID] {
			t.Errorf("admin's events = %v: want both", all)
		}
	})
}

func TestEventsResume(t *testing.T) {
	forEachStore(t, func(t *testing.T, dialect string) {
		e := newEnv(t, dialect, 1000)
		ctx := context.Background()
		admin := client.New(e.url, e.adminKey)
		for _, n := range []string{"u1", "u2", "u3"} {
			if _, err := admin.CreateUser(ctx, api.CreateUserRequest{Name: n}); err != nil {
				t.Fatal(err)
			}
		}
		// Read the first event, then resume after it with Last-Event-ID.
		req, _ := http.NewRequest("GET", e.url+"/api/v1/events", nil)
		req.Header.Set("Authorization", "Bearer "+e.adminKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Fatalf("content type %q", ct)
		}
		sc := bufio.NewScanner(resp.Body)
		var firstID string
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
				firstID = id
				break
			}
		}
		resp.Body.Close()
		var first int64
		fmt.Sscan(firstID, &first)
		if first <= 0 {
			t.Fatalf("no event id in the stream")
		}
		var ids []int64
		cctx, cancel := context.WithCancel(ctx)
		go func() {
			// A new event while following arrives live.
			time.Sleep(300 * time.Millisecond)
			_, _ = admin.CreateUser(ctx, api.CreateUserRequest{Name: "u4"})
		}()
		_ = admin.Events(cctx, first, func(ev api.Event) error {
			ids = append(ids, ev.ID)
			if len(ids) == 3 {
				cancel()
			}
			return nil
		})
		cancel()
		if len(ids) != 3 || ids[0] != first+1 || ids[2] != first+3 {
			t.Fatalf("resumed after %d got %v, want the next three ids in order", first, ids)
		}
	})
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, "sqlite", 1000)
	raw(t, "GET", e.url+"/api/v1/me", e.adminKey, "")
	raw(t, "GET", e.url+"/api/v1/me", "", "")
	st, _, body := raw(t, "GET", e.url+"/metrics", "", "")
	if st != 200 {
		t.Fatalf("metrics: %d", st)
	}
	for _, want := range []string{
		`hangar_http_requests_total{method="GET",route="/api/v1/me",status="200"} 1`,
		`hangar_http_requests_total{method="GET",route="/api/v1/me",status="401"} 1`,
		`hangar_http_request_duration_seconds_bucket{method="GET",route="/api/v1/me",status="200",le=`,
		"go_goroutines ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
