package httpapi

import (
	"errors"
	"io"
	"net/http"
	"time"
)

// The HTTP server bounds the headers (ReadHeaderTimeout) but cannot bound
// bodies with a server-wide ReadTimeout: that deadline stays on the
// connection, and a long server-sent event stream or exec would be cut
// when it fires. Instead each request body gets its own read deadline,
// set at its first read and cleared once it has been read to the end, so
// a client trickling a body byte by byte holds a handler for a bounded
// time, and a request that streams a response afterwards is unaffected.

// defaultBodyReadTimeout is the base time allowed to read a body; larger
// body limits (uploads) add time at minBodyRate.
const (
	defaultBodyReadTimeout = 60 * time.Second
	minBodyRate            = 256 << 10 // bytes per second
)

// bodyTimeout is the read budget of a body of at most maxBody bytes.
func (s *Server) bodyTimeout(maxBody int64) time.Duration {
	base := s.opts.BodyReadTimeout
	if base <= 0 {
		base = defaultBodyReadTimeout
	}
	return base + time.Duration(maxBody/minBodyRate)*time.Second
}

// timedBody is a request body under a read deadline.
type timedBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	budget  time.Duration
	started bool
	done    bool
}

func (b *timedBody) Read(p []byte) (int, error) {
	if !b.started {
		b.started = true
		_ = b.rc.SetReadDeadline(time.Now().Add(b.budget))
	}
	n, err := b.ReadCloser.Read(p)
	// Cleared only at the body's end: after a timeout the deadline must
	// stay, or the server, discarding the rest of the body before it
	// answers, would wait for the stalled client forever.
	if errors.Is(err, io.EOF) && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}
