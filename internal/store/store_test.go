package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestStore(t *testing.T) {
	forEachBackend(t, []storeCase{
		{"users", testUsers},
		{"api_keys", testAPIKeys},
		{"vms", testVMs},
		{"vm_owner_scoping", testVMOwnerScoping},
		{"events", testEvents},
		{"cascade_delete", testCascadeDelete},
		{"timestamps_utc", testTimestampsUTC},
		{"reopen_is_idempotent", testReopen},
	})
}

func isNotFound(t *testing.T, err error, what string) {
	t.Helper()
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("%s: want ErrNotFound, got %v", what, err)
	}
}

func isConflict(t *testing.T, err error, what string) {
	t.Helper()
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("%s: want ErrConflict, got %v", what, err)
	}
}

// jsonEqual compares JSON documents by value: Postgres jsonb normalises
// whitespace and key order.
func jsonEqual(t *testing.T, got, want []byte, what string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: stored JSON %q does not parse: %v", what, got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("%s: want JSON %q does not parse: %v", what, want, err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if !bytes.Equal(gb, wb) {
		t.Fatalf("%s: got JSON %s, want %s", what, gb, wb)
	}
}

func mkUser(t *testing.T, s Store, name string) User {
	t.Helper()
	u := User{ID: NewID("usr"), Name: name, Role: RoleUser}
	must(t, s.CreateUser(t.Context(), u), "create user %s", name)
	got, err := s.GetUser(t.Context(), u.ID)
	must(t, err, "get user %s", name)
	return got
}

func testUsers(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	n, err := s.CountUsers(ctx)
	must(t, err, "count users")
	if n != 0 {
		t.Fatalf("fresh store has %d users", n)
	}
	admin := User{ID: NewID("usr"), Name: "root", Role: RoleAdmin}
	must(t, s.CreateUser(ctx, admin), "create admin")
	bob := User{ID: NewID("usr"), Name: "bob"} // Role defaults to user
	must(t, s.CreateUser(ctx, bob), "create bob")

	got, err := s.GetUser(ctx, admin.ID)
	must(t, err, "get admin")
	if got.Name != "root" || got.Role != RoleAdmin || got.CreatedAt.IsZero() {
		t.Fatalf("get admin = %+v", got)
	}
	got, err = s.GetUserByName(ctx, "bob")
	must(t, err, "get bob by name")
	if got.ID != bob.ID || got.Role != RoleUser {
		t.Fatalf("get bob by name = %+v", got)
	}

	isConflict(t, s.CreateUser(ctx, User{ID: admin.ID, Name: "other"}), "duplicate user id")
	isConflict(t, s.CreateUser(ctx, User{ID: NewID("usr"), Name: "bob"}), "duplicate user name")
	_, err = s.GetUser(ctx, "usr_missing")
	isNotFound(t, err, "get missing user")
	_, err = s.GetUserByName(ctx, "nobody")
	isNotFound(t, err, "get missing user by name")
	isNotFound(t, s.DeleteUser(ctx, "usr_missing"), "delete missing user")
	if err := s.CreateUser(ctx, User{ID: NewID("usr"), Name: "eve", Role: "superuser"}); err == nil {
		t.Fatal("a user with an unknown role was stored")
	}

	users, err := s.ListUsers(ctx)
	must(t, err, "list users")
	if len(users) != 2 {
		t.Fatalf("list users = %d users, want 2", len(users))
	}
	n, err = s.CountUsers(ctx)
	must(t, err, "count users")
	if n != 2 {
		t.Fatalf("count users = %d, want 2", n)
	}

	must(t, s.DeleteUser(ctx, bob.ID), "delete bob")
	_, err = s.GetUser(ctx, bob.ID)
	isNotFound(t, err, "get deleted user")
	isNotFound(t, s.DeleteUser(ctx, bob.ID), "delete bob twice")
}

