// Package rfbtest is a small in-process RFB 3.8 server for tests: security
// type None, a fixed synthetic screen served with the Raw encoding, and a
// record of every client message it receives, so a test can check what a
// viewer's input turned into on the server side.
package rfbtest

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"image/color"
	"io"
	"net"
	"sync"
)

// Message is one client-to-server message as received, type byte included.
type Message struct {
	Type  byte
	Bytes []byte
}

// Key returns (down, keysym) of a KeyEvent message.
func (m Message) Key() (bool, uint32) {
	return m.Bytes[1] != 0, binary.BigEndian.Uint32(m.Bytes[4:])
}

// Pointer returns (buttons, x, y) of a PointerEvent message.
func (m Message) Pointer() (uint8, int, int) {
	return m.Bytes[1], int(binary.BigEndian.Uint16(m.Bytes[2:])), int(binary.BigEndian.Uint16(m.Bytes[4:]))
}

// Encodings returns the list of a SetEncodings message.
func (m Message) Encodings() []int32 {
	n := int(binary.BigEndian.Uint16(m.Bytes[2:]))
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(binary.BigEndian.Uint32(m.Bytes[4+4*i:]))
	}
	return out
}

// Server is a fake VNC server. Build it with New; every connection handed
// to Serve shares the screen and the message record.
type Server struct {
	Width, Height int
	Name          string
	// Pixel is the colour of each screen pixel. Set it before serving;
	// change the screen of a running server with SetScreen.
	Pixel func(x, y int) color.RGBA

	// mu guards msgs, conns, changed, Pixel (once serving), gen and
	// screen.
	mu      sync.Mutex
	msgs    []Message
	conns   int
	changed chan struct{}
	// gen counts SetScreen calls; screen is closed and replaced at each,
	// waking connections with an incremental request outstanding.
	gen    int
	screen chan struct{}
}

// SetScreen replaces the screen's contents. Clients waiting on an
// incremental update request get the whole screen as the damaged region
// (the fake does not track damage more finely than that).
func (s *Server) SetScreen(pixel func(x, y int) color.RGBA) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Pixel = pixel
	s.gen++
	close(s.screen)
	s.screen = make(chan struct{})
}

// snapshot returns the current screen, its generation and the channel
// closed at its next change.
func (s *Server) snapshot() (func(x, y int) color.RGBA, int, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Pixel, s.gen, s.screen
}

// New makes a server with a w×h screen of horizontal colour bands, so a
// screenshot of it is not one colour and each pixel is predictable.
func New(w, h int, name string) *Server {
	return &Server{
		Width: w, Height: h, Name: name,
		Pixel: func(x, y int) color.RGBA {
			return color.RGBA{R: uint8(x), G: uint8(y), B: uint8((x + y) / 2), A: 0xff}
		},
		changed: make(chan struct{}),
		screen:  make(chan struct{}),
	}
}

// Pipe serves one client over an in-memory connection and returns the
// client's end.
func (s *Server) Pipe() net.Conn {
	client, server := net.Pipe()
	go func() { _ = s.Serve(server) }()
	return client
}

// Messages returns a copy of every client message received so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Connections is how many clients have completed the handshake.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

// WaitFor waits until cond holds for the messages received so far.
func (s *Server) WaitFor(ctx context.Context, cond func([]Message) bool) ([]Message, error) {
	for {
		s.mu.Lock()
		msgs := append([]Message(nil), s.msgs...)
		ch := s.changed
		s.mu.Unlock()
		if cond(msgs) {
			return msgs, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return msgs, fmt.Errorf("waiting for client messages: %w", ctx.Err())
		}
	}
}

func (s *Server) record(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, m)
	close(s.changed)
	s.changed = make(chan struct{})
}

// errClient is a client that broke the protocol.
var errClient = errors.New("rfbtest: client protocol error")

// Serve runs one client session on conn until it ends, then closes conn.
func (s *Server) Serve(conn net.Conn) error {
	defer conn.Close()
	br := bufio.NewReader(conn)
	if _, err := io.WriteString(conn, "RFB 003.008\n"); err != nil {
		return err
	}
	ver := make([]byte, 12)
	if _, err := io.ReadFull(br, ver); err != nil {
		return err
	}
	if string(ver) != "RFB 003.008\n" {
		return fmt.Errorf("%w: version %q", errClient, ver)
	}
	if _, err := conn.Write([]byte{1, 1}); err != nil { // one type: None
		return err
	}
	st, err := br.ReadByte()
	if err != nil {
		return err
	}
	if st != 1 {
		return fmt.Errorf("%w: security type %d", errClient, st)
	}
	if _, err := conn.Write([]byte{0, 0, 0, 0}); err != nil { // SecurityResult OK
		return err
	}
	if _, err := br.ReadByte(); err != nil { // ClientInit
		return err
	}
	si := make([]byte, 24, 24+len(s.Name))
	binary.BigEndian.PutUint16(si[0:], uint16(s.Width))
	binary.BigEndian.PutUint16(si[2:], uint16(s.Height))
	// 32 bpp, depth 24, little endian, true colour, 255 max, shifts 16/8/0.
	copy(si[4:], []byte{32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0})
	binary.BigEndian.PutUint32(si[20:], uint32(len(s.Name)))
	if _, err := conn.Write(append(si, s.Name...)); err != nil {
		return err
	}
	s.mu.Lock()
	s.conns++
	s.mu.Unlock()

	// wmu serializes writes to conn and guards format and sent (the
	// generation of the screen last sent in full).
	var wmu sync.Mutex
	format := [16]byte(si[4:20])
	_, sent, _ := s.snapshot()
	// An incremental request waits for the next SetScreen in its own
	// goroutine, as a real server waits for damage while reading input.
	incremental := make(chan []byte, 1)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			var req []byte
			select {
			case req = <-incremental:
			case <-done:
				return
			}
			for {
				pixel, gen, next := s.snapshot()
				wmu.Lock()
				if gen != sent {
					sent = gen
					err := s.sendUpdate(conn, format, req, pixel)
					wmu.Unlock()
					if err != nil {
						_ = conn.Close()
						return
					}
					break
				}
				wmu.Unlock()
				select {
				case <-next:
				case <-done:
					return
				}
			}
		}
	}()
	for {
		m, err := readMessage(br)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		s.record(m)
		switch m.Type {
		case 0:
			wmu.Lock()
			copy(format[:], m.Bytes[4:20])
			wmu.Unlock()
		case 3:
			if m.Bytes[1] != 0 {
				// Incremental: answered when the screen next changes. A
				// newer request replaces one still waiting.
				select {
				case <-incremental:
				default:
				}
				incremental <- m.Bytes
				continue
			}
			pixel, gen, _ := s.snapshot()
			wmu.Lock()
			sent = gen
			err := s.sendUpdate(conn, format, m.Bytes, pixel)
			wmu.Unlock()
			if err != nil {
				return err
			}
		}
	}
}

// readMessage reads one client message; it knows the RFC 6143 messages
// and nothing else, so a filter upstream that lets something odd through
// makes the session fail.
func readMessage(br *bufio.Reader) (Message, error) {
	t, err := br.ReadByte()
	if err != nil {
		return Message{}, err
	}
	var rest int
	switch t {
	case 0:
		rest = 19
	case 2:
		hdr := make([]byte, 3)
		if _, err := io.ReadFull(br, hdr); err != nil {
			return Message{}, err
		}
		body := make([]byte, 4*int(binary.BigEndian.Uint16(hdr[1:])))
		if _, err := io.ReadFull(br, body); err != nil {
			return Message{}, err
		}
		return Message{Type: t, Bytes: append(append([]byte{t}, hdr...), body...)}, nil
	case 3:
		rest = 9
	case 4:
		rest = 7
	case 5:
		rest = 5
	case 6:
		hdr := make([]byte, 7)
		if _, err := io.ReadFull(br, hdr); err != nil {
			return Message{}, err
		}
		n := binary.BigEndian.Uint32(hdr[3:])
		if n > 1<<20 {
			return Message{}, fmt.Errorf("%w: cut text of %d bytes", errClient, n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(br, body); err != nil {
			return Message{}, err
		}
		return Message{Type: t, Bytes: append(append([]byte{t}, hdr...), body...)}, nil
	default:
		return Message{}, fmt.Errorf("%w: message type %d", errClient, t)
	}
	b := make([]byte, 1+rest)
	b[0] = t
	if _, err := io.ReadFull(br, b[1:]); err != nil {
		return Message{}, err
	}
	return Message{Type: t, Bytes: b}, nil
}

// sendUpdate answers a FramebufferUpdateRequest with one Raw rectangle in
// the client's pixel format (32 bpp true colour only).
func (s *Server) sendUpdate(w io.Writer, pf [16]byte, req []byte, pixel func(x, y int) color.RGBA) error {
	if pf[0] != 32 || pf[3] == 0 {
		return fmt.Errorf("%w: pixel format %v (only 32 bpp true colour)", errClient, pf)
	}
	bigEndian := pf[2] != 0
	rmax, gmax, bmax := binary.BigEndian.Uint16(pf[4:]), binary.BigEndian.Uint16(pf[6:]), binary.BigEndian.Uint16(pf[8:])
	rs, gs, bs := pf[10], pf[11], pf[12]
	x := int(binary.BigEndian.Uint16(req[2:]))
	y := int(binary.BigEndian.Uint16(req[4:]))
	rw := min(int(binary.BigEndian.Uint16(req[6:])), s.Width-x)
	rh := min(int(binary.BigEndian.Uint16(req[8:])), s.Height-y)
	if rw <= 0 || rh <= 0 {
		return nil
	}
	buf := make([]byte, 4+12, 16+4*rw*rh)
	binary.BigEndian.PutUint16(buf[2:], 1)
	binary.BigEndian.PutUint16(buf[4:], uint16(x))
	binary.BigEndian.PutUint16(buf[6:], uint16(y))
	binary.BigEndian.PutUint16(buf[8:], uint16(rw))
	binary.BigEndian.PutUint16(buf[10:], uint16(rh))
	// encoding 0 (Raw) is already zero.
	var px [4]byte
	for j := y; j < y+rh; j++ {
		for i := x; i < x+rw; i++ {
			c := pixel(i, j)
			v := uint32(c.R)*uint32(rmax)/255<<rs | uint32(c.G)*uint32(gmax)/255<<gs | uint32(c.B)*uint32(bmax)/255<<bs
			if bigEndian {
				binary.BigEndian.PutUint32(px[:], v)
			} else {
				binary.LittleEndian.PutUint32(px[:], v)
			}
			buf = append(buf, px[:]...)
		}
	}
	_, err := w.Write(buf)
	return err
}
