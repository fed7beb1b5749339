package main

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// sanitize makes text that came from a guest safe to print on an admin's
// terminal. Console lines in last_error, a CLI's output in a login
// session's error and an agent's refusal are written by code in a VM,
// which may be hostile: raw, an escape sequence could retitle the window,
// rewrite what was printed above, or (on some terminals) answer back into
// the shell. Control characters other than newline become visible escapes
// (\x1b), as do C1 controls, DEL and invalid UTF-8. keepTab keeps tabs
// (free text); table cells pass false since a tab would split a column.
func sanitize(s string, keepTab bool) string {
	clean := true
	for _, r := range s {
		if unsafeRune(r, keepTab) {
			clean = false
			break
		}
	}
	if clean && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i, w := 0, 0; i < len(s); i += w {
		r, n := utf8.DecodeRuneInString(s[i:])
		w = n
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r, keepTab):
			if r < 0x100 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func unsafeRune(r rune, keepTab bool) bool {
	switch {
	case r == '\n':
		return false
	case r == '\t':
		return !keepTab
	case r < 0x20, r == 0x7f, r >= 0x80 && r < 0xa0:
		return true
	case r == 0x2028, r == 0x2029, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		// Line separators and bidirectional overrides reorder what is
		// shown.
		return true
	}
	return false
}