func testAPIKeys(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	u := mkUser(t, s, "alice")
	k := APIKey{ID: NewID("key"), UserID: u.ID, Hash: strings.Repeat("ab", 32), Prefix: "hgr_ab12"}
	must(t, s.CreateAPIKey(ctx, k), "create api key")

	gotK, gotU, err := s.LookupAPIKey(ctx, k.Hash)
	must(t, err, "lookup api key")
	if gotK.ID != k.ID || gotK.UserID != u.ID || gotK.Prefix != k.Prefix || gotK.CreatedAt.IsZero() {
		t.Fatalf("lookup key = %+v", gotK)
	}
	if gotU != u {
		t.Fatalf("lookup key user = %+v, want %+v", gotU, u)
	}

	_, _, err = s.LookupAPIKey(ctx, strings.Repeat("cd", 32))
	isNotFound(t, err, "lookup unknown key")
	isConflict(t, s.CreateAPIKey(ctx, APIKey{ID: NewID("key"), UserID: u.ID, Hash: k.Hash}), "duplicate key hash")
	isConflict(t, s.CreateAPIKey(ctx, APIKey{ID: k.ID, UserID: u.ID, Hash: "other"}), "duplicate key id")
	// A key for a user that does not exist refers to nothing.
	isNotFound(t, s.CreateAPIKey(ctx, APIKey{ID: NewID("key"), UserID: "usr_missing", Hash: "x"}), "key for missing user")
}

func testVMs(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	u := mkUser(t, s, "alice")
	v := VM{
		ID: NewID("vm"), OwnerID: u.ID, Kind: "cli", State: "creating",
		Spec: []byte(`{"vcpus": 2, "memory_mib": 1024}`),
	}
	must(t, s.CreateVM(ctx, v), "create vm")
	isConflict(t, s.CreateVM(ctx, v), "create vm twice")
	isNotFound(t, s.CreateVM(ctx, VM{ID: NewID("vm"), OwnerID: "usr_missing", Kind: "cli", State: "creating"}), "vm of missing user")

	got, err := s.GetVM(ctx, v.ID, u.ID)
	must(t, err, "get vm")
	if got.Kind != "cli" || got.State != "creating" || got.OwnerID != u.ID {
		t.Fatalf("get vm = %+v", got)
	}
	jsonEqual(t, got.Spec, v.Spec, "vm spec")
	jsonEqual(t, got.Runtime, []byte(`{}`), "empty vm runtime")
	if !got.CreatedAt.Equal(got.UpdatedAt) || got.CreatedAt.IsZero() {
		t.Fatalf("new vm timestamps: created %v updated %v", got.CreatedAt, got.UpdatedAt)
	}

	time.Sleep(5 * time.Millisecond) // updated_at must move forward
	got.State = "running"
	got.LastError = ""
	got.Runtime = []byte(`{"pid": 4242, "qmp": "/run/hangar/vm.qmp"}`)
	must(t, s.UpdateVM(ctx, got), "update vm")
	again, err := s.GetVM(ctx, v.ID, "")
	must(t, err, "get vm after update")
	if again.State != "running" || !again.UpdatedAt.After(again.CreatedAt) {
		t.Fatalf("vm after update = %+v", again)
	}
	jsonEqual(t, again.Runtime, got.Runtime, "vm runtime after update")
	isNotFound(t, s.UpdateVM(ctx, VM{ID: "vm_missing", State: "x"}), "update missing vm")
	if again.Version != got.Version+1 {
		t.Fatalf("version after update = %d, want %d", again.Version, got.Version+1)
	}
	// got is now stale: writing it again would undo nothing visible here,
	// but in general it would overwrite a newer write, so it must fail.
	isConflict(t, s.UpdateVM(ctx, got), "update vm from a stale read")
	got = again

	if err := s.UpdateVM(ctx, VM{ID: v.ID, Kind: "cli", State: "x", Spec: []byte("not json"), Version: got.Version}); err == nil {
		t.Fatal("invalid JSON spec was stored")
	}

	must(t, s.DeleteVM(ctx, v.ID), "delete vm")
	_, err = s.GetVM(ctx, v.ID, "")
	isNotFound(t, err, "get deleted vm")
	isNotFound(t, s.DeleteVM(ctx, v.ID), "delete vm twice")
}

func testVMOwnerScoping(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	alice := mkUser(t, s, "alice")
	bob := mkUser(t, s, "bob")
	var aliceVMs []string
	for i := range 3 {
		v := VM{ID: NewID("vm"), OwnerID: alice.ID, Kind: "browser", State: "creating"}
		must(t, s.CreateVM(ctx, v), "create alice vm %d", i)
		aliceVMs = append(aliceVMs, v.ID)
	}
	bobVM := VM{ID: NewID("vm"), OwnerID: bob.ID, Kind: "cli", State: "creating"}
	must(t, s.CreateVM(ctx, bobVM), "create bob vm")

	_, err := s.GetVM(ctx, bobVM.ID, alice.ID)
	isNotFound(t, err, "alice reads bob's vm")
	_, err = s.GetVM(ctx, bobVM.ID, bob.ID)
	must(t, err, "bob reads his vm")
	_, err = s.GetVM(ctx, bobVM.ID, "")
	must(t, err, "admin reads bob's vm")

	list, err := s.ListVMs(ctx, alice.ID)
	must(t, err, "list alice's vms")
	var ids []string
	for _, v := range list {
		if v.OwnerID != alice.ID {
			t.Fatalf("alice's list holds %s of %s", v.ID, v.OwnerID)
		}
		ids = append(ids, v.ID)
	}
	if strings.Join(ids, ",") != strings.Join(aliceVMs, ",") {
		t.Fatalf("alice's vms = %v, want %v in creation order", ids, aliceVMs)
	}
	all, err := s.ListVMs(ctx, "")
	must(t, err, "list all vms")
	if len(all) != 4 {
		t.Fatalf("all vms = %d, want 4", len(all))
	}
}

