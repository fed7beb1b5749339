package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
)

// QMP is a minimal client of QEMU's machine protocol: newline-delimited
// JSON over a Unix socket. After the greeting and qmp_capabilities, the
// client sends {"execute":…,"arguments":…,"id":n} and QEMU answers
// {"return":…,"id":n} or {"error":{"class","desc"},"id":n}, interleaved
// with asynchronous {"event":…,"data":…,"timestamp":…} messages.
type QMP struct {
	conn net.Conn
	log  *slog.Logger
	// wmu serializes writes so commands do not interleave on the wire.
	wmu sync.Mutex

	mu sync.Mutex // guards nextID, pending, subs, nextSub, err
	// nextID numbers commands; QEMU echoes the id in its answer.
	nextID  uint64
	pending map[uint64]chan qmpReply
	subs    map[int]chan Event
	nextSub int
	// err is why the read loop ended; set once.
	err error

	closed chan struct{}
	// Version is QEMU's version from the greeting ("7.2.22").
	Version string
}

// Event is an asynchronous QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
	// Timestamp is QEMU's {"seconds","microseconds"}.
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// QMPError is an error answer to a command.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// ErrQMPClosed is returned for commands pending or issued after the QMP
// connection closed (usually: QEMU exited).
var ErrQMPClosed = errors.New("qmp connection closed")

type qmpReply struct {
	ret json.RawMessage
	err *QMPError
}

type qmpMessage struct {
	QMP *struct {
		Version struct {
			QEMU struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
		} `json:"version"`
	} `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *QMPError       `json:"error"`
	ID     *uint64         `json:"id"`
	Event  string          `json:"event"`
}

// NewQMP performs the handshake on conn (greeting, qmp_capabilities) and
// starts reading. ctx bounds the handshake.
func NewQMP(ctx context.Context, conn net.Conn, log *slog.Logger) (*QMP, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	q := &QMP{
		conn:    conn,
		log:     log,
		pending: map[uint64]chan qmpReply{},
		subs:    map[int]chan Event{},
		closed:  make(chan struct{}),
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	// Unblock the handshake read when ctx is cancelled without deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	r := bufio.NewReaderSize(conn, 64*1024)
	line, err := r.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read qmp greeting: %w", errors.Join(ctx.Err(), err))
	}
	var g qmpMessage
	if err := json.Unmarshal(line, &g); err != nil || g.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("unexpected qmp greeting %q", truncate(line, 200))
	}
	v := g.QMP.Version.QEMU
	q.Version = fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
	_ = conn.SetReadDeadline(timeZero)
	go q.readLoop(r)
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *QMP) readLoop(r *bufio.Reader) {
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			break
		}
		var m qmpMessage
		if jerr := json.Unmarshal(line, &m); jerr != nil {
			q.log.Warn("undecodable qmp message", "error", jerr, "message", string(truncate(line, 200)))
			continue
		}
		switch {
		case m.Event != "":
			var ev Event
			if jerr := json.Unmarshal(line, &ev); jerr == nil {
				q.dispatch(ev)
			}
		case m.ID != nil:
			q.mu.Lock()
			ch := q.pending[*m.ID]
			delete(q.pending, *m.ID)
			q.mu.Unlock()
			if ch != nil {
				ch <- qmpReply{ret: m.Return, err: m.Error}
			}
		default:
			q.log.Debug("qmp message without id", "message", string(truncate(line, 200)))
		}
	}
	q.mu.Lock()
	q.err = err
	for id, ch := range q.pending {
		close(ch)
		delete(q.pending, id)
	}
	for id, ch := range q.subs {
		close(ch)
		delete(q.subs, id)
	}
	q.mu.Unlock()
	close(q.closed)
}

func (q *QMP) dispatch(ev Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, ch := range q.subs {
		select {
		case ch <- ev:
		default:
			q.log.Warn("qmp event dropped: subscriber not reading", "event", ev.Name)
		}
	}
}

// Subscribe returns a channel of events (closed when the connection ends)
// and a function to unsubscribe. Events arriving while the buffer is full
// are dropped with a warning.
func (q *QMP) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 64)
	q.mu.Lock()
	select {
	case <-q.closed:
		q.mu.Unlock()
		close(ch)
		return ch, func() {}
	default:
	}
	id := q.nextSub
	q.nextSub++
	q.subs[id] = ch
	q.mu.Unlock()
	return ch, func() {
		q.mu.Lock()
		if _, ok := q.subs[id]; ok {
			delete(q.subs, id)
			close(ch)
		}
		q.mu.Unlock()
	}
}

// Execute runs cmd with args (nil for none) and decodes the "return" value
// into result (nil to ignore it). An error answer is a *QMPError.
func (q *QMP) Execute(ctx context.Context, cmd string, args, result any) error {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	ch := make(chan qmpReply, 1)
	q.mu.Lock()
	select {
	case <-q.closed:
		q.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", cmd, ErrQMPClosed)
	default:
	}
	id := q.nextID
	q.nextID++
	q.pending[id] = ch
	q.mu.Unlock()
	req["id"] = id
	b, err := json.Marshal(req)
	if err != nil {
		q.forget(id)
		return fmt.Errorf("qmp %s: encode: %w", cmd, err)
	}
	q.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = q.conn.SetWriteDeadline(dl)
	}
	_, err = q.conn.Write(append(b, '\n'))
	_ = q.conn.SetWriteDeadline(timeZero)
	q.wmu.Unlock()
	if err != nil {
		q.forget(id)
		return fmt.Errorf("qmp %s: write: %w", cmd, err)
	}
	select {
	case rep, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp %s: %w", cmd, ErrQMPClosed)
		}
		if rep.err != nil {
			rep.err.Command = cmd
			return rep.err
		}
		if result != nil && len(rep.ret) > 0 {
			if err := json.Unmarshal(rep.ret, result); err != nil {
				return fmt.Errorf("qmp %s: decode return: %w", cmd, err)
			}
		}
		return nil
	case <-ctx.Done():
		// The answer may still come; the read loop drops it.
		q.forget(id)
		return fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

func (q *QMP) forget(id uint64) {
	q.mu.Lock()
	delete(q.pending, id)
	q.mu.Unlock()
}

// Closed is closed when the connection has ended.
func (q *QMP) Closed() <-chan struct{} { return q.closed }

// Close ends the connection.
func (q *QMP) Close() error {
	err := q.conn.Close()
	<-q.closed
	return err
}

// StatusInfo is the answer of query-status.
type StatusInfo struct {
	Running bool `json:"running"`
	// Status is QEMU's run state: "running", "paused", "inmigrate",
	// "postmigrate", "prelaunch", "shutdown", "guest-panicked", …
	Status string `json:"status"`
}

// QueryStatus runs query-status.
func (q *QMP) QueryStatus(ctx context.Context) (StatusInfo, error) {
	var st StatusInfo
	err := q.Execute(ctx, "query-status", nil, &st)
	return st, err
}

// MigrationInfo is the part of query-migrate hangar reads.
type MigrationInfo struct {
	// Status: "none", "setup", "active", "completed", "failed",
	// "cancelled", …
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	TotalTime int64  `json:"total-time"`
	RAM       *struct {
		Transferred int64 `json:"transferred"`
		Total       int64 `json:"total"`
	} `json:"ram"`
}

// QueryMigrate runs query-migrate.
func (q *QMP) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var mi MigrationInfo
	err := q.Execute(ctx, "query-migrate", nil, &mi)
	return mi, err
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
