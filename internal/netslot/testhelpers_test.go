package netslot

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// testLogger writes to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testDNS is an authoritative stand-in resolver: A records from a map,
// NXDOMAIN otherwise. It builds answers by hand, independent of the code
// under test, with a compression pointer back to the question as real
// servers do.
type testDNS struct {
	records map[string][]netip.Addr
	ttl     uint32
	mu      sync.Mutex // guards asked
	asked   []string
}

func (d *testDNS) questions() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.asked...)
}

func (d *testDNS) answer(q []byte) []byte {
	if len(q) < 12 {
		return nil
	}
	off := 12
	var labels []string
	for off < len(q) && q[off] != 0 {
		l := int(q[off])
		if off+1+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[off+1:off+1+l]))
		off += 1 + l
	}
	qEnd := off + 5
	if qEnd > len(q) {
		return nil
	}
	name := strings.ToLower(strings.Join(labels, "."))
	qtype := binary.BigEndian.Uint16(q[off+1:])
	d.mu.Lock()
	d.asked = append(d.asked, name)
	d.mu.Unlock()
	out := append([]byte(nil), q[:qEnd]...)
	out[2], out[3] = 0x81, 0x80 // QR RD, RA
	binary.BigEndian.PutUint16(out[6:], 0)
	binary.BigEndian.PutUint16(out[8:], 0)
	binary.BigEndian.PutUint16(out[10:], 0)
	addrs, ok := d.records[name]
	if !ok {
		out[3] |= 3 // NXDOMAIN
		return out
	}
	if qtype != 1 {
		return out
	}
	binary.BigEndian.PutUint16(out[6:], uint16(len(addrs)))
	for _, a := range addrs {
		out = append(out, 0xc0, 0x0c, 0, 1, 0, 1)
		out = binary.BigEndian.AppendUint32(out, d.ttl)
		out = append(out, 0, 4)
		out = append(out, a.AsSlice()...)
	}
	return out
}

func (d *testDNS) serveUDP(pc net.PacketConn) {
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := d.answer(buf[:n]); resp != nil {
				_, _ = pc.WriteTo(resp, from)
			}
		}
	}()
}

func (d *testDNS) serveTCP(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					q, err := readTCPMsg(c)
					if err != nil {
						return
					}
					if resp := d.answer(q); resp == nil || writeTCPMsg(c, resp) != nil {
						return
					}
				}
			}()
		}
	}()
}

// buildQuery makes a DNS query for name and qtype with id.
func buildQuery(id uint16, name string, qtype uint16) []byte {
	q := binary.BigEndian.AppendUint16(nil, id)
	q = append(q, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0)
	for _, l := range strings.Split(name, ".") {
		q = append(q, byte(len(l)))
		q = append(q, l...)
	}
	q = append(q, 0)
	q = binary.BigEndian.AppendUint16(q, qtype)
	return binary.BigEndian.AppendUint16(q, 1)
}

// testUpstreamHTTP is a user's upstream HTTP proxy that demands Basic
// credentials and records what it forwarded.
type testUpstreamHTTP struct {
	user, pass string
	dial       func(ctx context.Context, network, addr string) (net.Conn, error)
	mu         sync.Mutex // guards seen and refused
	seen       []string   // "CONNECT host:port" or "GET http://..."
	refused    int
}

func (p *testUpstreamHTTP) record(s string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ok {
		p.seen = append(p.seen, s)
	} else {
		p.refused++
	}
}

func (p *testUpstreamHTTP) log() ([]string, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...), p.refused
}

func (p *testUpstreamHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte(p.user+":"+p.pass))
	if r.Header.Get("Proxy-Authorization") != want {
		p.record("", false)
		w.Header().Set("Proxy-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusProxyAuthRequired)
		return
	}
	dial := p.dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	if r.Method == http.MethodConnect {
		p.record("CONNECT "+r.Host, true)
		up, err := dial(r.Context(), "tcp", r.Host)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		hj, _ := w.(http.Hijacker)
		c, brw, err := hj.Hijack()
		if err != nil {
			up.Close()
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\n")
		go func() { _, _ = io.Copy(up, brw); up.Close() }()
		_, _ = io.Copy(c, up)
		c.Close()
		return
	}
	p.record(r.Method+" "+r.URL.String(), true)
	r.RequestURI = ""
	r.Header.Del("Proxy-Authorization")
	tr := &http.Transport{DialContext: dial}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(r)
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.Header().Set("Via", "1.1 test-upstream")
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// testUpstreamSOCKS is a user's upstream SOCKS5 proxy that demands
// username/password and records the targets it connected.
type testUpstreamSOCKS struct {
	user, pass string
	dial       func(ctx context.Context, network, addr string) (net.Conn, error)
	mu         sync.Mutex // guards seen and refused
	seen       []string
	refused    int
}

func (p *testUpstreamSOCKS) log() ([]string, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...), p.refused
}

func (p *testUpstreamSOCKS) serve(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.handle(c)
		}
	}()
}

func (p *testUpstreamSOCKS) handle(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil || hdr[0] != 5 {
		return
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return
	}
	if !strings.ContainsRune(string(methods), 2) {
		_, _ = c.Write([]byte{5, 0xff})
		return
	}
	_, _ = c.Write([]byte{5, 2})
	var v [2]byte
	if _, err := io.ReadFull(r, v[:]); err != nil {
		return
	}
	user := make([]byte, v[1])
	io.ReadFull(r, user)
	var pl [1]byte
	io.ReadFull(r, pl[:])
	pass := make([]byte, pl[0])
	io.ReadFull(r, pass)
	if string(user) != p.user || string(pass) != p.pass {
		p.mu.Lock()
		p.refused++
		p.mu.Unlock()
		_, _ = c.Write([]byte{1, 1})
		return
	}
	_, _ = c.Write([]byte{1, 0})
	var req [4]byte
	if _, err := io.ReadFull(r, req[:]); err != nil || req[1] != 1 {
		return
	}
	var host string
	switch req[3] {
	case 1:
		var a [4]byte
		io.ReadFull(r, a[:])
		host = netip.AddrFrom4(a).String()
	case 3:
		var l [1]byte
		io.ReadFull(r, l[:])
		b := make([]byte, l[0])
		io.ReadFull(r, b)
		host = string(b)
	default:
		return
	}
	var pb [2]byte
	io.ReadFull(r, pb[:])
	target := net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(pb[:]))))
	p.mu.Lock()
	p.seen = append(p.seen, target)
	p.mu.Unlock()
	dial := p.dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	up, err := dial(context.Background(), "tcp", target)
	if err != nil {
		_, _ = c.Write([]byte{5, 5, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}
	defer up.Close()
	_, _ = c.Write([]byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	go func() { _, _ = io.Copy(up, r); up.Close() }()
	_, _ = io.Copy(c, up)
}
