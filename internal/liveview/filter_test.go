package liveview

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"testing/iotest"
)

// msg builds a client message from its parts (bytes, uint16, uint32,
// int32 and []byte are written big-endian in order).
func msg(parts ...any) []byte {
	var b bytes.Buffer
	for _, p := range parts {
		switch v := p.(type) {
		case int:
			b.WriteByte(byte(v))
		case uint16:
			_ = binary.Write(&b, binary.BigEndian, v)
		case uint32, int32:
			_ = binary.Write(&b, binary.BigEndian, v)
		case []byte:
			b.Write(v)
		case string:
			b.WriteString(v)
		default:
			panic("msg: unsupported part")
		}
	}
	return b.Bytes()
}

func TestViewOnlyFilter(t *testing.T) {
	pixelFormat := msg(0, 0, 0, 0, []byte{32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0})
	encodings := msg(2, 0, uint16(5), int32(7), int32(0), int32(-258), int32(-316), int32(-223))
	encodingsKept := msg(2, 0, uint16(3), int32(7), int32(0), int32(-223))
	fbReq := msg(3, 1, uint16(0), uint16(0), uint16(1280), uint16(800))
	key := msg(4, 1, uint16(0), uint32(0x61))
	pointer := msg(5, 1, uint16(10), uint16(20))
	cut := msg(6, 0, 0, 0, uint32(6), "secret")
	extCut := msg(6, 0, 0, 0, int32(-8), []byte{0, 0, 0, 1, 9, 9, 9, 9})
	resize := msg(251, 0, uint16(800), uint16(600), 1, 0, uint32(0), uint16(0), uint16(0), uint16(800), uint16(600), uint32(0))
	xvp := msg(250, 0, 1, 2)
	fence := msg(248, 0, 0, 0, uint32(0x80000000), 3, "abc")
	contUpdates := msg(150, 1, uint16(0), uint16(0), uint16(1280), uint16(800))

	var in bytes.Buffer
	in.WriteString("RFB 003.008\n")
	in.WriteByte(1) // security None
	in.WriteByte(0) // ClientInit exclusive: must be forced to shared
	for _, m := range [][]byte{pixelFormat, encodings, key, fbReq, pointer, cut, extCut, resize, xvp, fence, contUpdates, key, fbReq} {
		in.Write(m)
	}
	var want bytes.Buffer
	want.WriteString("RFB 003.008\n")
	want.Write([]byte{1, 1})
	for _, m := range [][]byte{pixelFormat, encodingsKept, fbReq, fence, contUpdates, fbReq} {
		want.Write(m)
	}

	total := int64(in.Len())
	var out bytes.Buffer
	// One byte per read: every message is split across reads.
	st, err := viewOnlyCopy(&out, iotest.OneByteReader(&in))
	if err != nil {
		t.Fatalf("filter: %v", err)
	}
	if !bytes.Equal(out.Bytes(), want.Bytes()) {
		t.Fatalf("forwarded\n%v\nwant\n%v", out.Bytes(), want.Bytes())
	}
	if st.dropped != 7 || st.in != total || st.out != int64(want.Len()) {
		t.Fatalf("stats %+v (in %d, out %d)", st, total, want.Len())
	}
}

func TestViewOnlyFilterRFB33(t *testing.T) {
	// 3.3 has no client security byte: ClientInit follows the version.
	in := bytes.NewBuffer(nil)
	in.WriteString("RFB 003.003\n")
	in.WriteByte(1)
	in.Write(msg(4, 1, uint16(0), uint32(0x61)))
	in.Write(msg(3, 0, uint16(0), uint16(0), uint16(10), uint16(10)))
	var out bytes.Buffer
	if _, err := viewOnlyCopy(&out, in); err != nil {
		t.Fatal(err)
	}
	want := append([]byte("RFB 003.003\n\x01"), msg(3, 0, uint16(0), uint16(0), uint16(10), uint16(10))...)
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("forwarded %v want %v", out.Bytes(), want)
	}
}

func TestViewOnlyFilterRefuses(t *testing.T) {
	cases := map[string][]byte{
		"unknown message":        append([]byte("RFB 003.008\n\x01\x01"), 255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 30),
		"vnc auth":               []byte("RFB 003.008\n\x02"),
		"not rfb":                []byte("GET / HTTP/1.1\r\n"),
		"huge cut text":          append([]byte("RFB 003.008\n\x01\x01"), msg(6, 0, 0, 0, uint32(1<<30))...),
		"oversized fence":        append([]byte("RFB 003.008\n\x01\x01"), msg(248, 0, 0, 0, uint32(0), 200)...),
		"key after unknown type": append([]byte("RFB 003.008\n\x01\x01"), 7, 4, 1, 0, 0, 0, 0, 0, 0x61),
	}
	for name, in := range cases {
		var out bytes.Buffer
		_, err := viewOnlyCopy(&out, bytes.NewReader(in))
		if !errors.Is(err, errFilter) {
			t.Errorf("%s: err %v, want errFilter", name, err)
		}
		if bytes.Contains(out.Bytes(), []byte{4, 1}) {
			t.Errorf("%s: a key event got through: %v", name, out.Bytes())
		}
	}
}
