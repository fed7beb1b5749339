package daemon

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// These tests run the whole daemon in-process (store, API, managers) on a
// loopback port, with VM networking off and no VM booted: they are about
// the API's boundaries, not VMs.

type testDaemon struct {
	d     *Daemon
	url   string
	admin *client.Client
}

var backends = []struct {
	name string
	db   func(t *testing.T) string // "" for SQLite in the data dir
}{
	{"sqlite", func(*testing.T) string { return "" }},
	{"postgres", func(t *testing.T) string { return testutil.PostgresDSN(t) }},
}

func startDaemon(t *testing.T, database string, mutate func(*config.Config)) *testDaemon {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Database = database
	cfg.Listen = "127.0.0.1:0"
	cfg.BuildImages = false
	cfg.Network.Enabled = false
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := testutil.Logger(t)
	d, err := New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	addr, err := d.Listen()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("daemon did not stop")
		}
	})
	key, err := os.ReadFile(filepath.Join(cfg.DataDir, AdminKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + addr.String()
	return &testDaemon{d: d, url: u, admin: client.New(u, strings.TrimSpace(string(key)))}
}

func (td *testDaemon) user(t *testing.T, name string) (api.CreateUserResponse, *client.Client) {
	t.Helper()
	u, err := td.admin.CreateUser(t.Context(), api.CreateUserRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return u, client.New(td.url, u.APIKey)
}

// TestNetworkPolicyIsTheAdminsNotTheUsers: an admin's policy for a user is
// readable and changeable by admins only, the user cannot delete it through
// the credentials API (which used to hold it), and the proxy's password
// never comes back.
func TestNetworkPolicyIsTheAdminsNotTheUsers(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			td := startDaemon(t, b.db(t), nil)
			ctx := t.Context()
			bob, bobc := td.user(t, "bob")
			const secret = "s3cret-proxy-password"
			p, err := td.admin.SetUserNetwork(ctx, bob.ID, api.PutNetworkPolicyRequest{
				Mode: api.EgressAllow, Allow: []string{"10.0.0.0/8"}, Proxy: "http://u:" + secret + "@proxy.test:3128"})
			if err != nil {
				t.Fatalf("set policy: %v", err)
			}
			if p.Mode != api.EgressAllow || p.ProxyHost != "http://proxy.test:3128" || p.Version != 1 {
				t.Fatalf("policy = %+v", p)
			}
			// The user tries the old way out, and the new routes.
			for _, name := range []string{"hangar.network", "no-such-provider"} {
				err := bobc.DeleteCredential(ctx, name)
				if !client.IsStatus(err, http.StatusBadRequest) {
					t.Errorf("user deletes credential %q: %v, want 400", name, err)
				}
			}
			if err := bobc.DeleteUserNetwork(ctx, bob.ID); !client.IsStatus(err, http.StatusForbidden) {
				t.Errorf("user deletes their network policy: %v, want 403", err)
			}
			if _, err := bobc.SetUserNetwork(ctx, bob.ID, api.PutNetworkPolicyRequest{Mode: api.EgressFull}); !client.IsStatus(err, http.StatusForbidden) {
				t.Errorf("user sets their network policy: %v, want 403", err)
			}
			if _, err := bobc.UserNetwork(ctx, bob.ID); !client.IsStatus(err, http.StatusForbidden) {
				t.Errorf("user reads their network policy: %v, want 403", err)
			}
			got, err := td.admin.UserNetwork(ctx, bob.ID)
			if err != nil || got.Mode != api.EgressAllow || got.Version != 1 {
				t.Fatalf("policy after the user's attempts = %+v, %v", got, err)
			}
			// What VMs boot with: the sealed proxy opens to the full URL.
			pol, err := (&policies{store: td.d.store, keys: td.d.netKeys}).VMPolicy(ctx, bob.ID, api.KindCLI)
			if err != nil || string(pol.Mode) != api.EgressAllow || pol.Upstream == nil || pol.Upstream.String() != "http://u:"+secret+"@proxy.test:3128" {
				t.Fatalf("vm policy = %+v, %v", pol, err)
			}
			raw, err := td.d.store.GetNetworkPolicy(ctx, bob.ID)
			if err != nil || strings.Contains(string(raw.Ciphertext), secret) {
				t.Fatalf("stored policy holds the proxy in the clear (%v)", err)
			}
			// An admin rewrites and removes it.
			if p, err = td.admin.SetUserNetwork(ctx, bob.ID, api.PutNetworkPolicyRequest{Mode: api.EgressNone}); err != nil || p.Version != 2 || p.ProxyHost != "" {
				t.Fatalf("rewrite policy = %+v, %v", p, err)
			}
			if err := td.admin.DeleteUserNetwork(ctx, bob.ID); err != nil {
				t.Fatalf("delete policy: %v", err)
			}
			if _, err := td.admin.UserNetwork(ctx, bob.ID); !client.IsStatus(err, http.StatusNotFound) {
				t.Fatalf("policy after delete: %v, want 404", err)
			}
			if _, err := td.d.store.GetNetworkPolicy(ctx, bob.ID); err == nil || !strings.Contains(err.Error(), store.ErrNotFound.Error()) {
				t.Fatalf("store after delete: %v", err)
			}
		})
	}
}

