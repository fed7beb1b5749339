package proto

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzReadFrame: exec frames come from the guest. Whatever the bytes, a
// frame is never larger than MaxFramePayload, and a frame read back is the
// frame that was written.
func FuzzReadFrame(f *testing.F) {
	var seed bytes.Buffer
	_ = WriteFrame(&seed, FrameStdout, []byte("hello"))
	_ = WriteFrame(&seed, FrameExit, []byte(`{"exit_code":0}`))
	f.Add(seed.Bytes())
	f.Add([]byte{FrameStdout, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{FrameStderr, 0, 0, 0, 3, 'a'})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for {
			typ, p, err := ReadFrame(r)
			if err != nil {
				return
			}
			if len(p) > MaxFramePayload {
				t.Fatalf("frame of %d bytes", len(p))
			}
			var w bytes.Buffer
			if err := WriteFrame(&w, typ, p); err != nil {
				t.Fatal(err)
			}
			typ2, p2, err := ReadFrame(&w)
			if err != nil || typ2 != typ || !bytes.Equal(p2, p) {
				t.Fatalf("frame does not round-trip: %v", err)
			}
		}
	})
}

// FuzzServerHandshake: the agent's side of the handshake reads whatever
// sits in a virtio-serial port (stale yamux bytes, a hostile host
// process). It must neither panic nor hold more than a bounded line, and a
// START it accepts is answered with READY for the same nonce.
func FuzzServerHandshake(f *testing.F) {
	f.Add([]byte(handshakeMagic + "HELLO abc\n" + handshakeMagic + "START abc 1700000000000000000\n"))
	f.Add([]byte("\x00\x01junk" + handshakeMagic + "START n\n"))
	f.Add([]byte(strings.Repeat("x", 5000) + handshakeMagic + "START n 12\n"))
	f.Add([]byte(handshakeMagic + "START n notanumber\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var w bytes.Buffer
		_, err := ServerHandshake(bufio.NewReaderSize(bytes.NewReader(in), 4096), &w, "v")
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		lines := strings.Split(strings.TrimSuffix(w.String(), "\n"), "\n")
		last := lines[len(lines)-1]
		if !strings.HasPrefix(last, handshakeMagic+"READY ") {
			t.Fatalf("accepted handshake not answered with READY: %q", last)
		}
	})
}

// FuzzReadMarkedLine: the host's side scans the guest's bytes for marked
// lines. A line is found only when it carries the magic, and the junk
// before it never grows the kept buffer past maxLine.
func FuzzReadMarkedLine(f *testing.F) {
	f.Add([]byte(handshakeMagic + "OK nonce v1\n"))
	f.Add([]byte(strings.Repeat("\xff", 9000) + handshakeMagic + "READY n\n"))
	f.Add([]byte("no magic here\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 4096)
		for {
			fields, err := readMarkedLine(br)
			if err != nil {
				return
			}
			if !bytes.Contains(in, []byte(handshakeMagic)) {
				t.Fatalf("found a marked line %q in input without the magic", fields)
			}
		}
	})
}
