package agent

import (
	"bytes"
	"io"
	"sort"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// maxLineBytes splits longer lines so one runaway line cannot fill a ring.
const maxLineBytes = 4096

// lineOverhead is what one kept line costs besides its text: the
// proto.LogLine in the ring's slice (56 bytes on 64-bit) and the string's
// allocation header, rounded up. Counting it is what bounds the ring under
// a flood of empty lines, which would otherwise cost nothing against the
// budget and grow PID 1 until the guest dies.
const lineOverhead = int(unsafe.Sizeof(proto.LogLine{})) + 32

// cost is what a line counts against a ring's budget.
func cost(l proto.LogLine) int { return len(l.Line) + lineOverhead }

// ring keeps the newest lines of one service within a byte budget, text
// and per-line overhead both counted.
type ring struct {
	limit int
	// lines is a FIFO; head indexes the oldest kept line.
	lines []proto.LogLine
	head  int
	bytes int
}

func (r *ring) add(l proto.LogLine) {
	r.lines = append(r.lines, l)
	r.bytes += cost(l)
	for r.bytes > r.limit && r.head < len(r.lines) {
		r.bytes -= cost(r.lines[r.head])
		r.lines[r.head] = proto.LogLine{}
		r.head++
	}
	// Compact once the dropped prefix dominates, keeping add amortised O(1).
	if r.head > 64 && r.head*2 > len(r.lines) {
		n := copy(r.lines, r.lines[r.head:])
		clear(r.lines[n:])
		r.lines = r.lines[:n]
		r.head = 0
	}
}

func (r *ring) snapshot() []proto.LogLine {
	return append([]proto.LogLine(nil), r.lines[r.head:]...)
}

// logHub fans every line out to its service's ring, the console and
// followers.
type logHub struct {
	ringBytes int
	console   *consoleSink
	now       func() time.Time

	mu sync.Mutex // guards rings and subs
	// rings holds one ring per service name, created on first line.
	rings map[string]*ring
	// subs are followers of GET /v1/logs?follow=1.
	subs map[*logSub]struct{}
}

type logSub struct {
	service string // "" for all
	ch      chan proto.LogLine
	// dropped counts lines not delivered because the follower was slow.
	dropped int
}

func newLogHub(ringBytes int, console *consoleSink, now func() time.Time) *logHub {
	return &logHub{ringBytes: ringBytes, console: console, now: now, rings: map[string]*ring{}, subs: map[*logSub]struct{}{}}
}

// add records one line (without its newline) of service.
func (h *logHub) add(service, line string) {
	for len(line) > maxLineBytes {
		h.add(service, line[:maxLineBytes])
		line = line[maxLineBytes:]
	}
	l := proto.LogLine{Service: service, Time: h.now(), Line: line}
	h.mu.Lock()
	r := h.rings[service]
	if r == nil {
		r = &ring{limit: h.ringBytes}
		h.rings[service] = r
	}
	r.add(l)
	for s := range h.subs {
		if s.service != "" && s.service != service {
			continue
		}
		select {
		case s.ch <- l:
		default:
			s.dropped++
		}
	}
	h.mu.Unlock()
	if h.console != nil {
		h.console.writeLine(service, line)
	}
}

// backlog returns kept lines of service (all services when empty), oldest
// first, at most tail lines when tail > 0.
func (h *logHub) backlog(service string, tail int) []proto.LogLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.backlogLocked(service, tail)
}

func (h *logHub) backlogLocked(service string, tail int) []proto.LogLine {
	var out []proto.LogLine
	for name, r := range h.rings {
		if service == "" || name == service {
			out = append(out, r.snapshot()...)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	if tail > 0 && len(out) > tail {
		out = out[len(out)-tail:]
	}
	return out
}

// tailLines returns the last n lines of one service as strings.
func (h *logHub) tailLines(service string, n int) []string {
	lines := h.backlog(service, n)
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.Line
	}
	return out
}

// subscribe registers a follower; the backlog taken in the same critical
// section guarantees no line is missed or repeated between the two.
func (h *logHub) subscribe(service string, tail int) ([]proto.LogLine, *logSub) {
	s := &logSub{service: service, ch: make(chan proto.LogLine, 1024)}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.subs[s] = struct{}{}
	return h.backlogLocked(service, tail), s
}

func (h *logHub) unsubscribe(s *logSub) {
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
}

// lineWriter turns a byte stream into lines of one service.
type lineWriter struct {
	hub     *logHub
	service string
	mu      sync.Mutex // guards buf
	buf     []byte
}

func newLineWriter(hub *logHub, service string) *lineWriter {
	return &lineWriter{hub: hub, service: service}
}

// Write implements io.Writer.
func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.hub.add(w.service, string(bytes.TrimRight(w.buf[:i], "\r")))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) >= maxLineBytes {
		w.hub.add(w.service, string(w.buf))
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

// Flush emits a trailing partial line.
func (w *lineWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.hub.add(w.service, string(w.buf))
		w.buf = w.buf[:0]
	}
}

// consoleSink writes prefixed lines to the serial console from one
// goroutine through a bounded queue: a slow console (115200 baud under
// TCG) must never block a service's output pipe or the agent. Lines that do
// not fit are counted and reported.
type consoleSink struct {
	w  io.Writer
	ch chan string
	mu sync.Mutex // guards dropped
	// dropped counts lines discarded since the last report.
	dropped int
	done    chan struct{}
}

func newConsoleSink(w io.Writer) *consoleSink {
	c := &consoleSink{w: w, ch: make(chan string, 4096), done: make(chan struct{})}
	go c.loop()
	return c
}

func (c *consoleSink) writeLine(service, line string) {
	select {
	case c.ch <- "[" + service + "] " + line + "\n":
	default:
		c.mu.Lock()
		c.dropped++
		c.mu.Unlock()
	}
}

func (c *consoleSink) loop() {
	defer close(c.done)
	for s := range c.ch {
		_, _ = io.WriteString(c.w, s)
		c.mu.Lock()
		d := c.dropped
		c.dropped = 0
		c.mu.Unlock()
		if d > 0 {
			_, _ = io.WriteString(c.w, "[agent] console: dropped lines because the console is slow: "+strconv.Itoa(d)+"\n")
		}
	}
}

// flush waits (bounded) until queued lines are written; used at shutdown.
func (c *consoleSink) flush(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for len(c.ch) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}
