package liveview

import (
	"bytes"
	"testing"
)

// FuzzViewOnlyFilter feeds the view-only filter arbitrary client streams
// (a browser's websocket: anyone with a view link). Properties: it never
// panics or forwards more than it read, and what it forwards is a stream
// the filter itself passes unchanged, so it carries no key, pointer,
// clipboard, resize or power message and no forbidden encoding.
func FuzzViewOnlyFilter(f *testing.F) {
	hs := []byte("RFB 003.008\n\x01\x00")
	f.Add(hs)
	f.Add(append(append([]byte{}, hs...), msg(4, 1, uint16(0), uint32(0x61))...))
	f.Add(append(append([]byte{}, hs...), msg(2, 0, uint16(3), int32(7), int32(-258), int32(-316))...))
	f.Add(append(append([]byte{}, hs...), msg(6, 0, 0, 0, uint32(6), "secret")...))
	f.Add(append(append([]byte{}, hs...), msg(6, 0, 0, 0, int32(-8), []byte{0, 0, 0, 1, 9, 9, 9, 9})...))
	f.Add(append(append([]byte{}, hs...), msg(248, 0, 0, 0, uint32(0x80000000), 3, "abc")...))
	f.Add(append([]byte("RFB 003.003\n\x00"), msg(3, 1, uint16(0), uint16(0), uint16(640), uint16(480))...))
	f.Add([]byte("RFB 004.000\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		st, err := viewOnlyCopy(&out, bytes.NewReader(in))
		if st.out > int64(len(in)) || int64(out.Len()) != st.out {
			t.Fatalf("forwarded %d bytes (stats %d) of %d read", out.Len(), st.out, len(in))
		}
		if err != nil {
			return
		}
		var again bytes.Buffer
		if _, err := viewOnlyCopy(&again, bytes.NewReader(out.Bytes())); err != nil {
			t.Fatalf("the filter's own output does not pass it: %v", err)
		}
		if !bytes.Equal(again.Bytes(), out.Bytes()) {
			t.Fatalf("the filter's output is not a view-only stream:\nfirst  %v\nsecond %v", out.Bytes(), again.Bytes())
		}
	})
}
