package proto

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestKernelArgsRoundTrip(t *testing.T) {
	tok, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	p := Params{Token: tok, Upper: "/dev/vdb", Hostname: "vm-42", Link: LinkVsock, Debug: true}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	cmdline := "console=ttyS0 root=/dev/vda ro init=/usr/sbin/hangar-agent " + KernelArgs(p) + " panic=1"
	got, err := ParseKernelArgs(cmdline)
	if err != nil {
		t.Fatal(err)
	}
	if got != p {
		t.Fatalf("round trip: got %+v want %+v", got, p)
	}
	def, err := ParseKernelArgs("hangar.token=" + tok)
	if err != nil || def.Upper != UpperTmpfs || def.Link != LinkVirtioSerial || def.Hostname != "hangar" {
		t.Fatalf("defaults %+v %v", def, err)
	}
}

func TestKernelArgsRejectUnsafe(t *testing.T) {
	good := strings.Repeat("a", 32)
	for _, p := range []Params{
		{Token: "short"},
		{Token: good + " init=/bin/sh"},
		{Token: good, Hostname: "bad host"},
		{Token: good, Upper: "/dev/vdb rw"},
		{Token: good, Link: "tcp"},
	} {
		err := p.Validate()
		if err == nil {
			t.Errorf("%+v accepted", p)
			continue
		}
		if strings.Contains(err.Error(), good) {
			t.Errorf("error leaks the token: %v", err)
		}
	}
	if _, err := ParseKernelArgs("root=/dev/vda"); err == nil {
		t.Error("missing token accepted")
	}
}

// TestHandshakeSkipsJunk: stale bytes (an old yamux session's frames) in
// both directions and a swallowed first HELLO do not stop the handshake,
// and both sides end exactly at the start of the next protocol.
func TestHandshakeSkipsJunk(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	hostTime := time.Unix(1_900_000_000, 123)
	type res struct {
		r   HandshakeResult
		tag string
		err error
	}
	done := make(chan res, 1)
	go func() {
		gbr := bufio.NewReader(guest)
		// Swallow the first HELLO, like a dying yamux session would.
		if _, err := gbr.ReadString('\n'); err != nil {
			done <- res{err: err}
			return
		}
		if _, err := guest.Write(bytes.Repeat([]byte{0, 1, 2, 0xff}, 3000)); err != nil {
			done <- res{err: err}
			return
		}
		r, err := ServerHandshake(gbr, guest, "v9")
		if err != nil {
			done <- res{err: err}
			return
		}
		go func() { _, _ = guest.Write([]byte("after-ready")) }()
		tag := make([]byte, len("after-start"))
		_, err = io.ReadFull(gbr, tag)
		done <- res{r: r, tag: string(tag), err: err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	br, v, err := ClientHandshake(ctx, host, func() time.Time { return hostTime })
	if err != nil {
		t.Fatal(err)
	}
	if v != "v9" {
		t.Fatalf("version %q", v)
	}
	go func() { _, _ = host.Write([]byte("after-start")) }()
	tag := make([]byte, len("after-ready"))
	if _, err := io.ReadFull(br, tag); err != nil || string(tag) != "after-ready" {
		t.Fatalf("host stream after READY: %q %v", tag, err)
	}
	r := <-done
	if r.err != nil || r.tag != "after-start" || !r.r.HostTime.Equal(hostTime) {
		t.Fatalf("guest: %+v", r)
	}
}

func TestFramesAndDuration(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteFrame(&buf, FrameStdout, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if err := WriteFrame(&buf, FrameStdinEOF, nil); err != nil {
		t.Fatal(err)
	}
	typ, p, err := ReadFrame(&buf)
	if err != nil || typ != FrameStdout || string(p) != "hi" {
		t.Fatalf("%d %q %v", typ, p, err)
	}
	typ, p, err = ReadFrame(&buf)
	if err != nil || typ != FrameStdinEOF || len(p) != 0 {
		t.Fatalf("%d %q %v", typ, p, err)
	}
	if _, _, err := ReadFrame(bytes.NewReader([]byte{1, 0xff, 0xff, 0xff, 0xff})); err == nil {
		t.Fatal("oversized frame accepted")
	}
	var r ExecRequest
	if err := json.Unmarshal([]byte(`{"argv":["x"],"timeout":1.5}`), &r); err != nil || time.Duration(r.Timeout) != 1500*time.Millisecond {
		t.Fatalf("numeric timeout: %v %v", r.Timeout, err)
	}
	if err := json.Unmarshal([]byte(`{"argv":["x"],"timeout":"2s"}`), &r); err != nil || time.Duration(r.Timeout) != 2*time.Second {
		t.Fatalf("string timeout: %v %v", r.Timeout, err)
	}
}

func TestRedactKernelArgs(t *testing.T) {
	tok, _ := NewToken()
	s := "[    0.000000] Command line: console=ttyS0 " + KernelArgs(Params{Token: tok, Hostname: "x"}) + "\nnext"
	r := RedactKernelArgs(s)
	if strings.Contains(r, tok) || !strings.Contains(r, "hangar.token=REDACTED hangar.hostname=x") || !strings.HasSuffix(r, "\nnext") {
		t.Fatalf("redacted: %q", r)
	}
}
