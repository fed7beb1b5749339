// Package seal encrypts credential records at rest.
//
// Each record is sealed with AES-256-GCM under a key-encryption key (KEK)
// from a versioned keyring, with a fresh random 96-bit nonce and additional
// data (AD) that binds the record to its owner, provider and record version.
// A sealed record copied to another user, another provider or another
// version of the same record therefore fails to open, and so does any
// change to its nonce, ciphertext or key version.
//
// # Where the keys come from
//
// If HANGAR_SEAL_KEY is set it is the current key: standard base64 of 32
// bytes, with its version in HANGAR_SEAL_KEY_VERSION (default 1). Retired
// keys that old records still need go in HANGAR_SEAL_OLD_KEYS as a
// comma-separated list of version:base64key. The key file is then neither
// read nor created, and Rotate is refused: rotating means deploying a new
// HANGAR_SEAL_KEY (with a higher version), moving the previous one into
// HANGAR_SEAL_OLD_KEYS, and running `hangar keys rotate`, which re-seals
// every record with the new key.
//
// Otherwise the keys live in <data-dir>/seal.keys (mode 0600; a file that
// group or others can read is refused), created on first start with one
// random key, version 1. It is JSON:
//
//	{
//	  "format": 1,
//	  "current": 2,
//	  "keys": [
//	    {"version": 1, "key": "<base64 of 32 bytes>", "created_at": "2026-01-02T15:04:05Z"},
//	    {"version": 2, "key": "<base64 of 32 bytes>", "created_at": "2026-03-04T10:00:00Z"}
//	  ]
//	}
//
// Rotate appends a key and makes it current; old keys stay so that records
// sealed with them still open. RotateAll then re-seals every record with the
// current key; after that an old key can be removed from the file by hand.
//
// Key bytes and plaintext never appear in errors or logs.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
)

// KeySize is the size of a key-encryption key: AES-256.
const KeySize = 32

// NonceSize is the GCM nonce size: 96 bits, random per record.
const NonceSize = 12

// Errors Open returns (wrapped); test with errors.Is.
var (
	// ErrAuth means the record failed authentication: its ciphertext,
	// nonce, key version or additional data were changed, or it belongs to
	// another user, provider or record version. No plaintext is returned.
	ErrAuth = errors.New("sealed record failed authentication")
	// ErrUnknownKey means the record names a key version the keyring does
	// not hold (a key was removed too early, or the wrong key file).
	ErrUnknownKey = errors.New("unknown key version")
)

// AD is the additional data a record is bound to. None of it is secret; all
// of it must match between Seal and Open.
type AD struct {
	UserID   string
	Provider string
	// Version is the record version the sealed bytes are stored at
	// (store.Credential.Version): a re-write seals again for the new version.
	Version int64
}

// Sealed is one sealed record as it is stored.
type Sealed struct {
	KeyVersion int
	Nonce      []byte
	Ciphertext []byte // includes the GCM tag
}

// adDomain separates hangar's credential AD from any other use of the keys.
const adDomain = "hangar-seal-v1"

// encodeAD is an unambiguous encoding: length-prefixed strings, so that
// ("ab","c") and ("a","bc") differ, then the record and key versions.
func encodeAD(ad AD, keyVersion int) []byte {
	b := make([]byte, 0, len(adDomain)+len(ad.UserID)+len(ad.Provider)+32)
	b = binary.BigEndian.AppendUint32(b, uint32(len(adDomain)))
	b = append(b, adDomain...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ad.UserID)))
	b = append(b, ad.UserID...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ad.Provider)))
	b = append(b, ad.Provider...)
	b = binary.BigEndian.AppendUint64(b, uint64(ad.Version))
	b = binary.BigEndian.AppendUint64(b, uint64(keyVersion))
	return b
}

func (ad AD) String() string {
	return fmt.Sprintf("%s/%s v%d", ad.UserID, ad.Provider, ad.Version)
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("key is %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	return cipher.NewGCM(block)
}

// sealWith seals plaintext under aead with a fresh random nonce.
func sealWith(aead cipher.AEAD, keyVersion int, plaintext []byte, ad AD) (Sealed, error) {
	if ad.UserID == "" || ad.Provider == "" || ad.Version < 1 {
		return Sealed{}, fmt.Errorf("seal %s: user, provider and a version of 1 or more are required", ad)
	}
	nonce := make([]byte, NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return Sealed{}, fmt.Errorf("seal %s: nonce: %w", ad, err)
	}
	ct := aead.Seal(nil, nonce, plaintext, encodeAD(ad, keyVersion))
	return Sealed{KeyVersion: keyVersion, Nonce: nonce, Ciphertext: ct}, nil
}

// openWith opens s under aead; on any failure it returns nil and ErrAuth.
func openWith(aead cipher.AEAD, s Sealed, ad AD) ([]byte, error) {
	if len(s.Nonce) != NonceSize {
		return nil, fmt.Errorf("open %s: nonce is %d bytes, want %d: %w", ad, len(s.Nonce), NonceSize, ErrAuth)
	}
	pt, err := aead.Open(nil, s.Nonce, s.Ciphertext, encodeAD(ad, s.KeyVersion))
	if err != nil {
		// GCM's own error says nothing more than this; never wrap bytes.
		return nil, fmt.Errorf("open %s (key v%d): %w", ad, s.KeyVersion, ErrAuth)
	}
	return pt, nil
}
