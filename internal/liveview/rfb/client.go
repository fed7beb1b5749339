// Package rfb is a small RFB 3.8 (VNC) client: enough to drive a remote
// desktop with keys and the pointer and to take a screenshot with the Raw
// encoding. Tests use it to operate the browser VM through the live view
// exactly as noVNC does; it also works as a tool against any VNC server
// that offers security type None.
package rfb

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"io"
	"net"
	"sync"
	"time"
)

// X keysyms for the keys Type and callers need by name.
const (
	KeyReturn    uint32 = 0xff0d
	KeyTab       uint32 = 0xff09
	KeyBackSpace uint32 = 0xff08
	KeyEscape    uint32 = 0xff1b
	KeyShiftL    uint32 = 0xffe1
	KeyControlL  uint32 = 0xffe3
	KeyLeft      uint32 = 0xff51
	KeyUp        uint32 = 0xff52
	KeyRight     uint32 = 0xff53
	KeyDown      uint32 = 0xff54
)

// Pointer button masks.
const (
	ButtonLeft   uint8 = 1 << 0
	ButtonMiddle uint8 = 1 << 1
	ButtonRight  uint8 = 1 << 2
)

// PixelFormat is the RFB PIXEL_FORMAT structure.
type PixelFormat struct {
	BitsPerPixel, Depth             uint8
	BigEndian, TrueColour           bool
	RedMax, GreenMax, BlueMax       uint16
	RedShift, GreenShift, BlueShift uint8
}

func (p PixelFormat) marshal() []byte {
	b := make([]byte, 16)
	b[0], b[1] = p.BitsPerPixel, p.Depth
	if p.BigEndian {
		b[2] = 1
	}
	if p.TrueColour {
		b[3] = 1
	}
	binary.BigEndian.PutUint16(b[4:], p.RedMax)
	binary.BigEndian.PutUint16(b[6:], p.GreenMax)
	binary.BigEndian.PutUint16(b[8:], p.BlueMax)
	b[10], b[11], b[12] = p.RedShift, p.GreenShift, p.BlueShift
	return b
}

func parsePixelFormat(b []byte) PixelFormat {
	return PixelFormat{
		BitsPerPixel: b[0], Depth: b[1], BigEndian: b[2] != 0, TrueColour: b[3] != 0,
		RedMax: binary.BigEndian.Uint16(b[4:]), GreenMax: binary.BigEndian.Uint16(b[6:]), BlueMax: binary.BigEndian.Uint16(b[8:]),
		RedShift: b[10], GreenShift: b[11], BlueShift: b[12],
	}
}

// screenshotFormat is what the client asks for before reading pixels:
// 32-bit little-endian true colour, 8 bits a channel, so a Raw pixel is
// B, G, R, X in memory.
var screenshotFormat = PixelFormat{
	BitsPerPixel: 32, Depth: 24, TrueColour: true,
	RedMax: 255, GreenMax: 255, BlueMax: 255,
	RedShift: 16, GreenShift: 8, BlueShift: 0,
}

// Client is one RFB connection after the handshake.
type Client struct {
	conn net.Conn

	// Width, Height, Name and Format are what the server announced in
	// ServerInit.
	Width, Height int
	Name          string
	Format        PixelFormat

	// KeyDelay is a pause Type makes after each character, for remote
	// applications too slow to keep up with a burst of key events (a
	// browser's address bar under emulation drops early keys of a burst).
	KeyDelay time.Duration

	// wmu serializes writes, so messages from concurrent callers never
	// interleave on the wire.
	wmu sync.Mutex
	// rmu guards br, formatSet and the reading of server messages (only
	// Screenshot reads after the handshake).
	rmu       sync.Mutex
	br        *bufio.Reader
	formatSet bool
}

// ErrUnsupported is returned for servers or messages outside what this
// client implements.
var ErrUnsupported = errors.New("rfb: unsupported")

