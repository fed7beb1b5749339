package netslot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// DNS message constants (RFC 1035).
const (
	dnsHeaderLen   = 12
	dnsTypeA       = 1
	dnsClassIN     = 1
	rcodeServFail  = 2
	rcodeNotImp    = 4
	rcodeRefused   = 5
	dnsExchangeTTL = 5 * time.Second
)

// dnsVerdict is what the filter does with a question.
type dnsVerdict int

const (
	dnsRefuse        dnsVerdict = iota // answer REFUSED without asking upstream
	dnsForward                         // forward, pass the answer through
	dnsForwardRecord                   // forward, and allow the answered IPv4 addresses
)

// dnsFilter is a slot's DNS server. It answers the guest on the slot's
// gateway, asks the manager's upstream resolver only about names the
// policy allows, and—before the guest sees an answer—lets the slot's
// firewall accept the addresses in it. Only the question name is parsed;
// answers are relayed byte for byte except for capped TTLs.
type dnsFilter struct {
	upstream string
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	decide   func(name string) dnsVerdict
	// record makes the addresses reachable; the answer is withheld
	// (SERVFAIL) when it fails, since the guest could not use it.
	record func(ctx context.Context, addrs []netip.Addr) error
	// ttlCap bounds the TTLs the guest sees, so it never caches an address
	// longer than the firewall allows it.
	ttlCap time.Duration
	log    *slog.Logger

	mu sync.Mutex // guards closers and closed
	// closers are the listeners and open TCP connections, closed by Close.
	closers map[io.Closer]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// Limits on what a guest may hold of its slot's DNS server over TCP.
const (
	// dnsMaxTCPConns bounds TCP connections open at once per slot; more
	// are closed as they arrive.
	dnsMaxTCPConns = 16
	// dnsTCPIdleTimeout closes a TCP connection that sends no query.
	dnsTCPIdleTimeout = 30 * time.Second
)

// serveUDP answers queries on pc until it is closed.
func (f *dnsFilter) serveUDP(pc net.PacketConn) {
	if !f.track(pc) {
		return
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		sem := make(chan struct{}, 32) // bounds concurrent upstream exchanges per slot
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := append([]byte(nil), buf[:n]...)
			select {
			case sem <- struct{}{}:
			default:
				continue // overloaded: drop, the guest retries
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer func() { <-sem }()
				ctx, cancel := context.WithTimeout(context.Background(), 2*dnsExchangeTTL)
				defer cancel()
				if resp := f.handle(ctx, q, "udp"); resp != nil {
					_, _ = pc.WriteTo(resp, from)
				}
			}()
		}
	}()
}

// serveTCP answers length-prefixed queries on ln until it is closed; guests
// fall back to TCP when a UDP answer is truncated.
func (f *dnsFilter) serveTCP(ln net.Listener) {
	if !f.track(ln) {
		return
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		slots := make(chan struct{}, dnsMaxTCPConns)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case slots <- struct{}{}:
			default:
				f.log.Warn("dns tcp connection refused: too many open", "limit", dnsMaxTCPConns)
				c.Close()
				continue
			}
			if !f.track(c) {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer func() { <-slots }()
				defer f.untrack(c)
				for {
					_ = c.SetDeadline(time.Now().Add(dnsTCPIdleTimeout))
					q, err := readTCPMsg(c)
					if err != nil {
						return
					}
					ctx, cancel := context.WithTimeout(context.Background(), 2*dnsExchangeTTL)
					resp := f.handle(ctx, q, "tcp")
					cancel()
					if resp == nil || writeTCPMsg(c, resp) != nil {
						return
					}
				}
			}()
		}
	}()
}

func (f *dnsFilter) track(c io.Closer) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		c.Close()
		return false
	}
	if f.closers == nil {
		f.closers = map[io.Closer]struct{}{}
	}
	f.closers[c] = struct{}{}
	return true
}

