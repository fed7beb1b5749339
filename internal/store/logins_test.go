package store

import (
	"bytes"
	"testing"
	"time"
)

func TestLoginRecords(t *testing.T) {
	forEachBackend(t, []storeCase{
		{"auth_sessions", testAuthSessions},
		{"credentials", testCredentials},
		{"cascade_delete", testLoginCascade},
	})
}

func testAuthSessions(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	alice := mkUser(t, s, "alice")
	bob := mkUser(t, s, "bob")
	vm := VM{ID: NewID("vm"), OwnerID: alice.ID, Kind: "browser", State: "creating"}
	must(t, s.CreateVM(ctx, vm), "create login vm")

	expires := time.Now().Add(10 * time.Minute)
	a := AuthSession{ID: NewID("auth"), OwnerID: alice.ID, Provider: "dev", VMID: vm.ID, ExpiresAt: expires}
	must(t, s.CreateAuthSession(ctx, a), "create session")
	isConflict(t, s.CreateAuthSession(ctx, a), "create session twice")
	isNotFound(t, s.CreateAuthSession(ctx, AuthSession{ID: NewID("auth"), OwnerID: "usr_missing", Provider: "dev"}), "session of a missing user")

	got, err := s.GetAuthSession(ctx, a.ID, alice.ID)
	must(t, err, "get session")
	if got.Mode != "browser" || got.State != AuthPending || got.VMID != vm.ID || got.Provider != "dev" ||
		!got.ExpiresAt.Equal(expires.UTC().Truncate(time.Microsecond)) || !got.FinishedAt.IsZero() {
		t.Fatalf("session = %+v", got)
	}
	_, err = s.GetAuthSession(ctx, a.ID, bob.ID)
	isNotFound(t, err, "bob reads alice's session")

	got.State = AuthWaiting
	must(t, s.UpdateAuthSession(ctx, got), "update to waiting")
	// The login VM is destroyed when the session ends: vm_id is cleared by
	// the foreign key, the session stays.
	must(t, s.DeleteVM(ctx, vm.ID), "delete login vm")
	got, err = s.GetAuthSession(ctx, a.ID, "")
	must(t, err, "get session after vm deletion")
	if got.VMID != "" || got.State != AuthWaiting {
		t.Fatalf("session after its vm was deleted = %+v", got)
	}
	got.State = AuthFailed
	got.Error = "login timed out"
	stale := got
	got.FinishedAt = time.Now()
	must(t, s.UpdateAuthSession(ctx, got), "finish session")
	got, err = s.GetAuthSession(ctx, a.ID, alice.ID)
	must(t, err, "get finished session")
	if got.State != AuthFailed || got.Error != "login timed out" || got.FinishedAt.IsZero() || got.UpdatedAt.Before(got.CreatedAt) {
		t.Fatalf("finished session = %+v", got)
	}
	isNotFound(t, s.UpdateAuthSession(ctx, AuthSession{ID: "auth_missing", State: AuthFailed}), "update missing session")
	// A writer that read before the last write loses: its state must not
	// come back over the finished one.
	stale.State = AuthWaiting
	isConflict(t, s.UpdateAuthSession(ctx, stale), "update from a stale read")
	if got, err = s.GetAuthSession(ctx, a.ID, ""); err != nil || got.State != AuthFailed || got.Version != 3 {
		t.Fatalf("session after a stale write = %+v, %v; want failed at version 3", got, err)
	}

	must(t, s.CreateAuthSession(ctx, AuthSession{ID: NewID("auth"), OwnerID: bob.ID, Provider: "codex"}), "bob's session")
	list, err := s.ListAuthSessions(ctx, alice.ID)
	must(t, err, "list alice's sessions")
	if len(list) != 1 || list[0].ID != a.ID {
		t.Fatalf("alice's sessions = %+v", list)
	}
	all, err := s.ListAuthSessions(ctx, "")
	must(t, err, "list all sessions")
	if len(all) != 2 {
		t.Fatalf("all sessions = %d, want 2", len(all))
	}
}

