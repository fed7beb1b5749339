package seal

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/testutil"
)

func TestRotateAll(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		st, err := store.Open(t.Context(), filepath.Join(t.TempDir(), "hangar.db"), testutil.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		testRotateAll(t, st)
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := testutil.PostgresDSN(t)
		st, err := store.Open(t.Context(), dsn, testutil.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		testRotateAll(t, st)
	})
}

// racingStore lets a "concurrent writer" rewrite a record just before
// RotateAll's first write of it, so that write loses the compare-and-swap.
type racingStore struct {
	store.Store
	kr *Keyring

	mu    sync.Mutex // guards raced
	raced map[string]bool
	t     *testing.T
}

func (r *racingStore) PutCredential(ctx context.Context, c store.Credential) (store.Credential, error) {
	key := c.OwnerID + "/" + c.Provider
	r.mu.Lock()
	race := !r.raced[key]
	r.raced[key] = true
	r.mu.Unlock()
	if race {
		// The other writer (a CLI VM syncing refreshed tokens back) stores
		// version c.Version with new contents, still on the old key.
		cur, err := r.Store.GetCredential(ctx, c.OwnerID, c.Provider)
		if err != nil {
			return store.Credential{}, err
		}
		old, err := FromKeys(map[int][]byte{1: r.keyBytes(1)}, 1)
		if err != nil {
			return store.Credential{}, err
		}
		w := cur
		w.Version = cur.Version + 1
		w, err = old.SealRecord(w, []byte(plainFor(cur.OwnerID, cur.Provider)+" refreshed"))
		if err != nil {
			return store.Credential{}, err
		}
		if _, err := r.Store.PutCredential(ctx, w); err != nil {
			return store.Credential{}, fmt.Errorf("concurrent writer: %w", err)
		}
	}
	return r.Store.PutCredential(ctx, c)
}

// keyBytes reads one key out of the test's key file.
func (r *racingStore) keyBytes(v int) []byte {
	return keyFromFile(r.t, filepath.Dir(r.kr.Path()), v)
}

