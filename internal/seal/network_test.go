package seal

import (
	"bytes"
	"crypto/rand"
	"path/filepath"
	"testing"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
)

// TestRotateReachesNetworkPolicies: the upstream proxy of an admin's
// network policy is re-sealed by RotateAll like a credential, so retiring
// an old key never strands it; a policy without a proxy is left alone; a
// sealed proxy does not open as another user's.
func TestRotateReachesNetworkPolicies(t *testing.T) {
	ctx := t.Context()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "hangar.db"), testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	k1, k2 := make([]byte, 32), make([]byte, 32)
	_, _ = rand.Read(k1)
	_, _ = rand.Read(k2)
	old, err := FromKeys(map[int][]byte{1: k1}, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"alice", "bob"} {
		if err := st.CreateUser(ctx, store.User{ID: "usr_" + name, Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	proxy := []byte("http://u:pw@proxy.test:3128")
	np, err := old.SealNetworkProxy(store.NetworkPolicy{UserID: "usr_alice", Mode: "full", Version: 1}, proxy)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutNetworkPolicy(ctx, np); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutNetworkPolicy(ctx, store.NetworkPolicy{UserID: "usr_bob", Mode: "none", Version: 1}); err != nil {
		t.Fatal(err)
	}
	stolen := np
	stolen.UserID = "usr_bob"
	if _, err := old.OpenNetworkProxy(stolen); err == nil {
		t.Fatal("alice's sealed proxy opened as bob's")
	}
	both, err := FromKeys(map[int][]byte{1: k1, 2: k2}, 2)
	if err != nil {
		t.Fatal(err)
	}
	n, err := RotateAll(ctx, st, both)
	if err != nil || n != 1 {
		t.Fatalf("rotate = %d, %v; want 1 re-sealed", n, err)
	}
	got, err := st.GetNetworkPolicy(ctx, "usr_alice")
	if err != nil || got.KeyVersion != 2 || got.Version != 2 {
		t.Fatalf("alice's policy after rotation = key v%d record v%d, %v", got.KeyVersion, got.Version, err)
	}
	onlyNew, err := FromKeys(map[int][]byte{2: k2}, 2)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := onlyNew.OpenNetworkProxy(got)
	if err != nil || !bytes.Equal(pt, proxy) {
		t.Fatalf("proxy after the old key is retired: %v", err)
	}
	if b, _ := st.GetNetworkPolicy(ctx, "usr_bob"); b.Version != 1 {
		t.Fatalf("a policy without a proxy was rewritten: %+v", b)
	}
}
