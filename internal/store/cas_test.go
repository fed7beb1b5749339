package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestCompareAndSwap(t *testing.T) {
	forEachBackend(t, []storeCase{
		{"vm_writers_race", testVMWritersRace},
		{"session_writers_race", testSessionWritersRace},
		{"network_policies", testNetworkPolicies},
	})
}

// testVMWritersRace has many writers read the same version of a VM and
// write it back at once: exactly one may win, the others see ErrConflict,
// and the stored row is the winner's.
func testVMWritersRace(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	u := mkUser(t, s, "alice")
	v := VM{ID: NewID("vm"), OwnerID: u.ID, Kind: "cli", State: "ready"}
	must(t, s.CreateVM(ctx, v), "create vm")
	read, err := s.GetVM(ctx, v.ID, "")
	must(t, err, "get vm")
	if read.Version != 1 {
		t.Fatalf("new vm version = %d, want 1", read.Version)
	}
	const writers = 8
	states := make([]string, writers)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := read
			w.State = "state-" + string(rune('a'+i))
			states[i] = w.State
			errs[i] = s.UpdateVM(ctx, w)
		}()
	}
	wg.Wait()
	winner := ""
	for i, err := range errs {
		switch {
		case err == nil:
			if winner != "" {
				t.Fatalf("two writers of version 1 both won: %s and %s", winner, states[i])
			}
			winner = states[i]
		case !errors.Is(err, ErrConflict):
			t.Fatalf("losing writer: %v, want ErrConflict", err)
		}
	}
	if winner == "" {
		t.Fatal("no writer won")
	}
	got, err := s.GetVM(ctx, v.ID, "")
	must(t, err, "get vm after the race")
	if got.State != winner || got.Version != 2 {
		t.Fatalf("after the race: state %q version %d, want %q version 2", got.State, got.Version, winner)
	}
	isNotFound(t, s.UpdateVM(ctx, VM{ID: "vm_missing", Version: 1, State: "x"}), "cas on a missing vm")
}

// testSessionWritersRace is the store half of "a heartbeat racing the end
// of a login": both read the session, the end writes first, the heartbeat's
// write (which carries the state it read) must fail.
func testSessionWritersRace(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	u := mkUser(t, s, "alice")
	a := AuthSession{ID: NewID("auth"), OwnerID: u.ID, Provider: "dev", State: AuthWaiting}
	must(t, s.CreateAuthSession(ctx, a), "create session")
	heartbeat, err := s.GetAuthSession(ctx, a.ID, "")
	must(t, err, "heartbeat reads")
	end := heartbeat
	end.State = AuthSucceeded
	must(t, s.UpdateAuthSession(ctx, end), "the login ends")
	isConflict(t, s.UpdateAuthSession(ctx, heartbeat), "the heartbeat writes what it read")
	got, err := s.GetAuthSession(ctx, a.ID, "")
	must(t, err, "get session")
	if got.State != AuthSucceeded {
		t.Fatalf("state after the race = %s, want %s", got.State, AuthSucceeded)
	}
}

func testNetworkPolicies(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	u := mkUser(t, s, "alice")
	_, err := s.GetNetworkPolicy(ctx, u.ID)
	isNotFound(t, err, "policy before any")
	p := NetworkPolicy{UserID: u.ID, Mode: "allow", Allow: []string{"10.0.0.0/8", "example.com"}, Version: 1}
	got, err := s.PutNetworkPolicy(ctx, p)
	must(t, err, "put policy v1")
	if got.Mode != "allow" || len(got.Allow) != 2 || got.Allow[1] != "example.com" || got.Version != 1 || got.Ciphertext != nil || got.UpdatedAt.IsZero() {
		t.Fatalf("policy v1 = %+v", got)
	}
	_, err = s.PutNetworkPolicy(ctx, p)
	isConflict(t, err, "create the policy twice")
	p2 := NetworkPolicy{UserID: u.ID, Mode: "full", ProxyHost: "http://proxy:3128", Version: 2, KeyVersion: 1, Nonce: []byte("n"), Ciphertext: []byte("sealed")}
	got, err = s.PutNetworkPolicy(ctx, p2)
	must(t, err, "put policy v2")
	_, err = s.PutNetworkPolicy(ctx, p2)
	isConflict(t, err, "put v2 again")
	_, err = s.PutNetworkPolicy(ctx, NetworkPolicy{UserID: "usr_missing", Mode: "full", Version: 2})
	isNotFound(t, err, "rewrite a missing policy")
	got, err = s.GetNetworkPolicy(ctx, u.ID)
	must(t, err, "get policy")
	if got.Mode != "full" || len(got.Allow) != 0 || got.ProxyHost != "http://proxy:3128" || got.Version != 2 ||
		!bytes.Equal(got.Ciphertext, []byte("sealed")) || !bytes.Equal(got.Nonce, []byte("n")) || got.KeyVersion != 1 {
		t.Fatalf("policy v2 = %+v", got)
	}
	all, err := s.ListNetworkPolicies(ctx)
	must(t, err, "list policies")
	if len(all) != 1 || all[0].UserID != u.ID {
		t.Fatalf("policies = %+v", all)
	}
	// A policy is not a credential: it is not listed or deletable as one.
	creds, err := s.ListCredentials(ctx, u.ID)
	must(t, err, "list credentials")
	if len(creds) != 0 {
		t.Fatalf("credentials = %+v, want none", creds)
	}
	must(t, s.DeleteNetworkPolicy(ctx, u.ID), "delete policy")
	isNotFound(t, s.DeleteNetworkPolicy(ctx, u.ID), "delete policy twice")
	_, err = s.PutNetworkPolicy(ctx, p)
	must(t, err, "put policy again")
	must(t, s.DeleteUser(ctx, u.ID), "delete user")
	_, err = s.GetNetworkPolicy(ctx, u.ID)
	isNotFound(t, err, "policy of a deleted user")
}

