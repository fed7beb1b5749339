package seal

import (
	"context"
	"errors"
	"fmt"

	"github.com/hangar-vm/hangar/internal/store"
)

// An admin's network policy for a user may carry an upstream proxy URL
// with a password. It is sealed like a credential, bound to the user, the
// name below and the policy's version, so a sealed proxy cannot be passed
// off as a credential or as another user's, and key rotation re-seals it
// with the credentials (RotateAll).

// NetworkProvider is the provider name bound into a sealed proxy.
const NetworkProvider = "hangar.network"

// networkRecord is the credential-shaped view of np the seal binds to.
func networkRecord(np store.NetworkPolicy) store.Credential {
	return store.Credential{OwnerID: np.UserID, Provider: NetworkProvider, Version: np.Version,
		KeyVersion: np.KeyVersion, Nonce: np.Nonce, Ciphertext: np.Ciphertext}
}

// SealNetworkProxy returns np with proxy sealed for np.UserID and
// np.Version (set Version to the version it will be stored at first).
func (k *Keyring) SealNetworkProxy(np store.NetworkPolicy, proxy []byte) (store.NetworkPolicy, error) {
	c, err := k.SealRecord(networkRecord(np), proxy)
	if err != nil {
		return np, err
	}
	np.KeyVersion, np.Nonce, np.Ciphertext = c.KeyVersion, c.Nonce, c.Ciphertext
	return np, nil
}

// OpenNetworkProxy returns np's proxy URL; nil when it has none.
func (k *Keyring) OpenNetworkProxy(np store.NetworkPolicy) ([]byte, error) {
	if len(np.Ciphertext) == 0 {
		return nil, nil
	}
	return k.OpenRecord(networkRecord(np))
}

// rotateNetwork re-seals every network policy's proxy not sealed with the
// current key, as resealOne does for credentials.
func rotateNetwork(ctx context.Context, st store.Store, kr *Keyring, current int) (int, error) {
	all, err := st.ListNetworkPolicies(ctx)
	if err != nil {
		return 0, fmt.Errorf("rotate network policies: %w", err)
	}
	n := 0
	var errs []error
	for _, np := range all {
		done, err := resealNetwork(ctx, st, kr, np, current)
		if err != nil {
			errs = append(errs, err)
		}
		if done {
			n++
		}
	}
	return n, errors.Join(errs...)
}

func resealNetwork(ctx context.Context, st store.Store, kr *Keyring, np store.NetworkPolicy, current int) (bool, error) {
	for range rotateAttempts {
		if len(np.Ciphertext) == 0 || np.KeyVersion == current {
			return false, nil
		}
		pt, err := kr.OpenNetworkProxy(np)
		if err != nil {
			return false, fmt.Errorf("rotate network policy of %s: %w", np.UserID, err)
		}
		next := np
		next.Version = np.Version + 1
		next, err = kr.SealNetworkProxy(next, pt)
		clear(pt)
		if err != nil {
			return false, fmt.Errorf("rotate network policy of %s: %w", np.UserID, err)
		}
		_, err = st.PutNetworkPolicy(ctx, next)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, store.ErrNotFound):
			return false, nil
		case errors.Is(err, store.ErrConflict):
			fresh, err := st.GetNetworkPolicy(ctx, np.UserID)
			if errors.Is(err, store.ErrNotFound) {
				return false, nil
			}
			if err != nil {
				return false, fmt.Errorf("rotate network policy of %s: %w", np.UserID, err)
			}
			np = fresh
		default:
			return false, fmt.Errorf("rotate network policy of %s: %w", np.UserID, err)
		}
	}
	return false, fmt.Errorf("rotate network policy of %s: still losing to concurrent writers after %d attempts", np.UserID, rotateAttempts)
}
