package agentlink_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/hangar-vm/hangar/internal/agent"
	"github.com/hangar-vm/hangar/internal/agentlink"
)

// TestReverseForward: a guest program connecting to the agent's reverse
// listener reaches the handler the host chose, and nothing else.
func TestReverseForward(t *testing.T) {
	ta := startAgent(t, agent.Config{})
	ctx := ctxT(t, 20e9)
	// A free loopback port stands for the guest's 127.0.0.1:<port>.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String()
	probe.Close()

	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "host service saw "+r.URL.Path)
	})
	if err := ta.client.Reverse(ctx, addr, "dev-oauth", agentlink.ServeHTTPReverse(h)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		resp, err := http.Get("http://" + addr + "/authorize")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "host service saw /authorize" {
			t.Fatalf("guest got %q", b)
		}
	}
	// Only loopback listeners are allowed.
	err = ta.client.Reverse(ctx, "0.0.0.0:0", "wide", agentlink.ServeHTTPReverse(h))
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("non-loopback listen: %v, want refused", err)
	}
	// The listener ends with the session.
	ta.client.Close()
	waitFor(t, 5e9, "listener closed with the session", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
}
