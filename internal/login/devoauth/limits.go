package devoauth

import "net/http"

// The dev OAuth server is reached from login VMs (through the agent link's
// reverse forward), so its clients are guests and may be hostile: what one
// request may send and how many authorizations may wait are bounded.
const (
	// maxRequestBody bounds a request body (the forms are tiny; the token
	// endpoint keeps its own, smaller cap).
	maxRequestBody = 64 << 10
	// maxQueryBytes bounds a request's query string: /authorize stores its
	// state, scope and challenge with the pending authorization.
	maxQueryBytes = 8 << 10
	// maxPending bounds authorization requests and codes waiting at once;
	// beyond it /authorize answers 503 until some expire or complete.
	maxPending = 1024
)

// limitRequest applies the request-size limits; it reports false after
// answering a request over them.
func limitRequest(w http.ResponseWriter, r *http.Request) bool {
	if len(r.URL.RawQuery) > maxQueryBytes {
		http.Error(w, "query too long", http.StatusRequestURITooLong)
		return false
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
	return true
}

// pendingFullLocked reports whether no further authorization may start.
// s.mu must be held.
func (s *Server) pendingFullLocked() bool {
	if len(s.requests)+len(s.codes) < maxPending {
		return false
	}
	// Expired entries may still be held between sweeps: sweep now.
	s.lastSweep = s.lastSweep.AddDate(-1, 0, 0)
	s.sweepLocked(s.opts.Now())
	return len(s.requests)+len(s.codes) >= maxPending
}
