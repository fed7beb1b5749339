package store

import (
	"crypto/rand"
	"encoding/base32"
	"strings"
)

// idEncoding is lowercase base32 without padding: ids stay readable, safe in
// URLs and file names, and case-insensitive.
var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewID returns prefix, an underscore and 16 random base32 characters
// (80 bits from crypto/rand), e.g. NewID("vm") = "vm_3f9kq2...". An empty
// prefix returns the random part alone.
func NewID(prefix string) string {
	var b [10]byte
	// crypto/rand.Read never returns an error (it panics if the system
	// source fails), so there is nothing to handle.
	_, _ = rand.Read(b[:])
	r := idEncoding.EncodeToString(b[:])
	if prefix == "" {
		return r
	}
	return strings.TrimSuffix(prefix, "_") + "_" + r
}
