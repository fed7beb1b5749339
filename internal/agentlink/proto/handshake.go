package proto

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// The link handshake runs before yamux on every new host connection. It
// exists because a virtio-serial port is one byte stream that outlives host
// connections: after the daemon restarts, the guest may still hold a yamux
// session from the old connection, and stale bytes may sit in either
// direction. Both sides therefore scan for marked lines and skip anything
// else:
//
//	host  → agent: HANGAR-AGENT-LINK/1 HELLO <nonce>      (repeated every HelloInterval until OK)
//	agent → host:  HANGAR-AGENT-LINK/1 OK <nonce> <agent-version>   (one per HELLO seen)
//	host  → agent: HANGAR-AGENT-LINK/1 START <nonce> <host-unix-nano>  (once)
//	agent → host:  HANGAR-AGENT-LINK/1 READY <nonce>
//	then yamux: host is the client, agent the server.
//
// The host repeats HELLO because the agent's old yamux session may swallow
// the first one (it reads it as a corrupt frame, fails, and the agent then
// starts scanning). START is sent once, after the host stopped sending
// HELLOs, so the agent's stream is clean yamux after START; the host skips
// the extra OK lines until READY, so its stream is clean after READY. The
// nonce keeps a line from an earlier connection from being taken for this
// one. The agent sets its clock from the time in START (clock on link up).
const (
	handshakeMagic = "HANGAR-AGENT-LINK/" + Version + " "
	// HelloInterval is how often the host repeats HELLO until it sees OK.
	HelloInterval = 250 * time.Millisecond
	maxLine       = 512
)

// HandshakeResult is what the agent learns from a completed handshake.
type HandshakeResult struct {
	// HostTime is the host's clock when it sent START.
	HostTime time.Time
}

// ErrHandshake reports a malformed handshake line.
var ErrHandshake = errors.New("agent link handshake failed")

// ClientHandshake performs the host side over rw. It returns the reader the
// yamux client must read from (it may hold bytes after READY) and the
// agent's version. Cancel ctx to give up; the caller closes rw then.
func ClientHandshake(ctx context.Context, rw io.ReadWriter, now func() time.Time) (*bufio.Reader, string, error) {
	nb := make([]byte, 8)
	if _, err := rand.Read(nb); err != nil {
		return nil, "", fmt.Errorf("handshake nonce: %w", err)
	}
	nonce := hex.EncodeToString(nb)
	br := bufio.NewReaderSize(rw, 4096)

	type result struct {
		version string
		err     error
	}
	okCh := make(chan result, 1)
	readyCh := make(chan error, 1)
	startSent := make(chan struct{})
	go func() {
		sawOK := false
		for {
			fields, err := readMarkedLine(br)
			if err != nil {
				if !sawOK {
					okCh <- result{err: err}
				} else {
					readyCh <- err
				}
				return
			}
			if len(fields) < 2 || fields[1] != nonce {
				continue // stale line from an earlier connection
			}
			switch fields[0] {
			case "OK":
				if !sawOK {
					sawOK = true
					v := ""
					if len(fields) > 2 {
						v = fields[2]
					}
					okCh <- result{version: v}
					<-startSent
				}
			case "READY":
				if sawOK {
					readyCh <- nil
					return
				}
			}
		}
	}()

	hello := []byte(handshakeMagic + "HELLO " + nonce + "\n")
	tick := time.NewTicker(HelloInterval)
	defer tick.Stop()
	var version string
	for waiting := true; waiting; {
		if _, err := rw.Write(hello); err != nil {
			return nil, "", fmt.Errorf("write hello: %w", err)
		}
		select {
		case r := <-okCh:
			if r.err != nil {
				return nil, "", fmt.Errorf("read ok: %w", r.err)
			}
			version = r.version
			waiting = false
		case <-tick.C:
		case <-ctx.Done():
			return nil, "", fmt.Errorf("wait for agent: %w", ctx.Err())
		}
	}
	start := fmt.Sprintf("%sSTART %s %d\n", handshakeMagic, nonce, now().UnixNano())
	_, err := rw.Write([]byte(start))
	close(startSent)
	if err != nil {
		return nil, "", fmt.Errorf("write start: %w", err)
	}
	select {
	case err := <-readyCh:
		if err != nil {
			return nil, "", fmt.Errorf("read ready: %w", err)
		}
	case <-ctx.Done():
		return nil, "", fmt.Errorf("wait for ready: %w", ctx.Err())
	}
	return br, version, nil
}

// ServerHandshake performs the agent side over rw, reading through br
// (which must wrap rw). It skips everything until a HELLO, answers every
// HELLO with OK, and returns after START once READY is written; yamux must
// then read from br.
func ServerHandshake(br *bufio.Reader, w io.Writer, agentVersion string) (HandshakeResult, error) {
	for {
		fields, err := readMarkedLine(br)
		if err != nil {
			return HandshakeResult{}, err
		}
		if len(fields) < 2 {
			continue
		}
		nonce := fields[1]
		switch fields[0] {
		case "HELLO":
			if _, err := io.WriteString(w, handshakeMagic+"OK "+nonce+" "+agentVersion+"\n"); err != nil {
				return HandshakeResult{}, fmt.Errorf("write ok: %w", err)
			}
		case "START":
			var res HandshakeResult
			if len(fields) > 2 {
				if ns, err := strconv.ParseInt(fields[2], 10, 64); err == nil {
					res.HostTime = time.Unix(0, ns)
				}
			}
			if _, err := io.WriteString(w, handshakeMagic+"READY "+nonce+"\n"); err != nil {
				return HandshakeResult{}, fmt.Errorf("write ready: %w", err)
			}
			return res, nil
		}
	}
}

// readMarkedLine returns the fields after the magic of the next line that
// contains it, skipping other bytes (stale yamux frames) of any length.
func readMarkedLine(br *bufio.Reader) ([]string, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A long run without newlines is junk unless it ends with the
			// start of a marked line; keep only a short tail.
			line = append(line, chunk...)
			if len(line) > maxLine {
				line = append(line[:0], line[len(line)-maxLine:]...)
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		line = append(line, chunk...)
		if i := bytes.LastIndex(line, []byte(handshakeMagic)); i >= 0 {
			rest := string(line[i+len(handshakeMagic):])
			return strings.Fields(rest), nil
		}
		line = line[:0]
	}
}
