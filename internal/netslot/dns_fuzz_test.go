package netslot

import (
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// FuzzDNSQuery: guest queries. A query accepted has one question, and the
// error answers built for it parse back with its ID and question.
func FuzzDNSQuery(f *testing.F) {
	f.Add(buildQuery(1, "allowed.test", 1))
	f.Add(buildQuery(2, "Mixed.Case.Example", 28))
	dotted := buildQuery(3, "x.allowed.test", 1)
	copy(dotted[12:], []byte("\x09x.allowed\x04test\x00"))
	f.Add(dotted)
	f.Add([]byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, msg []byte) {
		hdr, q, err := parseQuery(msg)
		if err != nil {
			return
		}
		_ = questionName(q)
		for _, rc := range []dnsmessage.RCode{dnsmessage.RCodeRefused, dnsmessage.RCodeServerFailure, dnsmessage.RCodeNotImplemented} {
			out := dnsError(hdr, q, rc)
			var m dnsmessage.Message
			if err := m.Unpack(out); err != nil {
				t.Fatalf("error answer does not parse: %v", err)
			}
			if m.Header.ID != hdr.ID || !m.Header.Response || m.Header.RCode != rc || len(m.Questions) != 1 || m.Questions[0] != q {
				t.Fatalf("error answer %+v for query %+v %+v", m.Header, hdr, q)
			}
		}
	})
}

// FuzzCapTTLs: upstream answers. Whatever capTTLs returns parses, and its
// TTLs (but EDNS OPT's flags) are capped.
func FuzzCapTTLs(f *testing.F) {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 9, Response: true})
	_ = b.StartQuestions()
	name := dnsmessage.MustNewName("allowed.test.")
	_ = b.Question(dnsmessage.Question{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	_ = b.StartAnswers()
	_ = b.AResource(dnsmessage.ResourceHeader{Name: name, Class: dnsmessage.ClassINET, TTL: 3600}, dnsmessage.AResource{A: [4]byte{192, 0, 2, 10}})
	_ = b.StartAdditionals()
	var opt dnsmessage.ResourceHeader
	_ = opt.SetEDNS0(1232, dnsmessage.RCodeSuccess, true)
	_ = b.OPTResource(opt, dnsmessage.OPTResource{})
	seed, _ := b.Finish()
	f.Add(seed)
	f.Add([]byte{0, 9, 0x81, 0x80, 0, 0, 0, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, msg []byte) {
		out, addrs, err := capTTLs(msg, 300)
		if err != nil {
			return
		}
		var m dnsmessage.Message
		if err := m.Unpack(out); err != nil {
			t.Fatalf("capped answer does not parse: %v", err)
		}
		n := 0
		for _, sec := range [][]dnsmessage.Resource{m.Answers, m.Authorities, m.Additionals} {
			for _, rr := range sec {
				if rr.Header.Type != dnsmessage.TypeOPT && rr.Header.TTL > 300 {
					t.Fatalf("TTL %d left uncapped", rr.Header.TTL)
				}
			}
		}
		for _, rr := range m.Answers {
			if _, ok := rr.Body.(*dnsmessage.AResource); ok && rr.Header.Class == dnsmessage.ClassINET {
				n++
			}
		}
		if n != len(addrs) {
			t.Fatalf("%d addresses returned for %d A records", len(addrs), n)
		}
	})
}
