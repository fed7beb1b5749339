package webrtc

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // TURN REST credentials are HMAC-SHA1 by convention (coturn's use-auth-secret); the browser never sees the secret.
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pion/turn/v5"
)

// TURNConfig configures the embedded TURN/STUN server.
type TURNConfig struct {
	// Listen is the host:port of the UDP listener and, when TCP is set,
	// of the TCP listener too.
	Listen string
	// TCP adds a TURN-over-TCP listener on the same address, for networks
	// that pass no UDP at all.
	TCP bool
	// PublicIP is the relay address handed to browsers: the host's address
	// as the browser reaches it. Empty means the Listen host.
	PublicIP string
	// URLHost is the host name put in the turn: URLs given to browsers;
	// empty means PublicIP.
	URLHost string
	// RelayMinPort and RelayMaxPort bound the relay ports (UDP), so a
	// firewall can open exactly that range. Zero means any port.
	RelayMinPort, RelayMaxPort uint16
	// MaxAllocationsPerSession caps relays one live-view session may hold
	// at once (a viewer needs one per ICE attempt; a few suffice).
	MaxAllocationsPerSession int
	// Alive reports whether a live-view session still exists; credentials
	// of an ended session stop working at once, not at their expiry.
	Alive func(ctx context.Context, sessionID string) bool
	Log   *slog.Logger
}

// realm is the TURN realm; browsers echo it and it goes into the key.
const realm = "hangar"

// TURN is the embedded TURN server. Credentials are minted per live-view
// session in the TURN REST form ("expiry:session" as user name, an HMAC of
// it as password) under a secret drawn at start, so nothing is stored and
// a daemon restart voids every credential it issued: a credential proves
// that someone who held that session's live-view token asked for it
// recently, and names the session, so quotas and the session's end apply.
type TURN struct {
	cfg    TURNConfig
	secret []byte
	srv    *turn.Server
	urls   []string

	// mu guards allocs (live allocations per session).
	mu     sync.Mutex
	allocs map[string]int
}

// NewTURN starts the server.
func NewTURN(cfg TURNConfig) (*TURN, error) {
	if cfg.Alive == nil {
		return nil, errors.New("turn: Alive is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxAllocationsPerSession <= 0 {
		cfg.MaxAllocationsPerSession = 4
	}
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("turn listen address: %w", err)
	}
	if cfg.PublicIP == "" {
		cfg.PublicIP = host
	}
	relayIP := net.ParseIP(cfg.PublicIP)
	if relayIP == nil || relayIP.IsUnspecified() {
		return nil, fmt.Errorf("turn: public address %q must be an IP address a browser can reach", cfg.PublicIP)
	}
	if cfg.URLHost == "" {
		cfg.URLHost = cfg.PublicIP
	}
	t := &TURN{cfg: cfg, secret: make([]byte, 32), allocs: map[string]int{}}
	if _, err := rand.Read(t.secret); err != nil {
		return nil, err
	}
	var gen turn.RelayAddressGenerator = &turn.RelayAddressGeneratorStatic{RelayAddress: relayIP, Address: host}
	if cfg.RelayMinPort != 0 || cfg.RelayMaxPort != 0 {
		gen = &turn.RelayAddressGeneratorPortRange{RelayAddress: relayIP, Address: host, MinPort: cfg.RelayMinPort, MaxPort: cfg.RelayMaxPort}
	}
	udp, err := net.ListenPacket("udp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("turn: %w", err)
	}
	// Port 0 picks a free port (tests); TCP then takes the same one.
	port := strconv.Itoa(udp.LocalAddr().(*net.UDPAddr).Port)
	sc := turn.ServerConfig{
		Realm:        realm,
		AuthHandler:  t.auth,
		QuotaHandler: t.quota,
		EventHandler: turn.EventHandler{
			OnAuth: func(src, _ net.Addr, proto, _, _ string, method string, ok bool) {
				cfg.Log.Debug("turn auth", "remote", src.String(), "protocol", proto, "method", method, "ok", ok)
			},
			OnPermissionCreated: func(_, _ net.Addr, _, _, _ string, _ net.Addr, peer net.IP) {
				cfg.Log.Debug("turn permission", "peer", peer.String())
			},
			OnAllocationCreated: func(_, _ net.Addr, _, userID, _ string, _ net.Addr, _ int) { t.count(userID, +1) },
			OnAllocationDeleted: func(_, _ net.Addr, _, userID, _ string) { t.count(userID, -1) },
		},
		PacketConnConfigs: []turn.PacketConnConfig{{PacketConn: udp, RelayAddressGenerator: gen}},
	}
	t.urls = []string{"turn:" + net.JoinHostPort(cfg.URLHost, port) + "?transport=udp"}
	if cfg.TCP {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
		if err != nil {
			_ = udp.Close()
			return nil, fmt.Errorf("turn: %w", err)
		}
		sc.ListenerConfigs = []turn.ListenerConfig{{Listener: ln, RelayAddressGenerator: gen}}
		t.urls = append(t.urls, "turn:"+net.JoinHostPort(cfg.URLHost, port)+"?transport=tcp")
	}
	t.srv, err = turn.NewServer(sc)
	if err != nil {
		_ = udp.Close()
		return nil, fmt.Errorf("turn: %w", err)
	}
	return t, nil
}

