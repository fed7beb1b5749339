package liveview

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// RFB client-to-server message types (RFC 6143 §7.5 and the community
// extensions noVNC speaks).
const (
	msgSetPixelFormat          = 0
	msgSetEncodings            = 2
	msgFramebufferUpdateReq    = 3
	msgKeyEvent                = 4
	msgPointerEvent            = 5
	msgClientCutText           = 6
	msgEnableContinuousUpdates = 150
	msgClientFence             = 248
	msgXvp                     = 250
	msgSetDesktopSize          = 251
)

// Pseudo-encodings a view-only client may not enable, because enabling them
// changes the client's message set: QEMU extended key events arrive as
// message type 255, and extended mouse buttons make a PointerEvent 7 bytes
// long instead of 6. Removing them from SetEncodings keeps the server from
// acknowledging them, so the client never sends those forms and the filter's
// idea of message lengths stays right.
const (
	encQEMUExtendedKeyEvent   = -258
	encExtendedMouseButtons   = -316
	maxCutTextLen             = 16 << 20
	maxEncodings              = 1024
	protocolVersionLen        = 12
	securityTypeNone          = 1
	rfbMinorWithSecurityTypes = 7
)

// errFilter marks a client stream the view-only filter cannot follow; the
// bridge closes the connection rather than forward bytes it does not
// understand.
var errFilter = errors.New("view-only filter")

// filterStats counts what the filter did.
type filterStats struct {
	in      int64 // bytes read from the client
	out     int64 // bytes written to the server
	dropped int   // messages dropped
}

// viewOnlyCopy copies a client-to-server RFB stream from src to dst,
// forwarding the handshake and the messages that only ask for pixels
// (SetPixelFormat, SetEncodings, FramebufferUpdateRequest,
// EnableContinuousUpdates, ClientFence) and dropping everything that could
// change the remote desktop: KeyEvent, PointerEvent, ClientCutText,
// SetDesktopSize and xvp (power) requests. A message type it does not know
// ends the copy with an error, because its length, and so where the next
// message starts, is unknown.
func viewOnlyCopy(dst io.Writer, src io.Reader) (filterStats, error) {
	f := &viewFilter{src: &countingReader{r: src}, dst: dst}
	f.br = bufio.NewReaderSize(f.src, 4096)
	err := f.run()
	f.st.in = f.src.n
	return f.st, err
}

type viewFilter struct {
	src *countingReader
	br  *bufio.Reader
	dst io.Writer
	st  filterStats
	buf []byte
}

// read returns the next n bytes of the client stream. The slice is reused.
func (f *viewFilter) read(n int) ([]byte, error) {
	if cap(f.buf) < n {
		f.buf = make([]byte, n)
	}
	b := f.buf[:n]
	if _, err := io.ReadFull(f.br, b); err != nil {
		return nil, unexpected(err)
	}
	return b, nil
}

func (f *viewFilter) forward(b []byte) error {
	n, err := f.dst.Write(b)
	f.st.out += int64(n)
	if err != nil {
		return fmt.Errorf("write to vnc server: %w", err)
	}
	return nil
}

func (f *viewFilter) discard(n int64) error {
	if _, err := io.CopyN(io.Discard, f.br, n); err != nil {
		return unexpected(err)
	}
	return nil
}