// untrack closes c and forgets it.
func (f *dnsFilter) untrack(c io.Closer) {
	c.Close()
	f.mu.Lock()
	delete(f.closers, c)
	f.mu.Unlock()
}

// Close stops the listeners and waits for in-flight queries.
func (f *dnsFilter) Close() {
	f.mu.Lock()
	f.closed = true
	cs := f.closers
	f.closers = nil
	f.mu.Unlock()
	for c := range cs {
		c.Close()
	}
	f.wg.Wait()
}

// handle answers one query; nil means no answer at all (unparseable).
func (f *dnsFilter) handle(ctx context.Context, q []byte, network string) []byte {
	if len(q) < dnsHeaderLen {
		return nil
	}
	flags := binary.BigEndian.Uint16(q[2:])
	if flags&0x8000 != 0 { // a response, not a query
		return nil
	}
	if binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil // no or several questions: nothing sane to answer
	}
	name, qEnd, err := parseQuestion(q)
	if err != nil {
		return nil
	}
	if (flags>>11)&0xf != 0 {
		return dnsError(q, qEnd, rcodeNotImp)
	}
	verdict := f.decide(name)
	if verdict == dnsRefuse {
		f.log.Debug("dns refused", "name", name)
		return dnsError(q, qEnd, rcodeRefused)
	}
	resp, err := f.exchange(ctx, q, network)
	if err != nil {
		f.log.Warn("dns upstream failed", "name", name, "err", err)
		return dnsError(q, qEnd, rcodeServFail)
	}
	addrs, err := capTTLs(resp, uint32(f.ttlCap/time.Second))
	if err != nil {
		f.log.Warn("dns upstream answer unparseable", "name", name, "err", err)
		return dnsError(q, qEnd, rcodeServFail)
	}
	if verdict == dnsForwardRecord && len(addrs) > 0 {
		if err := f.record(ctx, addrs); err != nil {
			f.log.Error("dns allow addresses", "name", name, "err", err)
			return dnsError(q, qEnd, rcodeServFail)
		}
	}
	return resp
}

// exchange sends q to the upstream resolver over network and returns the
// matching answer.
func (f *dnsFilter) exchange(ctx context.Context, q []byte, network string) ([]byte, error) {
	c, err := f.dial(ctx, network, f.upstream)
	if err != nil {
		return nil, fmt.Errorf("dial upstream resolver: %w", err)
	}
	defer c.Close()
	deadline := time.Now().Add(dnsExchangeTTL)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetDeadline(deadline)
	if network == "tcp" {
		if err := writeTCPMsg(c, q); err != nil {
			return nil, fmt.Errorf("send query: %w", err)
		}
		resp, err := readTCPMsg(c)
		if err != nil {
			return nil, fmt.Errorf("read answer: %w", err)
		}
		if len(resp) < dnsHeaderLen || resp[0] != q[0] || resp[1] != q[1] {
			return nil, errors.New("answer does not match the query")
		}
		return resp, nil
	}
	if _, err := c.Write(q); err != nil {
		return nil, fmt.Errorf("send query: %w", err)
	}
	buf := make([]byte, 65535)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, fmt.Errorf("read answer: %w", err)
		}
		// Ignore stray datagrams that do not answer this query's ID.
		if n >= dnsHeaderLen && buf[0] == q[0] && buf[1] == q[1] && buf[2]&0x80 != 0 {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
}

// parseQuestion returns the lower-case name of the first question (no
// final dot) and the offset just past that question.
func parseQuestion(msg []byte) (string, int, error) {
	name, off, err := readName(msg, dnsHeaderLen)
	if err != nil {
		return "", 0, err
	}
	if off+4 > len(msg) {
		return "", 0, errors.New("short question")
	}
	return strings.ToLower(name), off + 4, nil
}