func keyFromFile(t *testing.T, dir string, v int) []byte {
	t.Helper()
	for _, e := range readKeys(t, dir).Keys {
		if e.Version == v {
			b, err := decodeKey(e.Key)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
	t.Fatalf("no key v%d in the key file", v)
	return nil
}

func plainFor(owner, provider string) string {
	return fmt.Sprintf(`{"owner":%q,"provider":%q,"access_token":"tok_%s_%s"}`, owner, provider, owner, provider)
}

func testRotateAll(t *testing.T, st store.Store) {
	ctx := t.Context()
	dir := t.TempDir()
	kr, err := Open(dir, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	var users []store.User
	for _, name := range []string{"alice", "bob"} {
		u := store.User{ID: store.NewID("usr"), Name: name, Role: store.RoleUser}
		if err := st.CreateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}
	want := map[string]string{} // owner/provider -> plaintext expected after rotation
	var sealedV1 []store.Credential
	for _, u := range users {
		for _, p := range []string{"codex", "claude", "dev"} {
			c, err := kr.SealRecord(store.Credential{OwnerID: u.ID, Provider: p, Version: 1,
				Metadata: []byte(`{"account":"` + u.Name + `@example.test"}`)}, []byte(plainFor(u.ID, p)))
			if err != nil {
				t.Fatal(err)
			}
			stored, err := st.PutCredential(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			if stored.KeyVersion != 1 {
				t.Fatalf("stored with key v%d", stored.KeyVersion)
			}
			sealedV1 = append(sealedV1, stored)
			want[u.ID+"/"+p] = plainFor(u.ID, p)
		}
	}

	v, err := kr.Rotate(ctx)
	if err != nil || v != 2 {
		t.Fatalf("rotate = v%d, %v", v, err)
	}
	// Records sealed with v1 still open with v2 current.
	for _, c := range sealedV1 {
		if pt, err := kr.OpenRecord(c); err != nil || string(pt) != want[c.OwnerID+"/"+c.Provider] {
			t.Fatalf("v1 record after rotate: %v", err)
		}
	}

	// alice's codex record is rewritten by a concurrent writer during the
	// rotation; RotateAll must retry it and seal the newer contents.
	racer := &racingStore{Store: st, kr: kr, raced: map[string]bool{}, t: t}
	for _, u := range users {
		for _, p := range []string{"claude", "dev"} {
			racer.raced[u.ID+"/"+p] = true // only alice/codex and bob/codex race
		}
	}
	for _, u := range users {
		want[u.ID+"/codex"] = plainFor(u.ID, "codex") + " refreshed"
	}
	n, err := RotateAll(ctx, racer, kr)
	if err != nil {
		t.Fatalf("rotate all: %v", err)
	}
	if n != len(sealedV1) {
		t.Fatalf("re-sealed %d records, want %d", n, len(sealedV1))
	}

	all, err := st.ListCredentials(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(sealedV1) {
		t.Fatalf("%d records after rotation, want %d", len(all), len(sealedV1))
	}
	for _, c := range all {
		if c.KeyVersion != 2 {
			t.Fatalf("%s/%s still on key v%d", c.OwnerID, c.Provider, c.KeyVersion)
		}
		wantVersion := int64(2)
		if c.Provider == "codex" {
			wantVersion = 3 // the concurrent writer's version, then the re-seal
		}
		if c.Version != wantVersion {
			t.Fatalf("%s/%s at version %d, want %d", c.OwnerID, c.Provider, c.Version, wantVersion)
		}
		if string(c.Metadata) == "" {
			t.Fatalf("%s/%s lost its metadata", c.OwnerID, c.Provider)
		}
	}

	// A keyring WITHOUT v1 (the operator removed the old key from the file)
	// opens every record; the old v1 copies no longer open at all.
	f := readKeys(t, dir)
	f.Keys = f.Keys[1:]
	if f.Keys[0].Version != 2 {
		t.Fatalf("unexpected key file layout: first remaining key v%d", f.Keys[0].Version)
	}
	if err := writeKeyFile(filepath.Join(dir, KeyFileName), f, true); err != nil {
		t.Fatal(err)
	}
	onlyV2, err := Open(dir, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if ks := onlyV2.Keys(); len(ks) != 1 || ks[0].Version != 2 {
		t.Fatalf("keys after removing v1 = %+v", ks)
	}
	for _, c := range all {
		pt, err := onlyV2.OpenRecord(c)
		if err != nil {
			t.Fatalf("%s/%s with only v2: %v", c.OwnerID, c.Provider, err)
		}
		if string(pt) != want[c.OwnerID+"/"+c.Provider] {
			t.Fatalf("%s/%s opened to other contents than expected", c.OwnerID, c.Provider)
		}
	}
	for _, c := range sealedV1 {
		if pt, err := onlyV2.OpenRecord(c); !errors.Is(err, ErrUnknownKey) || pt != nil {
			t.Fatalf("v1 copy with only v2: err = %v", err)
		}
	}

	// Nothing left to do: a second pass re-seals nothing.
	if n, err := RotateAll(ctx, st, onlyV2); err != nil || n != 0 {
		t.Fatalf("second rotate all = %d, %v", n, err)
	}

	// A record no key opens is reported, and the others are still done.
	if _, err := onlyV2.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	bad := all[0]
	bad.Version++
	bad.KeyVersion = 2
	bad.Ciphertext = append([]byte(nil), bad.Ciphertext...)
	bad.Ciphertext[0] ^= 0xff
	if _, err := st.PutCredential(ctx, bad); err != nil {
		t.Fatal(err)
	}
	n, err = RotateAll(ctx, st, onlyV2)
	if !errors.Is(err, ErrAuth) || n != len(all)-1 {
		t.Fatalf("rotate all with one tampered record = %d, %v", n, err)
	}
	assertClean(t, err, "tok_")
}

// decodeKey decodes a key file entry.
func decodeKey(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }
