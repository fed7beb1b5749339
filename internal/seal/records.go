package seal

import (
	"context"
	"errors"
	"fmt"

	"github.com/hangar-vm/hangar/internal/store"
)

// ADOf is the additional data of a stored credential record.
func ADOf(c store.Credential) AD {
	return AD{UserID: c.OwnerID, Provider: c.Provider, Version: c.Version}
}

// SealRecord returns c with KeyVersion, Nonce and Ciphertext set to
// plaintext sealed with the current key for c's owner, provider and
// version. Set c.Version to the version the record will be stored at (1
// for a new record, stored+1 for a rewrite) before calling it.
func (k *Keyring) SealRecord(c store.Credential, plaintext []byte) (store.Credential, error) {
	s, err := k.Seal(plaintext, ADOf(c))
	if err != nil {
		return store.Credential{}, err
	}
	c.KeyVersion, c.Nonce, c.Ciphertext = s.KeyVersion, s.Nonce, s.Ciphertext
	return c, nil
}

// OpenRecord opens a stored credential record.
func (k *Keyring) OpenRecord(c store.Credential) ([]byte, error) {
	return k.Open(Sealed{KeyVersion: c.KeyVersion, Nonce: c.Nonce, Ciphertext: c.Ciphertext}, ADOf(c))
}

// rotateAttempts bounds how often one record is retried when concurrent
// writers keep winning the version compare-and-swap.
const rotateAttempts = 10

// RotateAll re-seals every credential record (and every network policy's
// upstream proxy, network.go) that is not sealed with the keyring's current
// key, writing each as its next version through the store's
// compare-and-swap. A record a concurrent writer changed
// meanwhile is read again and retried; one deleted meanwhile is skipped. It
// carries on past records it cannot re-seal and returns how many it
// re-sealed together with the joined errors of the others.
func RotateAll(ctx context.Context, st store.Store, kr *Keyring) (int, error) {
	all, err := st.ListCredentials(ctx, "")
	if err != nil {
		return 0, fmt.Errorf("rotate all: %w", err)
	}
	current := kr.Current()
	n := 0
	var errs []error
	for _, c := range all {
		if err := ctx.Err(); err != nil {
			return n, errors.Join(append(errs, fmt.Errorf("rotate all: %w", err))...)
		}
		done, err := resealOne(ctx, st, kr, c, current)
		if err != nil {
			errs = append(errs, err)
		}
		if done {
			n++
		}
	}
	nn, err := rotateNetwork(ctx, st, kr, current)
	if err != nil {
		errs = append(errs, err)
	}
	return n + nn, errors.Join(errs...)
}

// resealOne re-seals c with key version current, retrying on a lost
// compare-and-swap. done reports whether it wrote a new version.
func resealOne(ctx context.Context, st store.Store, kr *Keyring, c store.Credential, current int) (done bool, err error) {
	for range rotateAttempts {
		if c.KeyVersion == current {
			return false, nil // already on the current key (maybe by a concurrent writer)
		}
		pt, err := kr.OpenRecord(c)
		if err != nil {
			return false, fmt.Errorf("rotate all: %w", err)
		}
		next := c
		next.Version = c.Version + 1
		next, err = kr.SealRecord(next, pt)
		clear(pt)
		if err != nil {
			return false, fmt.Errorf("rotate all: %w", err)
		}
		_, err = st.PutCredential(ctx, next)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, store.ErrNotFound):
			return false, nil // deleted meanwhile: nothing left to re-seal
		case errors.Is(err, store.ErrConflict):
			// A concurrent writer stored a newer version: re-seal that one.
			fresh, err := st.GetCredential(ctx, c.OwnerID, c.Provider)
			if errors.Is(err, store.ErrNotFound) {
				return false, nil
			}
			if err != nil {
				return false, fmt.Errorf("rotate all: %w", err)
			}
			c = fresh
		default:
			return false, fmt.Errorf("rotate all: %w", err)
		}
	}
	return false, fmt.Errorf("rotate all: %s/%s: still losing to concurrent writers after %d attempts", c.OwnerID, c.Provider, rotateAttempts)
}