// Handshake runs the RFB handshake on conn (protocol 3.8, 3.7 or 3.3,
// security type None, shared session) and reads ServerInit. The client owns
// conn from then on; Close closes it.
func Handshake(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{conn: conn, br: bufio.NewReaderSize(conn, 64<<10)}
	err := c.io(ctx, func() error { return c.handshake() })
	if err != nil {
		return nil, fmt.Errorf("rfb handshake: %w", err)
	}
	return c, nil
}

func (c *Client) handshake() error {
	var ver [12]byte
	if _, err := io.ReadFull(c.br, ver[:]); err != nil {
		return fmt.Errorf("read protocol version: %w", err)
	}
	var major, minor int
	if _, err := fmt.Sscanf(string(ver[:]), "RFB %03d.%03d\n", &major, &minor); err != nil || major != 3 || minor < 3 {
		return fmt.Errorf("%w: server protocol version %q", ErrUnsupported, ver[:])
	}
	switch {
	case minor >= 8:
		minor = 8
	case minor == 7:
	default:
		minor = 3
	}
	if _, err := fmt.Fprintf(c.conn, "RFB 003.%03d\n", minor); err != nil {
		return fmt.Errorf("write protocol version: %w", err)
	}
	if minor == 3 {
		// The server decides the security type in 3.3.
		var t [4]byte
		if _, err := io.ReadFull(c.br, t[:]); err != nil {
			return fmt.Errorf("read security type: %w", err)
		}
		switch st := binary.BigEndian.Uint32(t[:]); st {
		case 0:
			return c.failureReason("server refused the connection")
		case 1:
		default:
			return fmt.Errorf("%w: server requires security type %d (only None is supported)", ErrUnsupported, st)
		}
	} else {
		n, err := c.br.ReadByte()
		if err != nil {
			return fmt.Errorf("read security types: %w", err)
		}
		if n == 0 {
			return c.failureReason("server refused the connection")
		}
		types := make([]byte, n)
		if _, err := io.ReadFull(c.br, types); err != nil {
			return fmt.Errorf("read security types: %w", err)
		}
		found := false
		for _, t := range types {
			found = found || t == 1
		}
		if !found {
			return fmt.Errorf("%w: server offers security types %v, not None (1)", ErrUnsupported, types)
		}
		if _, err := c.conn.Write([]byte{1}); err != nil {
			return fmt.Errorf("write security type: %w", err)
		}
		if minor == 8 {
			var res [4]byte
			if _, err := io.ReadFull(c.br, res[:]); err != nil {
				return fmt.Errorf("read security result: %w", err)
			}
			if binary.BigEndian.Uint32(res[:]) != 0 {
				return c.failureReason("security handshake failed")
			}
		}
	}
	// ClientInit: shared, so other viewers stay connected.
	if _, err := c.conn.Write([]byte{1}); err != nil {
		return fmt.Errorf("write client init: %w", err)
	}
	var si [24]byte
	if _, err := io.ReadFull(c.br, si[:]); err != nil {
		return fmt.Errorf("read server init: %w", err)
	}
	c.Width = int(binary.BigEndian.Uint16(si[0:]))
	c.Height = int(binary.BigEndian.Uint16(si[2:]))
	c.Format = parsePixelFormat(si[4:20])
	nameLen := binary.BigEndian.Uint32(si[20:])
	if nameLen > 1<<16 {
		return fmt.Errorf("%w: desktop name of %d bytes", ErrUnsupported, nameLen)
	}
	name := make([]byte, nameLen)
	if _, err := io.ReadFull(c.br, name); err != nil {
		return fmt.Errorf("read desktop name: %w", err)
	}
	c.Name = string(name)
	return nil
}

