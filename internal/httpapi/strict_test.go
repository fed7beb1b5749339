package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/httpapi"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/pkg/api"
)

// TestStrictJSON: a request body is exactly one JSON object sent as
// application/json. Trailing data after the object (even a lone bracket,
// which json.Decoder.More misses) and a missing or other content type are
// refused before the handler sees the body.
func TestStrictJSON(t *testing.T) {
	e := newEnv(t, "sqlite", 1000)
	cases := []struct {
		name, ct, body string
		status         int
		want           string
	}{
		{"trailing bracket", "application/json", `{"name":"bob"}}`, 400, "data follows it"},
		{"trailing garbage", "application/json", `{"name":"bob"} x`, 400, "data follows it"},
		{"trailing array", "application/json", `{"name":"bob"}[]`, 400, "data follows it"},
		{"no content type", "", `{"name":"bob"}`, 415, "application/json"},
		{"form", "application/x-www-form-urlencoded", `{"name":"bob"}`, 415, "application/json"},
		{"json lookalike", "application/jsonp", `{"name":"bob"}`, 415, "application/json"},
		{"null", "application/json", `null`, 400, "not null"},
		{"list", "application/json", `[{"name":"bob"}]`, 400, "not a list"},
		{"number", "application/json", ` 5`, 400, "not a number"},
		{"charset is fine", "application/json; charset=utf-8", `{"name":"carol"}`, 201, ""},
		{"trailing space is fine", "application/json", "{\"name\":\"dave\"}\n\t ", 201, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, e.url+"/api/v1/users", strings.NewReader(c.body))
			req.Header.Set("Authorization", "Bearer "+e.adminKey)
			if c.ct != "" {
				req.Header.Set("Content-Type", c.ct)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var er api.ErrorResponse
			_ = json.NewDecoder(resp.Body).Decode(&er)
			if resp.StatusCode != c.status || !strings.Contains(er.Error.Message, c.want) {
				t.Fatalf("%d %q, want %d containing %q", resp.StatusCode, er.Error.Message, c.status, c.want)
			}
		})
	}
}

// TestSlowBodyIsCut: a client that sends headers and then trickles (here:
// stops sending) its body is answered and cut after the body read
// timeout, instead of holding a handler forever.
func TestSlowBodyIsCut(t *testing.T) {
	log := testutil.Logger(t)
	st, err := store.Open(t.Context(), filepath.Join(t.TempDir(), "hangar.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv := httpapi.New(httpapi.Options{Store: st, Events: events.NewBus(st, log), Log: log, Version: "test",
		RateLimit: 100, RateWindow: time.Minute, MaxBodyBytes: 4096, BodyReadTimeout: 300 * time.Millisecond})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { srv.Close(); hs.Close() })
	u := store.User{ID: store.NewID("usr"), Name: "root", Role: store.RoleAdmin}
	if err := st.CreateUser(t.Context(), u); err != nil {
		t.Fatal(err)
	}
	key := httpapi.NewKey()
	if err := st.CreateAPIKey(t.Context(), store.APIKey{ID: store.NewID("key"), UserID: u.ID, Hash: httpapi.HashKey(key), Prefix: key[:8]}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", strings.TrimPrefix(hs.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	fmt.Fprintf(c, "POST /api/v1/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na", key)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body within 10s: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || time.Since(start) > 5*time.Second {
		t.Fatalf("stalled body: %d after %s, want 400 after about 300ms", resp.StatusCode, time.Since(start))
	}
}

