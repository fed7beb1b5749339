package liveview

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestTokenRoundTrip(t *testing.T) {
	s := NewSigner()
	for _, viewOnly := range []bool{false, true} {
		tok := s.Issue("sess-A", "user-1", viewOnly, time.Minute)
		if strings.ContainsAny(tok, "+/= ") || strings.Count(tok, ".") != 1 {
			t.Fatalf("token %q is not compact URL-safe", tok)
		}
		c, err := s.Verify(tok, "sess-A")
		if err != nil {
			t.Fatal(err)
		}
		if c.OwnerID != "user-1" || c.ViewOnly != viewOnly {
			t.Fatalf("claims %+v", c)
		}
		if d := time.Until(c.Expires); d < 58*time.Second || d > time.Minute {
			t.Fatalf("expires in %v, want about 1m", d)
		}
	}
}

func TestTokenBoundToSession(t *testing.T) {
	s := NewSigner()
	tok := s.Issue("sess-A", "user-1", false, time.Minute)
	if _, err := s.Verify(tok, "sess-B"); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("token of A verified for B: %v", err)
	}
	// Length-prefixing: a session id that is a prefix of another differs.
	if _, err := s.Verify(tok, "sess-"); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("token of sess-A verified for sess-: %v", err)
	}
}

func TestTokenExpired(t *testing.T) {
	s := NewSigner()
	now := time.Now()
	s.now = func() time.Time { return now }
	tok := s.Issue("sess-A", "user-1", false, 2*time.Second)
	s.now = func() time.Time { return now.Add(1999 * time.Millisecond) }
	if _, err := s.Verify(tok, "sess-A"); err != nil {
		t.Fatalf("token refused before expiry: %v", err)
	}
	s.now = func() time.Time { return now.Add(2 * time.Second) }
	if _, err := s.Verify(tok, "sess-A"); !errors.Is(err, ErrExpiredToken) {
		t.Fatalf("expired token: %v, want ErrExpiredToken", err)
	}
}

func TestTokenTampered(t *testing.T) {
	s := NewSigner()
	tok := s.Issue("sess-A", "user-1", true, time.Minute)
	// Every single-character change anywhere must be refused.
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i := range tok {
		if tok[i] == '.' {
			continue
		}
		for _, r := range []byte{alphabet[(strings.IndexByte(alphabet, tok[i])+1)%64], alphabet[(strings.IndexByte(alphabet, tok[i])+7)%64]} {
			bad := tok[:i] + string(r) + tok[i+1:]
			if _, err := s.Verify(bad, "sess-A"); !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("token changed at %d: %v, want ErrInvalidToken", i, err)
			}
		}
	}
	// A view-only token turned interactive by re-encoding its payload.
	p, m, _ := strings.Cut(tok, ".")
	raw := decode(t, p)
	raw[9] = 0
	if _, err := s.Verify(encode(raw)+"."+m, "sess-A"); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("view-only flag flipped: %v", err)
	}
	// Another daemon's key.
	if _, err := NewSigner().Verify(tok, "sess-A"); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("token from another signer: %v", err)
	}
	for _, junk := range []string{"", ".", "abc", "a.b", tok + "x", tok + ".x", strings.Repeat("A", 2000)} {
		if _, err := s.Verify(junk, "sess-A"); err == nil {
			t.Fatalf("junk %q verified", junk)
		}
	}
}

func TestTokenErrorsDoNotCarryToken(t *testing.T) {
	s := NewSigner()
	tok := s.Issue("sess-A", "user-1", false, -time.Second)
	_, err := s.Verify(tok, "sess-A")
	if err == nil || strings.Contains(err.Error(), tok) {
		t.Fatalf("error %v", err)
	}
}
func decode(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func encode(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
