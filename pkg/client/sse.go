package client

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

// maxEventBytes bounds one event's data; a longer one fails the stream
// rather than growing the buffer without end.
const maxEventBytes = 4 << 20

// sseMessage is one server-sent event: its id (the last one seen, which
// persists across events as the standard says), type and data.
type sseMessage struct{ id, event, data string }

// readEventData calls fn with each event's data (see readSSE).
func readEventData(r io.Reader, fn func(data []byte) error) error {
	return readSSE(r, func(m sseMessage) error { return fn([]byte(m.data)) })
}

// readSSE parses a server-sent event stream as the HTML standard defines
// it and calls fn with each event: "field:" with or without one space
// after the colon, several data lines of one event joined by "\n", CRLF,
// CR or LF line ends, comments (":") and the retry field skipped, an event
// ending at a blank line. It returns fn's error, or the reader's (nil at a
// clean EOF; an unfinished event is dropped, as the standard says).
func readSSE(r io.Reader, fn func(sseMessage) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxEventBytes+16)
	sc.Split(scanSSELines)
	var (
		data    []byte
		hasData bool
		id, typ string
	)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			if hasData {
				if err := fn(sseMessage{id: id, event: typ, data: string(data)}); err != nil {
					return err
				}
			}
			data, hasData, typ = data[:0], false, ""
			continue
		}
		if line[0] == ':' {
			continue // comment (keep-alive)
		}
		field, value, found := bytes.Cut(line, []byte(":"))
		if found && len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
		switch string(field) {
		case "id":
			if !bytes.ContainsRune(value, 0) {
				id = string(value)
			}
		case "event":
			typ = string(value)
		case "data":
			if hasData {
				data = append(data, '\n')
			}
			data = append(data, value...)
			hasData = true
			if len(data) > maxEventBytes {
				return fmt.Errorf("event stream: an event is larger than %d bytes", maxEventBytes)
			}
		}
	}
	return sc.Err()
}

// scanSSELines splits at LF, CRLF or a lone CR (bufio.ScanLines knows no
// lone CR).
func scanSSELines(b []byte, atEOF bool) (advance int, token []byte, err error) {
	for i, c := range b {
		switch c {
		case '\n':
			return i + 1, b[:i], nil
		case '\r':
			if i+1 < len(b) {
				if b[i+1] == '\n' {
					return i + 2, b[:i], nil
				}
				return i + 1, b[:i], nil
			}
			if atEOF {
				return i + 1, b[:i], nil
			}
			return 0, nil, nil // is a LF next? read more
		}
	}
	if atEOF && len(b) > 0 {
		return len(b), b, nil
	}
	return 0, nil, nil
}
