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

	"golang.org/x/net/dns/dnsmessage"
)

const (
	// dnsHeaderLen is the fixed header of a DNS message (RFC 1035).
	dnsHeaderLen = 12
	// dnsExchangeTTL bounds one exchange with the upstream resolver.
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
// Queries come from the guest and answers from the upstream resolver;
// both are parsed with golang.org/x/net/dns/dnsmessage, which refuses
// what a hand-written parser let through (a label containing a dot, which
// made the name the policy judged differ from the name resolved).
func (f *dnsFilter) handle(ctx context.Context, q []byte, network string) []byte {
	hdr, question, err := parseQuery(q)
	if err != nil {
		return nil
	}
	if hdr.OpCode != 0 {
		return dnsError(hdr, question, dnsmessage.RCodeNotImplemented)
	}
	name := questionName(question)
	verdict := f.decide(name)
	if verdict == dnsRefuse {
		f.log.Debug("dns refused", "name", name)
		return dnsError(hdr, question, dnsmessage.RCodeRefused)
	}
	resp, err := f.exchange(ctx, q, network)
	if err != nil {
		f.log.Warn("dns upstream failed", "name", name, "err", err)
		return dnsError(hdr, question, dnsmessage.RCodeServerFailure)
	}
	resp, addrs, err := capTTLs(resp, uint32(f.ttlCap/time.Second))
	if err != nil {
		f.log.Warn("dns upstream answer unparseable", "name", name, "err", err)
		return dnsError(hdr, question, dnsmessage.RCodeServerFailure)
	}
	if verdict == dnsForwardRecord && len(addrs) > 0 {
		if err := f.record(ctx, addrs); err != nil {
			f.log.Error("dns allow addresses", "name", name, "err", err)
			return dnsError(hdr, question, dnsmessage.RCodeServerFailure)
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

// parseQuery parses a guest's query: a query (not a response) with
// exactly one question.
func parseQuery(msg []byte) (dnsmessage.Header, dnsmessage.Question, error) {
	var p dnsmessage.Parser
	hdr, err := p.Start(msg)
	if err != nil {
		return hdr, dnsmessage.Question{}, err
	}
	if hdr.Response {
		return hdr, dnsmessage.Question{}, errors.New("a response, not a query")
	}
	qs, err := p.AllQuestions()
	if err != nil {
		return hdr, dnsmessage.Question{}, err
	}
	if len(qs) != 1 {
		return hdr, dnsmessage.Question{}, errors.New("no or several questions: nothing sane to answer")
	}
	return hdr, qs[0], nil
}

// questionName is the question's name in lower case without the final dot.
func questionName(q dnsmessage.Question) string {
	return strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))
}

// capTTLs lowers every TTL in the answer, authority and additional
// sections of msg to at most maxTTL and returns the message so changed
// (packed again) with the IPv4 addresses of the answer section's A
// records.
func capTTLs(msg []byte, maxTTL uint32) ([]byte, []netip.Addr, error) {
	var m dnsmessage.Message
	if err := m.Unpack(msg); err != nil {
		return nil, nil, err
	}
	var addrs []netip.Addr
	for _, sec := range []*[]dnsmessage.Resource{&m.Answers, &m.Authorities, &m.Additionals} {
		for i := range *sec {
			rr := &(*sec)[i]
			// An EDNS OPT record's "TTL" holds flags, not a lifetime.
			if rr.Header.Type != dnsmessage.TypeOPT && rr.Header.TTL > maxTTL {
				rr.Header.TTL = maxTTL
			}
			if a, ok := rr.Body.(*dnsmessage.AResource); ok && sec == &m.Answers && rr.Header.Class == dnsmessage.ClassINET {
				addrs = append(addrs, netip.AddrFrom4(a.A))
			}
		}
	}
	out, err := m.Pack()
	if err != nil {
		return nil, nil, err
	}
	return out, addrs, nil
}

// dnsError builds an answer with rcode and no records to the query.
func dnsError(hdr dnsmessage.Header, q dnsmessage.Question, rcode dnsmessage.RCode) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID: hdr.ID, Response: true, RecursionDesired: hdr.RecursionDesired, RecursionAvailable: true, RCode: rcode,
	})
	if err := b.StartQuestions(); err != nil {
		return nil
	}
	if err := b.Question(q); err != nil {
		return nil
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
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
