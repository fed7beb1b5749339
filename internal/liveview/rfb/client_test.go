package rfb_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/liveview/rfb"
	"github.com/hangar-vm/hangar/internal/liveview/rfbtest"
)

func connect(t *testing.T, srv *rfbtest.Server) *rfb.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := rfb.Handshake(ctx, srv.Pipe())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestHandshakeAndScreenshot(t *testing.T) {
	srv := rfbtest.New(300, 200, "fake desktop")
	c := connect(t, srv)
	if c.Width != 300 || c.Height != 200 || c.Name != "fake desktop" {
		t.Fatalf("server init: %dx%d %q", c.Width, c.Height, c.Name)
	}
	if c.Format.BitsPerPixel != 32 || !c.Format.TrueColour {
		t.Fatalf("server format %+v", c.Format)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for round := 0; round < 2; round++ {
		img, err := c.Screenshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if img.Bounds().Dx() != 300 || img.Bounds().Dy() != 200 {
			t.Fatalf("screenshot bounds %v", img.Bounds())
		}
		for _, p := range [][2]int{{0, 0}, {299, 199}, {17, 133}, {250, 3}} {
			got := img.RGBAAt(p[0], p[1])
			want := srv.Pixel(p[0], p[1])
			if got != want {
				t.Fatalf("round %d pixel %v = %v, want %v", round, p, got, want)
			}
		}
	}
	// The first screenshot switched to 32-bit true colour and Raw only.
	msgs := srv.Messages()
	if len(msgs) < 3 || msgs[0].Type != 0 || msgs[1].Type != 2 || msgs[2].Type != 3 {
		t.Fatalf("first messages %v", types(msgs))
	}
	if enc := msgs[1].Encodings(); len(enc) != 1 || enc[0] != 0 {
		t.Fatalf("encodings %v, want [0]", enc)
	}
}

func types(msgs []rfbtest.Message) []byte {
	var out []byte
	for _, m := range msgs {
		out = append(out, m.Type)
	}
	return out
}

type key struct {
	down bool
	sym  uint32
}

func keys(msgs []rfbtest.Message) []key {
	var out []key
	for _, m := range msgs {
		if m.Type == 4 {
			d, s := m.Key()
			out = append(out, key{d, s})
		}
	}
	return out
}

func TestTypeUsesShiftAndNamedKeys(t *testing.T) {
	srv := rfbtest.New(64, 64, "k")
	c := connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Type(ctx, "aZ1!\n"); err != nil {
		t.Fatal(err)
	}
	if err := c.Key(ctx, rfb.KeyTab); err != nil {
		t.Fatal(err)
	}
	const shift = 0xffe1
	want := []key{
		{true, 'a'}, {false, 'a'},
		{true, shift}, {true, 'Z'}, {false, 'Z'}, {false, shift},
		{true, '1'}, {false, '1'},
		{true, shift}, {true, '!'}, {false, '!'}, {false, shift},
		{true, 0xff0d}, {false, 0xff0d},
		{true, 0xff09}, {false, 0xff09},
	}
	msgs, err := srv.WaitFor(ctx, func(m []rfbtest.Message) bool { return len(keys(m)) >= len(want) })
	if err != nil {
		t.Fatal(err)
	}
	got := keys(msgs)
	if len(got) != len(want) {
		t.Fatalf("got %d key events, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("key event %d = %+v, want %+v (all: %v)", i, got[i], want[i], got)
		}
	}
}

func TestClickAndPointer(t *testing.T) {
	srv := rfbtest.New(640, 480, "p")
	c := connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Click(ctx, 320, 241); err != nil {
		t.Fatal(err)
	}
	if err := c.Pointer(ctx, 5, 6, rfb.ButtonRight); err != nil {
		t.Fatal(err)
	}
	msgs, err := srv.WaitFor(ctx, func(m []rfbtest.Message) bool { return len(m) >= 4 })
	if err != nil {
		t.Fatal(err)
	}
	want := [][3]int{{0, 320, 241}, {1, 320, 241}, {0, 320, 241}, {4, 5, 6}}
	for i, w := range want {
		if msgs[i].Type != 5 {
			t.Fatalf("message %d type %d, want 5", i, msgs[i].Type)
		}
		b, x, y := msgs[i].Pointer()
		if int(b) != w[0] || x != w[1] || y != w[2] {
			t.Fatalf("pointer %d = %d,%d,%d want %v", i, b, x, y, w)
		}
	}
}

func TestKeysymFor(t *testing.T) {
	cases := []struct {
		r     rune
		sym   uint32
		shift bool
	}{
		{'a', 0x61, false}, {'A', 0x41, true}, {'0', 0x30, false}, {' ', 0x20, false},
		{'@', 0x40, true}, {'_', 0x5f, true}, {'-', 0x2d, false}, {'"', 0x22, true},
		{'\'', 0x27, false}, {'?', 0x3f, true}, {'/', 0x2f, false}, {'~', 0x7e, true},
		{'\n', 0xff0d, false}, {'\t', 0xff09, false}, {'é', 0xe9, false}, {'€', 0x10020ac, false},
	}
	for _, c := range cases {
		sym, shift := rfb.KeysymFor(c.r)
		if sym != c.sym || shift != c.shift {
			t.Errorf("KeysymFor(%q) = %#x,%v want %#x,%v", c.r, sym, shift, c.sym, c.shift)
		}
	}
}

func TestHandshakeHonoursContext(t *testing.T) {
	// A server that never speaks: the handshake must give up with ctx.
	client, server := net.Pipe()
	defer server.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := rfb.Handshake(ctx, client)
	if err == nil {
		t.Fatal("handshake with a silent server succeeded")
	}
	if time.Since(start) > 3*time.Second {
		t.Fatalf("handshake took %v to give up", time.Since(start))
	}
}
