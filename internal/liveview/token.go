package liveview

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"time"
)

// Token errors. Both mean "refuse the request"; they are distinguished only
// so the viewer can tell a user that a link has expired rather than that it
// is wrong. Neither carries any part of the token.
var (
	ErrInvalidToken = errors.New("invalid live-view token")
	ErrExpiredToken = errors.New("live-view token has expired")
)

// Claims are what a valid token says about its bearer.
type Claims struct {
	// OwnerID is the user who owns the login session.
	OwnerID string
	// ViewOnly forbids keyboard, pointer, clipboard and resize input.
	ViewOnly bool
	// Expires is when the token stops opening new connections.
	Expires time.Time
}

// tokenVersion is the first byte of every payload, so the format can change
// without old tokens being misread.
const tokenVersion = 1

// macDomain separates these MACs from any other use of the same key.
const macDomain = "hangar-liveview-token-v1\x00"

// tokenEncoding is strict so each token has exactly one spelling.
var tokenEncoding = base64.RawURLEncoding.Strict()

// maxOwnerLen bounds the owner id a token can carry (it is length-prefixed
// with one byte).
const maxOwnerLen = 255

// Signer issues and verifies live-view tokens with a key that lives only in
// this daemon's memory: tokens die with the daemon, which is what a
// short-lived credential for a VM that also dies with it wants.
type Signer struct {
	key [32]byte
	now func() time.Time
}

// NewSigner makes a signer with a fresh random key.
func NewSigner() *Signer {
	s := &Signer{now: time.Now}
	// crypto/rand.Read never returns an error (it aborts the program if the
	// kernel cannot supply randomness).
	_, _ = rand.Read(s.key[:])
	return s
}

// Issue makes a token for one login session and its owner, valid for ttl.
// The token is URL-safe (base64url, no padding, one dot) and about 60
// characters plus the owner id. It is a credential: never log it.
func (s *Signer) Issue(sessionID, ownerID string, viewOnly bool, ttl time.Duration) string {
	if len(ownerID) > maxOwnerLen {
		// Owner ids are short generated ids; a longer one is a caller bug,
		// and a token that can never verify is the safe outcome.
		ownerID = ownerID[:maxOwnerLen]
	}
	exp := s.now().Add(ttl).UnixMilli()
	payload := make([]byte, 0, 1+8+1+1+len(ownerID))
	payload = append(payload, tokenVersion)
	payload = binary.BigEndian.AppendUint64(payload, uint64(exp))
	var flags byte
	if viewOnly {
		flags |= 1
	}
	payload = append(payload, flags, byte(len(ownerID)))
	payload = append(payload, ownerID...)
	mac := s.mac(sessionID, payload)
	return tokenEncoding.EncodeToString(payload) + "." + tokenEncoding.EncodeToString(mac)
}

// Verify checks a token against the session it is presented for and
// returns its claims. A token issued for another session, altered in any
// byte, signed by another daemon or past its expiry is refused.
func (s *Signer) Verify(token, sessionID string) (Claims, error) {
	p64, m64, ok := strings.Cut(token, ".")
	if !ok || len(token) > 1024 {
		return Claims{}, ErrInvalidToken
	}
	payload, err := tokenEncoding.DecodeString(p64)
	if err != nil {
		return Claims{}, ErrInvalidToken
	}
	mac, err := tokenEncoding.DecodeString(m64)
	if err != nil {
		return Claims{}, ErrInvalidToken
	}
	// The MAC is checked before the payload is interpreted, in constant
	// time, so nothing about a forged payload is acted on.
	if !hmac.Equal(mac, s.mac(sessionID, payload)) {
		return Claims{}, ErrInvalidToken
	}
	if len(payload) < 11 || payload[0] != tokenVersion || int(payload[10]) != len(payload)-11 {
		return Claims{}, ErrInvalidToken
	}
	c := Claims{
		Expires:  time.UnixMilli(int64(binary.BigEndian.Uint64(payload[1:9]))),
		ViewOnly: payload[9]&1 != 0,
		OwnerID:  string(payload[11:]),
	}
	if !s.now().Before(c.Expires) {
		return Claims{}, ErrExpiredToken
	}
	return c, nil
}

// mac binds the payload to the session id. The session id is length
// prefixed so that no (session, payload) pair can be re-split into another.
func (s *Signer) mac(sessionID string, payload []byte) []byte {
	h := hmac.New(sha256.New, s.key[:])
	h.Write([]byte(macDomain))
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(sessionID)))
	h.Write(n[:])
	h.Write([]byte(sessionID))
	h.Write(payload)
	return h.Sum(nil)
}
