package netslot

import (
	"io"
	"net"
	"net/url"
	"testing"
	"time"
)

// FuzzSOCKSConnect feeds arbitrary upstream answers to the SOCKS5 client
// (with and without credentials). It must end, with an error or a
// tunnel, and never panic on short or odd replies.
func FuzzSOCKSConnect(f *testing.F) {
	ok := []byte{5, 0, 5, 0, 0, 1, 192, 0, 2, 1, 0, 80}
	f.Add(ok, false)
	f.Add([]byte{5, 2, 1, 0, 5, 0, 0, 3, 4, 'h', 'o', 's', 't', 0, 80}, true)
	f.Add([]byte{5, 0, 5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 187}, false)
	f.Add([]byte{5, 0xff}, false)
	f.Add([]byte{4, 0}, false)
	f.Fuzz(func(t *testing.T, answer []byte, auth bool) {
		up := &url.URL{Scheme: "socks5", Host: "proxy.test:1080"}
		if auth {
			up.User = url.UserPassword("u", "p")
		}
		fwd, err := NewForwarder(up, ForwarderOptions{})
		if err != nil {
			t.Fatal(err)
		}
		client, server := net.Pipe()
		defer client.Close()
		defer server.Close()
		_ = client.SetDeadline(time.Now().Add(2 * time.Second))
		_ = server.SetDeadline(time.Now().Add(2 * time.Second))
		go func() { _, _ = io.Copy(io.Discard, server) }()
		go func() { _, _ = server.Write(answer); server.Close() }()
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = fwd.socksConnect(client, "example.test", 443)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("socksConnect did not end")
		}
	})
}