// TestSQLiteFilesArePrivate: the database and its WAL are created 0600
// whatever the umask, and a file left readable by others is tightened.
func TestSQLiteFilesArePrivate(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "hangar.db")
	s := openTest(t, path)
	must(t, s.CreateUser(t.Context(), User{ID: NewID("usr"), Name: "alice"}), "write something")
	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", filepath.Base(p), fi.Mode().Perm())
		}
	}
	loose := filepath.Join(t.TempDir(), "old.db")
	if err := os.WriteFile(loose, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o644); err != nil {
		t.Fatal(err)
	}
	openTest(t, loose)
	if fi, _ := os.Stat(loose); fi.Mode().Perm() != 0o600 {
		t.Errorf("a loose existing file kept mode %04o", fi.Mode().Perm())
	}
}

func TestAPIKeys(t *testing.T) {
	forEachBackend(t, []storeCase{{"keys_expire_and_revoke", func(t *testing.T, s Store, _ string) {
		ctx := t.Context()
		alice := mkUser(t, s, "alice")
		bob := mkUser(t, s, "bob")
		k1 := APIKey{ID: NewID("key"), UserID: alice.ID, Hash: "h1", Prefix: "hgr_aaaa", Name: "laptop"}
		k2 := APIKey{ID: NewID("key"), UserID: alice.ID, Hash: "h2", Prefix: "hgr_bbbb", ExpiresAt: time.Now().Add(time.Hour)}
		k3 := APIKey{ID: NewID("key"), UserID: alice.ID, Hash: "h3", Prefix: "hgr_cccc", ExpiresAt: time.Now().Add(-time.Second)}
		for _, k := range []APIKey{k1, k2, k3} {
			must(t, s.CreateAPIKey(ctx, k), "create key %s", k.Prefix)
		}
		if k, u, err := s.LookupAPIKey(ctx, "h1"); err != nil || u.ID != alice.ID || k.Name != "laptop" || !k.ExpiresAt.IsZero() {
			t.Fatalf("lookup h1 = %+v %+v %v", k, u, err)
		}
		if k, _, err := s.LookupAPIKey(ctx, "h2"); err != nil || k.ExpiresAt.IsZero() {
			t.Fatalf("lookup h2 = %+v %v", k, err)
		}
		_, _, err := s.LookupAPIKey(ctx, "h3")
		isNotFound(t, err, "an expired key")
		keys, err := s.ListAPIKeys(ctx, alice.ID)
		must(t, err, "list keys")
		if len(keys) != 3 {
			t.Fatalf("alice has %d keys, want 3", len(keys))
		}
		isNotFound(t, s.DeleteAPIKey(ctx, k1.ID, bob.ID), "bob revokes alice's key")
		must(t, s.DeleteAPIKey(ctx, k1.ID, alice.ID), "alice revokes her key")
		_, _, err = s.LookupAPIKey(ctx, "h1")
		isNotFound(t, err, "a revoked key")
		must(t, s.DeleteAPIKey(ctx, k2.ID, ""), "an admin revokes any key")
	}}})
}