// failureReason reads the reason string that follows a refusal.
func (c *Client) failureReason(what string) error {
	var l [4]byte
	if _, err := io.ReadFull(c.br, l[:]); err != nil {
		return errors.New(what)
	}
	n := binary.BigEndian.Uint32(l[:])
	if n > 4096 {
		return errors.New(what)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(c.br, msg); err != nil {
		return errors.New(what)
	}
	return fmt.Errorf("%s: %s", what, msg)
}

// io runs fn with the connection's deadline following ctx: its deadline,
// and an immediate deadline when ctx is cancelled.
func (c *Client) io(ctx context.Context, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dl, _ := ctx.Deadline()
	_ = c.conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
	err := fn()
	if !stop() {
		// ctx ended while fn ran; its error explains the failure better
		// than an i/o timeout.
		if err != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
	}
	_ = c.conn.SetDeadline(time.Time{})
	return err
}

// write sends one whole message.
func (c *Client) write(ctx context.Context, msg []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.io(ctx, func() error {
		if _, err := c.conn.Write(msg); err != nil {
			return fmt.Errorf("rfb write: %w", err)
		}
		return nil
	})
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// KeyEvent presses (down) or releases a key given as an X keysym.
func (c *Client) KeyEvent(ctx context.Context, down bool, keysym uint32) error {
	msg := make([]byte, 8)
	msg[0] = 4
	if down {
		msg[1] = 1
	}
	binary.BigEndian.PutUint32(msg[4:], keysym)
	return c.write(ctx, msg)
}

// Key presses and releases one key, e.g. KeyReturn or KeyTab.
func (c *Client) Key(ctx context.Context, keysym uint32) error {
	if err := c.KeyEvent(ctx, true, keysym); err != nil {
		return err
	}
	return c.KeyEvent(ctx, false, keysym)
}

// Type types text as key presses on a US layout: Shift_L is held around
// upper-case letters and shifted symbols; '\n' is Return, '\t' Tab, '\b'
// BackSpace; other characters use their Unicode keysyms.
func (c *Client) Type(ctx context.Context, text string) error {
	for _, r := range text {
		sym, shift := KeysymFor(r)
		if shift {
			if err := c.KeyEvent(ctx, true, KeyShiftL); err != nil {
				return err
			}
		}
		if err := c.Key(ctx, sym); err != nil {
			return err
		}
		if shift {
			if err := c.KeyEvent(ctx, false, KeyShiftL); err != nil {
				return err
			}
		}
		if c.KeyDelay > 0 {
			select {
			case <-time.After(c.KeyDelay):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}

// shifted are the US-layout characters typed with Shift.
const shifted = `~!@#$%^&*()_+{}|:"<>?`

// KeysymFor is the X keysym that types r, and whether Shift must be held
// for it on a US keyboard layout.
func KeysymFor(r rune) (keysym uint32, shift bool) {
	switch {
	case r == '\n' || r == '\r':
		return KeyReturn, false
	case r == '\t':
		return KeyTab, false
	case r == '\b':
		return KeyBackSpace, false
	case r >= 'A' && r <= 'Z':
		return uint32(r), true
	case r >= 0x20 && r <= 0x7e:
		for _, s := range shifted {
			if r == s {
				return uint32(r), true
			}
		}
		return uint32(r), false
	case r >= 0xa0 && r <= 0xff:
		// Latin-1 keysyms equal their code points.
		return uint32(r), false
	default:
		// X11 maps the rest of Unicode at 0x01000000 + code point.
		return 0x01000000 | uint32(r), false
	}
}

// Pointer moves the pointer to (x, y) with the given buttons held.
func (c *Client) Pointer(ctx context.Context, x, y int, buttons uint8) error {
	msg := make([]byte, 6)
	msg[0] = 5
	msg[1] = buttons
	binary.BigEndian.PutUint16(msg[2:], clampU16(x))
	binary.BigEndian.PutUint16(msg[4:], clampU16(y))
	return c.write(ctx, msg)
}

// Click moves to (x, y), presses and releases the left button.
func (c *Client) Click(ctx context.Context, x, y int) error {
	for _, b := range []uint8{0, ButtonLeft, 0} {
		if err := c.Pointer(ctx, x, y, b); err != nil {
			return err
		}
	}
	return nil
}

// CutText sends text as the client's clipboard (Latin-1, per RFB).
func (c *Client) CutText(ctx context.Context, text string) error {
	msg := make([]byte, 8, 8+len(text))
	msg[0] = 6
	binary.BigEndian.PutUint32(msg[4:], uint32(len(text)))
	return c.write(ctx, append(msg, text...))
}

// SetPixelFormat asks the server to send pixels in format p.
func (c *Client) SetPixelFormat(ctx context.Context, p PixelFormat) error {
	msg := make([]byte, 4, 20)
	return c.write(ctx, append(msg, p.marshal()...))
}

// SetEncodings tells the server which encodings the client accepts, in
// order of preference.
func (c *Client) SetEncodings(ctx context.Context, encodings ...int32) error {
	msg := make([]byte, 4+4*len(encodings))
	msg[0] = 2
	binary.BigEndian.PutUint16(msg[2:], uint16(len(encodings)))
	for i, e := range encodings {
		binary.BigEndian.PutUint32(msg[4+4*i:], uint32(e))
	}
	return c.write(ctx, msg)
}

// FramebufferUpdateRequest asks for the pixels of a rectangle; incremental
// asks only for what changed since the last update.
func (c *Client) FramebufferUpdateRequest(ctx context.Context, incremental bool, x, y, w, h int) error {
	msg := make([]byte, 10)
	msg[0] = 3
	if incremental {
		msg[1] = 1
	}
	binary.BigEndian.PutUint16(msg[2:], clampU16(x))
	binary.BigEndian.PutUint16(msg[4:], clampU16(y))
	binary.BigEndian.PutUint16(msg[6:], clampU16(w))
	binary.BigEndian.PutUint16(msg[8:], clampU16(h))
	return c.write(ctx, msg)
}

func clampU16(v int) uint16 {
	if v < 0 {
		return 0
	}
	if v > 0xffff {
		return 0xffff
	}
	return uint16(v)
}

// setRaw switches the connection to 32-bit true colour and Raw only, once.
// rmu must be held.
func (c *Client) setRaw(ctx context.Context) error {
	if c.formatSet {
		return nil
	}
	if err := c.SetPixelFormat(ctx, screenshotFormat); err != nil {
		return err
	}
	if err := c.SetEncodings(ctx, 0); err != nil {
		return err
	}
	c.formatSet = true
	return nil
}

// ReadUpdate asks for the screen (only what changed since the last update
// when incremental) and draws the next FramebufferUpdate into img, which
// must be Width×Height; it returns the damaged rectangles. An incremental
// request is answered only when something changes, so ReadUpdate blocks
// until then or until ctx ends: a static screen costs no traffic. This is
// what the host-side WebRTC encoder keeps its copy of the screen with.
func (c *Client) ReadUpdate(ctx context.Context, img *image.RGBA, incremental bool) ([]image.Rectangle, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if err := c.setRaw(ctx); err != nil {
		return nil, err
	}
	if img.Rect != image.Rect(0, 0, c.Width, c.Height) {
		return nil, fmt.Errorf("rfb: image %v for a %dx%d screen", img.Rect, c.Width, c.Height)
	}
	if err := c.FramebufferUpdateRequest(ctx, incremental, 0, 0, c.Width, c.Height); err != nil {
		return nil, err
	}
	var rects []image.Rectangle
	err := c.io(ctx, func() error {
		for {
			t, err := c.br.Peek(1)
			if err != nil {
				return err
			}
			if t[0] != 0 {
				// Bell, cut text, colour map: not pixels.
				if _, err := c.readServerMessage(img, nil); err != nil {
					return err
				}
				continue
			}
			var hdr [4]byte
			if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
				return err
			}
			n := int(binary.BigEndian.Uint16(hdr[2:]))
			for range n {
				_, r, err := c.readRect(img, nil)
				if err != nil {
					return err
				}
				rects = append(rects, r)
			}
			return nil
		}
	})
	if err != nil {
		return nil, fmt.Errorf("rfb update: %w", err)
	}
	return rects, nil
}

// Screenshot asks for the whole screen (non-incremental, Raw encoding) and
// reads updates until every pixel has arrived. The first call switches the
// connection to 32-bit true colour and Raw only.
func (c *Client) Screenshot(ctx context.Context) (*image.RGBA, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if err := c.setRaw(ctx); err != nil {
		return nil, err
	}
	if err := c.FramebufferUpdateRequest(ctx, false, 0, 0, c.Width, c.Height); err != nil {
		return nil, err
	}
	img := image.NewRGBA(image.Rect(0, 0, c.Width, c.Height))
	covered := make([]bool, c.Width*c.Height)
	remaining := c.Width * c.Height
	err := c.io(ctx, func() error {
		for remaining > 0 {
			n, err := c.readServerMessage(img, covered)
			if err != nil {
				return err
			}
			remaining -= n
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rfb screenshot: %w", err)
	}
	return img, nil
}

// readServerMessage reads one server message, draws any Raw rectangles
// into img and returns how many pixels were covered for the first time.
func (c *Client) readServerMessage(img *image.RGBA, covered []bool) (int, error) {
	t, err := c.br.ReadByte()
	if err != nil {
		return 0, err
	}
	switch t {
	case 0: // FramebufferUpdate
		var hdr [3]byte
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return 0, err
		}
		nrects := int(binary.BigEndian.Uint16(hdr[1:]))
		fresh := 0
		for i := 0; i < nrects; i++ {
			n, _, err := c.readRect(img, covered)
			if err != nil {
				return fresh, err
			}
			fresh += n
		}
		return fresh, nil
	case 1: // SetColourMapEntries
		var hdr [5]byte
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return 0, err
		}
		_, err := c.br.Discard(6 * int(binary.BigEndian.Uint16(hdr[3:])))
		return 0, err
	case 2: // Bell
		return 0, nil
	case 3: // ServerCutText
		var hdr [7]byte
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return 0, err
		}
		n := int64(int32(binary.BigEndian.Uint32(hdr[3:])))
		if n < 0 {
			n = -n
		}
		_, err := io.CopyN(io.Discard, c.br, n)
		return 0, err
	default:
		return 0, fmt.Errorf("%w: server message type %d", ErrUnsupported, t)
	}
}

// readRect reads one Raw rectangle into img. covered, when not nil, marks
// the pixels seen so far (Screenshot's bookkeeping).
func (c *Client) readRect(img *image.RGBA, covered []bool) (int, image.Rectangle, error) {
	var hdr [12]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		return 0, image.Rectangle{}, err
	}
	x := int(binary.BigEndian.Uint16(hdr[0:]))
	y := int(binary.BigEndian.Uint16(hdr[2:]))
	w := int(binary.BigEndian.Uint16(hdr[4:]))
	h := int(binary.BigEndian.Uint16(hdr[6:]))
	enc := int32(binary.BigEndian.Uint32(hdr[8:]))
	r := image.Rect(x, y, x+w, y+h)
	if enc != 0 {
		return 0, r, fmt.Errorf("%w: rectangle encoding %d (asked for Raw only)", ErrUnsupported, enc)
	}
	if x+w > c.Width || y+h > c.Height {
		return 0, r, fmt.Errorf("rfb: rectangle %dx%d+%d+%d outside the %dx%d screen", w, h, x, y, c.Width, c.Height)
	}
	row := make([]byte, 4*w)
	fresh := 0
	for j := 0; j < h; j++ {
		if _, err := io.ReadFull(c.br, row); err != nil {
			return fresh, r, err
		}
		off := img.PixOffset(x, y+j)
		for i := 0; i < w; i++ {
			// Little-endian 0x00RRGGBB: B, G, R, X.
			p := img.Pix[off+4*i : off+4*i+4 : off+4*i+4]
			p[0], p[1], p[2], p[3] = row[4*i+2], row[4*i+1], row[4*i], 0xff
			if covered == nil {
				continue
			}
			k := (y+j)*c.Width + x + i
			if !covered[k] {
				covered[k] = true
				fresh++
			}
		}
	}
	return fresh, r, nil
}
