package agentlink

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
)

// The guest is untrusted: code in a VM runs as root and can replace the
// agent with anything that speaks the link protocol. Every size below is
// therefore enforced here, on the host, whatever the agent announces or
// promises; a limit sent to the agent (GetFile's max) is only a courtesy
// that lets an honest agent refuse early.
const (
	// MaxJSONBytes bounds one JSON value from the agent: an answer, one
	// event or one log line of an NDJSON stream. The agent's own values
	// are far smaller (a log line is at most 4 KiB of text).
	MaxJSONBytes = 1 << 20
	// MaxResponseHeaderBytes bounds the status line and headers of every
	// HTTP response read over the link (plain calls and upgrades).
	MaxResponseHeaderBytes = 16 << 10
	// DefaultMaxFileBytes caps GetFile when the caller gives no cap.
	DefaultMaxFileBytes = 256 << 20
	// maxErrorBody bounds the body of a non-2xx answer.
	maxErrorBody = 64 << 10
)

// ErrTooLarge is wrapped by errors about a value from the guest exceeding
// its host-side limit.
var ErrTooLarge = errors.New("exceeds the host's limit")

// tooLarge is the error for a guest value over a host limit; it wraps
// ErrTooLarge so callers (the VM manager) can report it like the agent's
// own "too large" answer.
func tooLarge(what string, limit int64) error {
	return &limitError{what: what, limit: limit}
}

type limitError struct {
	what  string
	limit int64
}

func (e *limitError) Error() string {
	return fmt.Sprintf("%s exceeds the host's limit of %d bytes", e.what, e.limit)
}

func (e *limitError) Unwrap() error { return ErrTooLarge }

// decodeJSON decodes the single JSON value in r, reading at most
// MaxJSONBytes (+1 to tell a value of exactly the limit from a larger one).
// It is the one way a JSON answer from the agent is decoded.
func decodeJSON(r io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(r, MaxJSONBytes+1))
	if err != nil {
		return err
	}
	if len(b) > MaxJSONBytes {
		return tooLarge("JSON answer", MaxJSONBytes)
	}
	return json.Unmarshal(b, v)
}

// ndjsonReader reads newline-delimited JSON values (the agent's event and
// log streams), each at most MaxJSONBytes long. A longer line is an error,
// not an allocation: bufio's buffer is fixed and the line is never
// assembled.
type ndjsonReader struct {
	br *bufio.Reader
}

func newNDJSONReader(r io.Reader) *ndjsonReader {
	return &ndjsonReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// next decodes the next non-empty line into v. It returns io.EOF at a
// clean end of stream.
func (n *ndjsonReader) next(v any) error {
	var line []byte
	for {
		chunk, err := n.br.ReadSlice('\n')
		if len(line)+len(chunk) > MaxJSONBytes+1 {
			return tooLarge("JSON line", MaxJSONBytes)
		}
		line = append(line, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil && !(errors.Is(err, io.EOF) && len(bytes.TrimSpace(line)) > 0) {
			return err
		}
		if len(bytes.TrimSpace(line)) == 0 {
			if err != nil {
				return err
			}
			line = line[:0]
			continue
		}
		return json.Unmarshal(line, v)
	}
}

// headerLimitReader lets at most n bytes through until lifted: it guards
// http.ReadResponse, which assembles a status line or header line of any
// length in memory. Reads past the limit fail.
type headerLimitReader struct {
	r      io.Reader
	mu     sync.Mutex // guards n and lifted
	n      int64
	lifted bool
}

func (l *headerLimitReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	lifted, n := l.lifted, l.n
	l.mu.Unlock()
	if lifted {
		return l.r.Read(p)
	}
	if n <= 0 {
		return 0, tooLarge("response header", MaxResponseHeaderBytes)
	}
	if int64(len(p)) > n {
		p = p[:n]
	}
	m, err := l.r.Read(p)
	l.mu.Lock()
	l.n -= int64(m)
	l.mu.Unlock()
	return m, err
}

// lift removes the limit once the header has been parsed.
func (l *headerLimitReader) lift() {
	l.mu.Lock()
	l.lifted = true
	l.mu.Unlock()
}

// readResponse reads an HTTP response head from the stream through br
// (created here over a header limit) and returns it with the reader the
// rest of the stream must be read from.
func readResponse(stream io.Reader, req *http.Request) (*http.Response, *bufio.Reader, error) {
	lr := &headerLimitReader{r: stream, n: MaxResponseHeaderBytes}
	br := bufio.NewReaderSize(lr, 4096)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, nil, err
	}
	lr.lift()
	return resp, br, nil
}