// TestNetworkPolicyStrictJSON: the policy body is decoded strictly; errors
// never echo the body (it may hold a proxy password).
func TestNetworkPolicyStrictJSON(t *testing.T) {
	td := startDaemon(t, "", nil)
	bob, _ := td.user(t, "bob")
	cases := []struct {
		name, ct, body string
		status         int
	}{
		{"unknown field", "application/json", `{"mode":"full","proxyy":"http://u:pw@x:1"}`, 400},
		{"bad mode", "application/json", `{"mode":"open"}`, 400},
		{"bad proxy scheme", "application/json", `{"mode":"full","proxy":"ftp://u:pw@x:1"}`, 400},
		{"ok", "application/json", `{"mode":"full"}`, 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, td.url+"/api/v1/users/"+bob.ID+"/network", strings.NewReader(c.body))
			req.Header.Set("Content-Type", c.ct)
			req.Header.Set("Authorization", "Bearer "+td.adminKey(t))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 4096)
			n, _ := resp.Body.Read(b)
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, b[:n], c.status)
			}
			if strings.Contains(string(b[:n]), "pw") {
				t.Fatalf("the error echoes the proxy password: %s", b[:n])
			}
		})
	}
}

func (td *testDaemon) adminKey(t *testing.T) string {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(td.d.cfg.DataDir, AdminKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(key))
}

// TestOldEventsArePruned: events older than event_retention are deleted by
// the daemon's housekeeping (it runs at start), newer ones are kept.
func TestOldEventsArePruned(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(t.Context(), filepath.Join(dir, "hangar.db"), testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	old, err := st.AppendEvent(t.Context(), store.Event{Type: "old", CreatedAt: time.Now().Add(-2 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	recent, err := st.AppendEvent(t.Context(), store.Event{Type: "recent"})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	td := startDaemon(t, "", func(c *config.Config) {
		c.DataDir = dir
		c.EventRetention = config.Duration(time.Hour)
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, err := td.d.store.ListEvents(t.Context(), store.EventFilter{})
		if err != nil {
			t.Fatal(err)
		}
		ids := map[int64]bool{}
		for _, e := range evs {
			ids[e.ID] = true
		}
		if !ids[old.ID] {
			if !ids[recent.ID] {
				t.Fatal("the recent event was pruned too")
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("an event older than event_retention was not pruned")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAPIKeys: a user lists their keys, creates a second with an expiry,
// revokes the first with it; the revoked key stops working at once and
// another user cannot touch them.
func TestAPIKeys(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			td := startDaemon(t, b.db(t), nil)
			ctx := t.Context()
			_, alice := td.user(t, "alice")
			_, bob := td.user(t, "bob")
			ks, err := alice.ListAPIKeys(ctx)
			if err != nil || len(ks) != 1 || !ks[0].Current || ks[0].ExpiresAt != nil {
				t.Fatalf("alice's keys = %+v, %v", ks, err)
			}
			first := ks[0].ID
			if _, err := alice.CreateAPIKey(ctx, api.CreateAPIKeyRequest{ExpiresIn: "forever"}); !client.IsStatus(err, http.StatusBadRequest) {
				t.Fatalf("bad expiry: %v, want 400", err)
			}
			k, err := alice.CreateAPIKey(ctx, api.CreateAPIKeyRequest{Name: "ci", ExpiresIn: "24h"})
			if err != nil || k.Key == "" || k.ExpiresAt == nil || time.Until(*k.ExpiresAt) < 23*time.Hour || k.Name != "ci" {
				t.Fatalf("create key = %+v, %v", k, err)
			}
			alice2 := client.New(td.url, k.Key)
			if err := bob.RevokeAPIKey(ctx, first); !client.IsStatus(err, http.StatusNotFound) {
				t.Fatalf("bob revokes alice's key: %v, want 404", err)
			}
			if err := alice2.RevokeAPIKey(ctx, first); err != nil {
				t.Fatalf("revoke the first key: %v", err)
			}
			if _, err := alice.Me(ctx); !client.IsStatus(err, http.StatusUnauthorized) {
				t.Fatalf("revoked key: %v, want 401", err)
			}
			if me, err := alice2.Me(ctx); err != nil || me.Name != "alice" {
				t.Fatalf("second key: %+v, %v", me, err)
			}
			ks, err = alice2.ListAPIKeys(ctx)
			if err != nil || len(ks) != 1 || ks[0].ID != k.ID || !ks[0].Current {
				t.Fatalf("keys after revoke = %+v, %v", ks, err)
			}
		})
	}
}