// Close stops the server and its relays.
func (t *TURN) Close() error { return t.srv.Close() }

// ICEServer is one entry of RTCConfiguration.iceServers as the browser
// takes it.
type ICEServer struct {
	URLs       []string `json:"urls"`
	Username   string   `json:"username,omitempty"`
	Credential string   `json:"credential,omitempty"`
}

// Credentials mints a credential for one live-view session valid for ttl.
// Call it only after the session's live-view token was verified.
func (t *TURN) Credentials(sessionID string, ttl time.Duration) ICEServer {
	user := strconv.FormatInt(time.Now().Add(ttl).Unix(), 10) + ":" + sessionID
	return ICEServer{URLs: t.urls, Username: user, Credential: t.password(user)}
}

func (t *TURN) password(user string) string {
	m := hmac.New(sha1.New, t.secret)
	m.Write([]byte(user))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// sessionOf parses a credential's user name; ok is false when it is
// malformed or expired.
func sessionOf(user string, now time.Time) (string, bool) {
	exp, session, found := strings.Cut(user, ":")
	if !found || session == "" {
		return "", false
	}
	sec, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || now.Unix() > sec {
		return "", false
	}
	return session, true
}

// auth answers the TURN server's long-term-credential lookup. The user
// name must be unexpired and name a live session; the key is derived from
// the password we would have issued for it, so a forged or altered user
// name yields a key whose MESSAGE-INTEGRITY check fails.
func (t *TURN) auth(ra *turn.RequestAttributes) (string, []byte, bool) {
	session, ok := sessionOf(ra.Username, time.Now())
	if !ok {
		t.cfg.Log.Debug("turn credential refused", "reason", "malformed or expired", "remote", ra.SrcAddr.String())
		return "", nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if !t.cfg.Alive(ctx, session) {
		t.cfg.Log.Debug("turn credential refused", "reason", "session ended", "session_id", session)
		return "", nil, false
	}
	return session, turn.GenerateAuthKey(ra.Username, ra.Realm, t.password(ra.Username)), true
}

// quota refuses a new allocation when the session holds its maximum.
// pion passes the user id auth returned, which is the session id.
func (t *TURN) quota(session, _ string, _ net.Addr) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.allocs[session] >= t.cfg.MaxAllocationsPerSession {
		t.cfg.Log.Info("turn allocation quota reached", "session_id", session)
		return false
	}
	return true
}

func (t *TURN) count(session string, d int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.allocs[session] += d
	if t.allocs[session] <= 0 {
		delete(t.allocs, session)
	}
}

// Allocations is how many relays a session holds (for tests and metrics).
func (t *TURN) Allocations(sessionID string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.allocs[sessionID]
}