// readName decodes a possibly compressed name at off and returns it with
// the offset after it in the message.
func readName(msg []byte, off int) (string, int, error) {
	var labels []string
	end := -1
	for jumps := 0; ; {
		if off >= len(msg) {
			return "", 0, errors.New("name runs past the message")
		}
		l := int(msg[off])
		switch {
		case l == 0:
			if end < 0 {
				end = off + 1
			}
			return strings.Join(labels, "."), end, nil
		case l&0xc0 == 0xc0:
			if off+1 >= len(msg) {
				return "", 0, errors.New("short compression pointer")
			}
			if end < 0 {
				end = off + 2
			}
			jumps++
			if jumps > 32 {
				return "", 0, errors.New("compression loop")
			}
			off = int(binary.BigEndian.Uint16(msg[off:]) & 0x3fff)
		case l&0xc0 != 0:
			return "", 0, errors.New("unsupported label type")
		default:
			if off+1+l > len(msg) {
				return "", 0, errors.New("label runs past the message")
			}
			labels = append(labels, string(msg[off+1:off+1+l]))
			off += 1 + l
		}
	}
}

// capTTLs lowers every TTL in the answer, authority and additional
// sections of msg to at most maxTTL, in place, and returns the IPv4
// addresses of the answer section's A records.
func capTTLs(msg []byte, maxTTL uint32) ([]netip.Addr, error) {
	if len(msg) < dnsHeaderLen {
		return nil, errors.New("short header")
	}
	qd := int(binary.BigEndian.Uint16(msg[4:]))
	an := int(binary.BigEndian.Uint16(msg[6:]))
	rest := int(binary.BigEndian.Uint16(msg[8:])) + int(binary.BigEndian.Uint16(msg[10:]))
	off := dnsHeaderLen
	for i := 0; i < qd; i++ {
		_, next, err := readName(msg, off)
		if err != nil {
			return nil, err
		}
		off = next + 4
	}
	var addrs []netip.Addr
	for i := 0; i < an+rest; i++ {
		_, next, err := readName(msg, off)
		if err != nil {
			return nil, err
		}
		off = next
		if off+10 > len(msg) {
			return nil, errors.New("short resource record")
		}
		typ := binary.BigEndian.Uint16(msg[off:])
		class := binary.BigEndian.Uint16(msg[off+2:])
		ttl := binary.BigEndian.Uint32(msg[off+4:])
		rdlen := int(binary.BigEndian.Uint16(msg[off+8:]))
		if typ != 41 && ttl > maxTTL { // 41 is EDNS OPT, whose "TTL" holds flags
			binary.BigEndian.PutUint32(msg[off+4:], maxTTL)
		}
		off += 10
		if off+rdlen > len(msg) {
			return nil, errors.New("short resource data")
		}
		if i < an && typ == dnsTypeA && class == dnsClassIN && rdlen == 4 {
			addrs = append(addrs, netip.AddrFrom4([4]byte(msg[off:off+4])))
		}
		off += rdlen
	}
	return addrs, nil
}

// dnsError builds an answer with rcode and no records to the query whose
// question ends at qEnd.
func dnsError(q []byte, qEnd int, rcode byte) []byte {
	out := append([]byte(nil), q[:qEnd]...)
	rd := q[2] & 0x01
	out[2] = 0x80 | rd // QR, opcode QUERY, RD copied
	out[3] = 0x80 | rcode
	binary.BigEndian.PutUint16(out[4:], 1)
	binary.BigEndian.PutUint16(out[6:], 0)
	binary.BigEndian.PutUint16(out[8:], 0)
	binary.BigEndian.PutUint16(out[10:], 0)
	return out
}

func readTCPMsg(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	msg := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

func writeTCPMsg(w io.Writer, msg []byte) error {
	if len(msg) > 65535 {
		return errors.New("message too long")
	}
	buf := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(buf, uint16(len(msg)))
	copy(buf[2:], msg)
	_, err := w.Write(buf)
	return err
}
