package webrtc

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/turn/v5"
)

func newTestTURN(t *testing.T, alive *atomic.Bool, max int) *TURN {
	t.Helper()
	srv, err := NewTURN(TURNConfig{
		Listen: "127.0.0.1:0", MaxAllocationsPerSession: max,
		Alive: func(_ context.Context, s string) bool { return s == "sess-1" && alive.Load() },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

// allocate asks the server for a relay with the given credential.
func allocate(t *testing.T, srv *TURN, user, pass string) (net.PacketConn, error) {
	t.Helper()
	addr := strings.TrimSuffix(strings.TrimPrefix(srv.urls[0], "turn:"), "?transport=udp")
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := turn.NewClient(&turn.ClientConfig{TURNServerAddr: addr, STUNServerAddr: addr, Username: user, Password: pass, Realm: realm, Conn: conn, RTO: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); _ = conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.AllocateWithContext(ctx)
}

// TestTURNCredentials: a credential minted for a session allocates a
// relay; one whose user name was changed to another session, one past its
// expiry, one of an ended session and a guessed password do not; the
// per-session quota holds.
func TestTURNCredentials(t *testing.T) {
	var alive atomic.Bool
	alive.Store(true)
	srv := newTestTURN(t, &alive, 2)
	good := srv.Credentials("sess-1", time.Minute)
	if good.Username == "" || good.Credential == "" || len(good.URLs) != 1 {
		t.Fatalf("credential %+v", good.URLs)
	}
	relay, err := allocate(t, srv, good.Username, good.Credential)
	if err != nil {
		t.Fatalf("valid credential refused: %v", err)
	}
	if ip := relay.LocalAddr().(*net.UDPAddr).IP; !ip.IsLoopback() {
		t.Fatalf("relay address %v, want the loopback public address", ip)
	}
	if n := srv.Allocations("sess-1"); n != 1 {
		t.Fatalf("%d allocations counted, want 1", n)
	}

	other := srv.Credentials("sess-2", time.Minute)
	cases := map[string][2]string{
		// The user name of another session with this session's password:
		// the password is bound to the whole user name.
		"session swapped": {strings.Replace(good.Username, "sess-1", "sess-2", 1), good.Credential},
		// sess-2 is not alive (Alive answers false for it).
		"other session": {other.Username, other.Credential},
		"expired":       {srv.Credentials("sess-1", -time.Minute).Username, srv.Credentials("sess-1", -time.Minute).Credential},
		"bad password":  {good.Username, "AAAA" + good.Credential[4:]},
		"malformed":     {"sess-1", good.Credential},
	}
	for name, c := range cases {
		if _, err := allocate(t, srv, c[0], c[1]); err == nil {
			t.Errorf("%s: allocation succeeded", name)
		}
	}

	if _, err := allocate(t, srv, good.Username, good.Credential); err != nil {
		t.Fatalf("second allocation refused: %v", err)
	}
	if _, err := allocate(t, srv, good.Username, good.Credential); err == nil {
		t.Fatal("third allocation beyond a quota of 2 succeeded")
	}

	alive.Store(false)
	if _, err := allocate(t, srv, good.Username, good.Credential); err == nil {
		t.Fatal("credential of an ended session still allocates")
	}
}

// TestTURNOverTCP: with TCP on, the same port takes TURN over TCP (for
// networks that pass no UDP), with the same credentials.
func TestTURNOverTCP(t *testing.T) {
	srv, err := NewTURN(TURNConfig{
		Listen: "127.0.0.1:0", TCP: true,
		Alive: func(_ context.Context, s string) bool { return s == "sess-1" },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	if len(srv.urls) != 2 || !strings.HasSuffix(srv.urls[1], "?transport=tcp") {
		t.Fatalf("urls %v, want a udp and a tcp one", srv.urls)
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(srv.urls[1], "turn:"), "?transport=tcp")
	try := func(user, pass string) error {
		tc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		c, err := turn.NewClient(&turn.ClientConfig{TURNServerAddr: addr, STUNServerAddr: addr, Username: user, Password: pass, Realm: realm, Conn: turn.NewSTUNConn(tc), RTO: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Listen(); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		relay, err := c.AllocateWithContext(ctx)
		if err == nil {
			_ = relay.Close()
		}
		return err
	}
	good := srv.Credentials("sess-1", time.Minute)
	if err := try(good.Username, good.Credential); err != nil {
		t.Fatalf("allocation over TCP: %v", err)
	}
	bad := srv.Credentials("sess-2", time.Minute)
	if err := try(bad.Username, bad.Credential); err == nil {
		t.Fatal("credential of a session that is not alive allocated over TCP")
	}
}