func testEvents(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	alice := mkUser(t, s, "alice")
	bob := mkUser(t, s, "bob")
	var appended []Event
	for i := range 10 {
		e := Event{Type: "vm_state", Subject: NewID("vm"), Data: []byte(`{"n":` + string(rune('0'+i)) + `}`)}
		switch i % 3 {
		case 0:
			e.UserID = alice.ID
		case 1:
			e.UserID = bob.ID
		default: // system event
		}
		got, err := s.AppendEvent(ctx, e)
		must(t, err, "append event %d", i)
		if got.ID == 0 || got.CreatedAt.IsZero() {
			t.Fatalf("appended event lacks id or time: %+v", got)
		}
		if len(appended) > 0 && got.ID <= appended[len(appended)-1].ID {
			t.Fatalf("event ids not increasing: %d after %d", got.ID, appended[len(appended)-1].ID)
		}
		appended = append(appended, got)
	}

	all, err := s.ListEvents(ctx, EventFilter{})
	must(t, err, "list all events")
	if len(all) != 10 {
		t.Fatalf("all events = %d, want 10", len(all))
	}
	for i, e := range all {
		w := appended[i]
		if e.ID != w.ID || e.UserID != w.UserID || e.Type != w.Type || e.Subject != w.Subject || !e.CreatedAt.Equal(w.CreatedAt) {
			t.Fatalf("event %d = %+v, want %+v", i, e, w)
		}
		jsonEqual(t, e.Data, w.Data, "event data")
	}

	after, err := s.ListEvents(ctx, EventFilter{AfterID: appended[6].ID})
	must(t, err, "list events after the 7th")
	if len(after) != 3 || after[0].ID != appended[7].ID {
		t.Fatalf("events after %d = %v", appended[6].ID, eventIDs(after))
	}

	aliceEv, err := s.ListEvents(ctx, EventFilter{UserID: alice.ID})
	must(t, err, "list alice's events")
	if got, want := eventIDs(aliceEv), []int64{appended[0].ID, appended[3].ID, appended[6].ID, appended[9].ID}; !equalIDs(got, want) {
		t.Fatalf("alice's events = %v, want %v", got, want)
	}
	aliceAfter, err := s.ListEvents(ctx, EventFilter{UserID: alice.ID, AfterID: appended[3].ID, Limit: 1})
	must(t, err, "list alice's events after the 4th, limit 1")
	if got, want := eventIDs(aliceAfter), []int64{appended[6].ID}; !equalIDs(got, want) {
		t.Fatalf("alice's events after %d limit 1 = %v, want %v", appended[3].ID, got, want)
	}

	if _, err := s.AppendEvent(ctx, Event{Type: "x", UserID: "usr_missing"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("event of a missing user: want ErrNotFound, got %v", err)
	}
}

func eventIDs(es []Event) []int64 {
	var out []int64
	for _, e := range es {
		out = append(out, e.ID)
	}
	return out
}

func equalIDs(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func testCascadeDelete(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	alice := mkUser(t, s, "alice")
	bob := mkUser(t, s, "bob")
	for _, u := range []User{alice, bob} {
		must(t, s.CreateAPIKey(ctx, APIKey{ID: NewID("key"), UserID: u.ID, Hash: "hash-" + u.ID, Prefix: "p"}), "key")
		must(t, s.CreateVM(ctx, VM{ID: NewID("vm"), OwnerID: u.ID, Kind: "cli", State: "running"}), "vm")
		_, err := s.AppendEvent(ctx, Event{UserID: u.ID, Type: "user_created", Subject: u.ID})
		must(t, err, "event")
	}
	task, err := s.EnqueueTask(ctx, Task{Kind: "vm_destroy", Payload: []byte(`{"user":"` + alice.ID + `"}`)})
	must(t, err, "enqueue")

	must(t, s.DeleteUser(ctx, alice.ID), "delete alice")

	if _, _, err := s.LookupAPIKey(ctx, "hash-"+alice.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("alice's key survived her deletion: %v", err)
	}
	if vms, err := s.ListVMs(ctx, alice.ID); err != nil || len(vms) != 0 {
		t.Fatalf("alice's vms after deletion = %d (%v)", len(vms), err)
	}
	if evs, err := s.ListEvents(ctx, EventFilter{UserID: alice.ID}); err != nil || len(evs) != 0 {
		t.Fatalf("alice's events after deletion = %d (%v)", len(evs), err)
	}
	// Bob's records are untouched, and the queue keeps system work.
	if _, _, err := s.LookupAPIKey(ctx, "hash-"+bob.ID); err != nil {
		t.Fatalf("bob's key: %v", err)
	}
	if vms, err := s.ListVMs(ctx, bob.ID); err != nil || len(vms) != 1 {
		t.Fatalf("bob's vms = %d (%v)", len(vms), err)
	}
	if evs, err := s.ListEvents(ctx, EventFilter{UserID: bob.ID}); err != nil || len(evs) != 1 {
		t.Fatalf("bob's events = %d (%v)", len(evs), err)
	}
	if _, err := s.GetTask(ctx, task.ID); err != nil {
		t.Fatalf("task vanished with the user: %v", err)
	}
}

func testTimestampsUTC(t *testing.T, s Store, _ string) {
	ctx := t.Context()
	zone := time.FixedZone("UTC+5:30", 5*3600+1800)
	at := time.Date(2024, 3, 1, 9, 30, 15, 123456789, zone)
	u := User{ID: NewID("usr"), Name: "zoned", CreatedAt: at}
	must(t, s.CreateUser(ctx, u), "create user")
	got, err := s.GetUser(ctx, u.ID)
	must(t, err, "get user")
	want := at.UTC().Truncate(time.Microsecond)
	if !got.CreatedAt.Equal(want) || got.CreatedAt.Location() != time.UTC {
		t.Fatalf("created_at = %v (%v), want %v in UTC", got.CreatedAt, got.CreatedAt.Location(), want)
	}
}

func testReopen(t *testing.T, s Store, dsn string) {
	ctx := t.Context()
	u := mkUser(t, s, "alice")
	// A second Open of the same database (a restart, or a CLI command next
	// to the daemon) finds the schema current and sees the data.
	s2 := openTest(t, dsn)
	if s2.Dialect() != s.Dialect() {
		t.Fatalf("dialect %q, then %q", s.Dialect(), s2.Dialect())
	}
	must(t, s2.Ping(ctx), "ping second store")
	if _, err := s2.GetUser(ctx, u.ID); err != nil {
		t.Fatalf("second store does not see the user: %v", err)
	}
}

func TestNewID(t *testing.T) {
	re := regexp.MustCompile(`^vm_[a-z2-7]{16}$`)
	seen := map[string]bool{}
	for range 1000 {
		id := NewID("vm")
		if !re.MatchString(id) {
			t.Fatalf("NewID(vm) = %q, want vm_ + 16 base32 characters", id)
		}
		if seen[id] {
			t.Fatalf("NewID repeated %q", id)
		}
		seen[id] = true
	}
	if id := NewID("usr_"); !strings.HasPrefix(id, "usr_") || strings.HasPrefix(id, "usr__") {
		t.Fatalf("NewID(usr_) = %q", id)
	}
	if id := NewID(""); len(id) != 16 {
		t.Fatalf("NewID(\"\") = %q, want 16 characters", id)
	}
}

func TestOpenRejects(t *testing.T) {
	for _, dsn := range []string{"", ":memory:"} {
		if s, err := Open(t.Context(), dsn, nil); err == nil {
			_ = s.Close()
			t.Errorf("Open(%q) succeeded", dsn)
		}
	}
}

func TestSQLiteDSNForms(t *testing.T) {
	dir := t.TempDir()
	for _, dsn := range []string{"sqlite://" + dir + "/a.db", "sqlite:" + dir + "/b.db", dir + "/c.db"} {
		s := openTest(t, dsn)
		if s.Dialect() != DialectSQLite {
			t.Fatalf("Open(%q) dialect = %q", dsn, s.Dialect())
		}
		must(t, s.CreateUser(t.Context(), User{ID: NewID("usr"), Name: "x"}), "write through %q", dsn)
	}
}