// TestEventStreamsPerUserAreCapped: a user's open event streams are
// bounded; a closed stream frees its slot; another user is unaffected.
func TestEventStreamsPerUserAreCapped(t *testing.T) {
	log := testutil.Logger(t)
	st, err := store.Open(t.Context(), filepath.Join(t.TempDir(), "hangar.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv := httpapi.New(httpapi.Options{Store: st, Events: events.NewBus(st, log), Log: log, Version: "test",
		RateLimit: 100, RateWindow: time.Minute, MaxBodyBytes: 4096, MaxStreamsPerUser: 2})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { srv.Close(); hs.Close() })
	keys := map[string]string{}
	for _, name := range []string{"alice", "bob"} {
		u := store.User{ID: store.NewID("usr"), Name: name, Role: store.RoleUser}
		if err := st.CreateUser(t.Context(), u); err != nil {
			t.Fatal(err)
		}
		key := httpapi.NewKey()
		if err := st.CreateAPIKey(t.Context(), store.APIKey{ID: store.NewID("key"), UserID: u.ID, Hash: httpapi.HashKey(key), Prefix: key[:8]}); err != nil {
			t.Fatal(err)
		}
		keys[name] = key
	}
	open := func(key string) (*http.Response, context.CancelFunc) {
		ctx, cancel := context.WithCancel(t.Context())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, hs.URL+"/api/v1/events", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		return resp, func() { cancel(); resp.Body.Close() }
	}
	r1, close1 := open(keys["alice"])
	defer close1()
	r2, close2 := open(keys["alice"])
	defer close2()
	if r1.StatusCode != 200 || r2.StatusCode != 200 {
		t.Fatalf("first two streams: %d, %d", r1.StatusCode, r2.StatusCode)
	}
	r3, close3 := open(keys["alice"])
	var er api.ErrorResponse
	_ = json.NewDecoder(r3.Body).Decode(&er)
	close3()
	if r3.StatusCode != http.StatusTooManyRequests || !strings.Contains(er.Error.Message, "per user is 2: you have 2 open, 0 left") {
		t.Fatalf("third stream: %d %q, want 429 naming the limit", r3.StatusCode, er.Error.Message)
	}
	rb, closeB := open(keys["bob"])
	defer closeB()
	if rb.StatusCode != 200 {
		t.Fatalf("bob's stream: %d", rb.StatusCode)
	}
	close1()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, c := open(keys["alice"])
		c()
		if r.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a closed stream never freed its slot (%d)", r.StatusCode)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// countingStore counts key lookups.
type countingStore struct {
	store.Store
	lookups atomic.Int32
}

func (s *countingStore) LookupAPIKey(ctx context.Context, hash string) (store.APIKey, store.User, error) {
	s.lookups.Add(1)
	return s.Store.LookupAPIKey(ctx, hash)
}

// TestRateLimitBeforeKeyLookup: once an address used its window on wrong
// keys, further guesses are refused without a store lookup; every answer
// carries the RateLimit-* fields.
func TestRateLimitBeforeKeyLookup(t *testing.T) {
	log := testutil.Logger(t)
	inner, err := store.Open(t.Context(), filepath.Join(t.TempDir(), "hangar.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inner.Close() })
	st := &countingStore{Store: inner}
	srv := httpapi.New(httpapi.Options{Store: st, Events: events.NewBus(st, log), Log: log, Version: "test",
		RateLimit: 3, RateWindow: time.Minute, MaxBodyBytes: 4096})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { srv.Close(); hs.Close() })
	for i := 1; i <= 10; i++ {
		code, hdr, _ := raw(t, "GET", hs.URL+"/api/v1/me", "wrong-key-"+strconv.Itoa(i), "")
		want := 401
		if i > 3 {
			want = 429
		}
		if code != want {
			t.Fatalf("guess %d: %d, want %d", i, code, want)
		}
		if i <= 3 && (hdr.Get("RateLimit-Limit") != "3" || hdr.Get("RateLimit-Remaining") != strconv.Itoa(3-i) || hdr.Get("RateLimit-Reset") == "") {
			t.Fatalf("guess %d: RateLimit headers %v", i, hdr)
		}
	}
	if n := st.lookups.Load(); n != 3 {
		t.Fatalf("%d key lookups for 10 guesses, want 3 (the limited ones cost nothing)", n)
	}
}