func testCredentials(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	alice := mkUser(t, s, "alice")
	v1 := Credential{
		OwnerID: alice.ID, Provider: "claude", Version: 1, KeyVersion: 1,
		Nonce: bytes.Repeat([]byte{1}, 12), Ciphertext: []byte{0, 1, 2, 0xff, 0},
		Metadata: []byte(`{"account":"alice@example.test"}`),
	}
	stored, err := s.PutCredential(ctx, v1)
	must(t, err, "put v1")
	if stored.ID == "" || stored.Version != 1 || stored.CapturedAt.IsZero() || !stored.ValidatedAt.IsZero() {
		t.Fatalf("stored v1 = %+v", stored)
	}
	_, err = s.PutCredential(ctx, v1)
	isConflict(t, err, "put v1 twice")

	got, err := s.GetCredential(ctx, alice.ID, "claude")
	must(t, err, "get credential")
	if !bytes.Equal(got.Nonce, v1.Nonce) || !bytes.Equal(got.Ciphertext, v1.Ciphertext) || got.KeyVersion != 1 {
		t.Fatalf("credential bytes did not round-trip: %+v", got)
	}
	jsonEqual(t, got.Metadata, v1.Metadata, "credential metadata")

	v3 := v1
	v3.Version = 3
	_, err = s.PutCredential(ctx, v3)
	isConflict(t, err, "skip a version")
	v2 := v1
	v2.Version, v2.KeyVersion, v2.Ciphertext = 2, 2, []byte("resealed")
	stored, err = s.PutCredential(ctx, v2)
	must(t, err, "put v2")
	if stored.Version != 2 || stored.KeyVersion != 2 || string(stored.Ciphertext) != "resealed" || stored.ID != got.ID {
		t.Fatalf("stored v2 = %+v", stored)
	}
	_, err = s.PutCredential(ctx, v2)
	isConflict(t, err, "a second writer of v2 loses")
	other := v2
	other.Provider = "gemini"
	_, err = s.PutCredential(ctx, other)
	isNotFound(t, err, "v2 of a credential that does not exist")

	at := time.Now().Add(-time.Minute)
	must(t, s.MarkCredentialValidated(ctx, alice.ID, "claude", at), "mark validated")
	got, err = s.GetCredential(ctx, alice.ID, "claude")
	must(t, err, "get validated")
	if !got.ValidatedAt.Equal(at.UTC().Truncate(time.Microsecond)) || got.Version != 2 {
		t.Fatalf("validated credential = %+v", got)
	}
	isNotFound(t, s.MarkCredentialValidated(ctx, alice.ID, "gemini", at), "validate missing")

	list, err := s.ListCredentials(ctx, alice.ID)
	must(t, err, "list")
	if len(list) != 1 {
		t.Fatalf("alice's credentials = %d", len(list))
	}
	must(t, s.DeleteCredential(ctx, alice.ID, "claude"), "delete")
	_, err = s.GetCredential(ctx, alice.ID, "claude")
	isNotFound(t, err, "get deleted credential")
	isNotFound(t, s.DeleteCredential(ctx, alice.ID, "claude"), "delete twice")
	_, err = s.PutCredential(ctx, Credential{OwnerID: "usr_missing", Provider: "dev", Version: 1, Nonce: []byte{1}, Ciphertext: []byte{1}})
	isNotFound(t, err, "credential of a missing user")
}

func testLoginCascade(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	alice := mkUser(t, s, "alice")
	must(t, s.CreateAuthSession(ctx, AuthSession{ID: NewID("auth"), OwnerID: alice.ID, Provider: "dev"}), "session")
	_, err := s.PutCredential(ctx, Credential{OwnerID: alice.ID, Provider: "dev", Version: 1, Nonce: []byte{1}, Ciphertext: []byte{2}})
	must(t, err, "credential")
	must(t, s.DeleteUser(ctx, alice.ID), "delete alice")
	if l, err := s.ListAuthSessions(ctx, ""); err != nil || len(l) != 0 {
		t.Fatalf("sessions after user deletion = %d (%v)", len(l), err)
	}
	if l, err := s.ListCredentials(ctx, ""); err != nil || len(l) != 0 {
		t.Fatalf("credentials after user deletion = %d (%v)", len(l), err)
	}
}