// unexpected turns EOF inside a message into io.ErrUnexpectedEOF: only an
// end between messages is a clean close.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// run returns nil when the client closes between messages, like io.Copy.
func (f *viewFilter) run() error {
	if err := f.handshake(); err != nil {
		return err
	}
	for {
		if err := f.message(); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// handshake forwards the client's half of the RFB handshake: its
// ProtocolVersion, its choice of security type (3.7 and later) and
// ClientInit. Only security type None is allowed through, because any
// other type has a client-side exchange of its own that the filter would
// have to follow; x11vnc in the browser VM offers only None. ClientInit is
// forced to shared so a viewer can never disconnect the person driving.
func (f *viewFilter) handshake() error {
	b, err := f.read(protocolVersionLen)
	if err != nil {
		return err
	}
	var major, minor int
	if _, err := fmt.Sscanf(string(b), "RFB %03d.%03d\n", &major, &minor); err != nil || major != 3 {
		return fmt.Errorf("%w: client protocol version %q is not RFB 3.x", errFilter, b)
	}
	if err := f.forward(b); err != nil {
		return err
	}
	if minor >= rfbMinorWithSecurityTypes {
		b, err := f.read(1)
		if err != nil {
			return err
		}
		if b[0] != securityTypeNone {
			return fmt.Errorf("%w: client chose security type %d; only None (1) is supported", errFilter, b[0])
		}
		if err := f.forward(b); err != nil {
			return err
		}
	}
	if _, err := f.read(1); err != nil {
		return err
	}
	return f.forward([]byte{1})
}

// message reads one client message and forwards or drops it.
func (f *viewFilter) message() error {
	t, err := f.br.ReadByte()
	if err != nil {
		return err
	}
	switch t {
	case msgSetPixelFormat:
		return f.pass(t, 19)
	case msgFramebufferUpdateReq, msgEnableContinuousUpdates:
		return f.pass(t, 9)
	case msgSetEncodings:
		return f.setEncodings()
	case msgClientFence:
		hdr, err := f.read(8) // 3 padding, 4 flags, 1 length
		if err != nil {
			return err
		}
		n := int(hdr[7])
		if n > 64 {
			return fmt.Errorf("%w: client fence payload of %d bytes (max 64)", errFilter, n)
		}
		msg := append([]byte{t}, hdr...)
		rest, err := f.read(n)
		if err != nil {
			return err
		}
		return f.forward(append(msg, rest...))
	case msgKeyEvent:
		return f.drop(7)
	case msgPointerEvent:
		return f.drop(5)
	case msgXvp:
		return f.drop(3)
	case msgClientCutText:
		hdr, err := f.read(7) // 3 padding, 4 length
		if err != nil {
			return err
		}
		// Extended clipboard sends a negative length; its payload is
		// -length bytes.
		n := int64(int32(binary.BigEndian.Uint32(hdr[3:])))
		if n < 0 {
			n = -n
		}
		if n > maxCutTextLen {
			return fmt.Errorf("%w: client cut text of %d bytes", errFilter, n)
		}
		f.st.dropped++
		return f.discard(n)
	case msgSetDesktopSize:
		hdr, err := f.read(7) // padding, width, height, screens, padding
		if err != nil {
			return err
		}
		f.st.dropped++
		return f.discard(int64(hdr[5]) * 16)
	default:
		return fmt.Errorf("%w: unknown client message type %d", errFilter, t)
	}
}

// pass forwards a fixed-length message whose type byte has been read.
func (f *viewFilter) pass(t byte, rest int) error {
	b, err := f.read(rest)
	if err != nil {
		return err
	}
	msg := make([]byte, 0, 1+rest)
	msg = append(append(msg, t), b...)
	return f.forward(msg)
}

// drop discards a fixed-length message whose type byte has been read.
func (f *viewFilter) drop(rest int64) error {
	f.st.dropped++
	return f.discard(rest)
}

// setEncodings forwards SetEncodings without the pseudo-encodings that
// would change the client's message formats (see encQEMUExtendedKeyEvent).
func (f *viewFilter) setEncodings() error {
	hdr, err := f.read(3) // padding, count
	if err != nil {
		return err
	}
	count := int(binary.BigEndian.Uint16(hdr[1:]))
	if count > maxEncodings {
		return fmt.Errorf("%w: SetEncodings with %d encodings", errFilter, count)
	}
	list, err := f.read(4 * count)
	if err != nil {
		return err
	}
	kept := make([]byte, 0, 4*count)
	for i := 0; i < count; i++ {
		e := int32(binary.BigEndian.Uint32(list[4*i:]))
		if e == encQEMUExtendedKeyEvent || e == encExtendedMouseButtons {
			continue
		}
		kept = append(kept, list[4*i:4*i+4]...)
	}
	msg := make([]byte, 4, 4+len(kept))
	msg[0] = msgSetEncodings
	binary.BigEndian.PutUint16(msg[2:], uint16(len(kept)/4))
	return f.forward(append(msg, kept...))
}

// countingReader counts bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
