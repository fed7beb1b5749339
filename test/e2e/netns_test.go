package e2e

import (
	"bufio"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// Helpers that run test servers inside namespaces the test created, from
// the test process itself: a socket opened by a thread switched into a
// namespace stays in that namespace, so nothing of the test's traffic
// touches the machine's own namespace.

// inNetNS runs fn on a thread switched into the named namespace
// (/run/netns/name). A thread that cannot be switched back stays locked
// and dies with its goroutine instead of being reused.
func inNetNS(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("return from netns %s: %w", name, err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// listenIn opens a TCP listener on addr inside namespace ns, closed when
// the test ends.
func listenIn(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := inNetNS(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dialIn dials addr from inside namespace ns.
func dialIn(ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetNS(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, 10*time.Second); return err })
	return c, err
}

// hitLog records the requests a test server or proxy saw.
type hitLog struct {
	mu   sync.Mutex // guards hits
	hits []string
}

func (l *hitLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hits = append(l.hits, s)
}

func (l *hitLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.hits...)
}

// serveHTTPIn runs an HTTP server on addr in ns that answers every request
// with 200 and body, and records "METHOD path" of each.
func serveHTTPIn(t *testing.T, ns, addr, body string) *hitLog {
	t.Helper()
	ln := listenIn(t, ns, addr)
	log := &hitLog{}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.add(r.Method + " " + r.URL.Path)
		io.WriteString(w, body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return log
}

// serveProxyIn runs a plain-HTTP forward proxy on addr in ns that demands
// Basic credentials user:pass. It records "auth-ok METHOD URL" or
// "auth-bad ..." for every request and forwards the good ones, dialing
// from ns.
func serveProxyIn(t *testing.T, ns, addr, user, pass string) *hitLog {
	t.Helper()
	ln := listenIn(t, ns, addr)
	log := &hitLog{}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Proxy-Authorization") != want {
			log.add("auth-bad " + r.Method + " " + r.URL.String())
			w.Header().Set("Proxy-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusProxyAuthRequired)
			return
		}
		log.add("auth-ok " + r.Method + " " + r.URL.String())
		if r.Method == http.MethodConnect || !r.URL.IsAbs() {
			http.Error(w, "this test proxy forwards absolute http:// URLs only", http.StatusBadRequest)
			return
		}
		host := r.URL.Host
		if !strings.Contains(host, ":") {
			host += ":80"
		}
		up, err := dialIn(ns, host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer up.Close()
		r.Header.Del("Proxy-Authorization")
		r.Close = true
		if err := r.Write(up); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(up), r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return log
}

// serveDNSIn answers A questions over UDP on addr in ns from records
// (lower-case names without the trailing dot), NXDOMAIN for other names.
// The answers are built by hand, independent of the code under test.
func serveDNSIn(t *testing.T, ns, addr string, records map[string]netip.Addr) *hitLog {
	t.Helper()
	var pc net.PacketConn
	if err := inNetNS(ns, func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
		t.Fatalf("dns listen on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { pc.Close() })
	log := &hitLog{}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := buf[:n]
			if len(q) < 12 {
				continue
			}
			off := 12
			var labels []string
			for off < len(q) && q[off] != 0 && off+1+int(q[off]) <= len(q) {
				labels = append(labels, string(q[off+1:off+1+int(q[off])]))
				off += 1 + int(q[off])
			}
			if off+5 > len(q) {
				continue
			}
			name := strings.ToLower(strings.Join(labels, "."))
			qtype := binary.BigEndian.Uint16(q[off+1:])
			log.add(name)
			out := append([]byte(nil), q[:off+5]...)
			out[2], out[3] = 0x81, 0x80 // response, recursion desired and available
			clear(out[6:12])            // no answer, authority or additional records yet
			a, ok := records[name]
			switch {
			case !ok:
				out[3] |= 3 // NXDOMAIN
			case qtype == 1:
				binary.BigEndian.PutUint16(out[6:], 1)
				out = append(out, 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4)
				out = append(out, a.AsSlice()...)
			}
			_, _ = pc.WriteTo(out, from)
		}
	}()
	return log
}

// relayInto listens on 127.0.0.1 in the test's own namespace and relays
// every connection to addr inside ns, so the test's API client reaches a
// daemon that runs (and listens on its loopback) in a test namespace.
// The relay's socket is on loopback, which no VM can reach.
func relayInto(t *testing.T, ns, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := dialIn(ns, addr)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(up, c); done <- struct{}{} }()
				go func() { io.Copy(c, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return ln.Addr().String()
}
