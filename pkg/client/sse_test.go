package client

import (
	"errors"
	"strings"
	"testing"
)

func parseAll(t *testing.T, stream string) []string {
	t.Helper()
	var got []string
	if err := readEventData(strings.NewReader(stream), func(d []byte) error { got = append(got, string(d)); return nil }); err != nil {
		t.Fatalf("readEventData(%q): %v", stream, err)
	}
	return got
}

// TestReadSSE pins the cases the old parser got wrong ("data:" without a
// space was dropped, multi-line data was glued together without "\n", a
// lone CR did not end a line) and the ones it got right.
func TestReadSSE(t *testing.T) {
	cases := []struct {
		name, stream string
		want         []string
	}{
		{"spaced", "id: 1\nevent: x\ndata: {\"a\":1}\n\n", []string{`{"a":1}`}},
		{"no space", "data:{\"a\":1}\n\n", []string{`{"a":1}`}},
		{"only one space stripped", "data:  x\n\n", []string{" x"}},
		{"multi-line", "data: {\"a\":\ndata: 1}\n\n", []string{"{\"a\":\n1}"}},
		{"crlf", "data: a\r\ndata: b\r\n\r\n", []string{"a\nb"}},
		{"lone cr", "data: a\rdata: b\r\r", []string{"a\nb"}},
		{"comments and keep-alives", ": hangar events\n\n: keep-alive\n\ndata: x\n\n", []string{"x"}},
		{"empty data field", "data\n\n", []string{""}},
		{"other fields skipped", "retry: 10\nid: 5\ndatax: no\ndata: yes\n\n", []string{"yes"}},
		{"unfinished event dropped", "data: a\n\ndata: b\n", []string{"a"}},
		{"two events", "data: a\n\ndata: b\n\n", []string{"a", "b"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := parseAll(t, c.stream)
			if strings.Join(got, "|") != strings.Join(c.want, "|") || len(got) != len(c.want) {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
	stop := errors.New("stop")
	if err := readEventData(strings.NewReader("data: a\n\ndata: b\n\n"), func([]byte) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("callback error = %v, want it returned", err)
	}
}

// FuzzReadSSE: any event data (split into lines the way a server must
// send it) parses back to itself, whatever line ends the server used; and
// no input makes the parser panic.
func FuzzReadSSE(f *testing.F) {
	f.Add("x", uint8(0))
	f.Add("{\"a\":1}\n{\"b\":2}", uint8(1))
	f.Add("", uint8(2))
	f.Add(" leading space", uint8(0))
	f.Add("a\r\nb\rc", uint8(1))
	f.Fuzz(func(t *testing.T, data string, ends uint8) {
		eol := []string{"\n", "\r\n", "\r"}[int(ends)%3]
		// Data lines cannot carry line ends; normalise the way a writer
		// splitting on them would.
		norm := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(data)
		var b strings.Builder
		b.WriteString(": comment" + eol)
		for _, l := range strings.Split(norm, "\n") {
			b.WriteString("data: " + l + eol)
		}
		b.WriteString(eol)
		got := parseAll(t, b.String())
		if len(got) != 1 || got[0] != norm {
			t.Fatalf("data %q came back as %q", norm, got)
		}
		// Arbitrary bytes: no panic, no error but the callback's.
		_ = readEventData(strings.NewReader(data), func([]byte) error { return nil })
	})
}

// TestReadSSEFields: id persists across events, event resets after each,
// the prompt stream's shape comes through whole.
func TestReadSSEFields(t *testing.T) {
	stream := ": hangar prompt events\n\nid: 1\nevent: started\ndata: {\"a\":1}\n\nid:2\nevent:output\ndata:x\ndata:y\n\ndata: no-id-change\n\n"
	var got []sseMessage
	if err := readSSE(strings.NewReader(stream), func(m sseMessage) error { got = append(got, m); return nil }); err != nil {
		t.Fatal(err)
	}
	want := []sseMessage{{"1", "started", `{"a":1}`}, {"2", "output", "x\ny"}, {"2", "", "no-id-change"}}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}
