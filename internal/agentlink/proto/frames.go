package proto

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Exec frames. After POST /v1/exec is upgraded, both directions carry
// frames: one type byte, a 4-byte big-endian payload length, the payload.
const (
	// Host to agent.
	FrameStdin    byte = 1 // payload: bytes for the command's stdin
	FrameStdinEOF byte = 2 // no payload: close the command's stdin
	FrameResize   byte = 3 // payload: rows uint16, cols uint16 (big-endian)
	FrameSignal   byte = 4 // payload: one byte, the signal number
	// Agent to host.
	FrameStdout byte = 16 // payload: output bytes (all output in PTY mode)
	FrameStderr byte = 17 // payload: error output bytes
	FrameExit   byte = 18 // payload: ExitStatus as JSON; the last frame
)

// MaxFramePayload bounds a frame so a corrupt length cannot allocate much.
const MaxFramePayload = 1 << 20

// WriteFrame writes one frame. Callers serialise concurrent writers.
func WriteFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxFramePayload {
		return fmt.Errorf("frame payload of %d bytes exceeds %d", len(payload), MaxFramePayload)
	}
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	buf := make([]byte, 0, len(hdr)+len(payload))
	buf = append(buf, hdr[:]...)
	buf = append(buf, payload...)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame.
func ReadFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFramePayload {
		return 0, nil, fmt.Errorf("frame payload of %d bytes exceeds %d", n, MaxFramePayload)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, fmt.Errorf("read frame payload: %w", err)
	}
	return hdr[0], payload, nil
}
