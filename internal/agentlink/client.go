// Package agentlink is the host side of the agent link: it dials a VM's
// hangar-agent over a QEMU virtio-serial chardev socket or a Firecracker
// hybrid-vsock socket, runs the handshake and one yamux session, and offers
// typed calls for the agent's operations. See package proto for the wire
// protocol.
package agentlink

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// Options configure a Client.
type Options struct {
	// Token is the per-VM token (proto.Params.Token). Required.
	Token string
	// Logger receives link-level messages; nil discards.
	Logger *slog.Logger
	// Now is the clock whose time is sent to the agent on connect (default time.Now).
	Now func() time.Time
}

// Client is one live session with an agent. It is safe for concurrent use.
type Client struct {
	conn         io.ReadWriteCloser
	sess         *yamux.Session
	http         *http.Client
	token        string
	agentVersion string
	log          *slog.Logger

	reverseMu sync.Mutex // guards reverse
	// reverse maps reverse-forward names to their handlers; nil until the
	// first Reverse starts the accept loop.
	reverse map[string]ReverseHandler
}

// bufferedConn reads through the handshake's reader, which may hold the
// first yamux bytes.
type bufferedConn struct {
	r *bufio.Reader
	io.WriteCloser
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = 15 * time.Second
	cfg.MaxStreamWindowSize = 1 << 20
	// AcceptBacklog stays yamux's default (256): it also caps the streams
	// this side has opened and the agent not yet acknowledged, and a
	// small value stalls calls to a busy guest. Streams the guest opens
	// are bounded by acceptStreams taking each at once, not by the
	// backlog (yamux resets those beyond it).
	return cfg
}

// New runs the handshake over conn (a fresh connection to the agent's
// stream) and starts the session. It waits for the agent until ctx ends, so
// a boot deadline belongs in ctx. On error conn is closed.
func New(ctx context.Context, conn io.ReadWriteCloser, opts Options) (*Client, error) {
	if opts.Token == "" {
		conn.Close()
		return nil, errors.New("agent link: empty token")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	br, version, err := proto.ClientHandshake(ctx, conn, opts.Now)
	if !stop() || err != nil {
		conn.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("agent link handshake: %w", err)
	}
	sess, err := yamux.Client(&bufferedConn{r: br, WriteCloser: conn}, yamuxConfig())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("agent link session: %w", err)
	}
	c := &Client{conn: conn, sess: sess, token: opts.Token, agentVersion: version, log: opts.Logger}
	c.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return c.openStream(ctx)
		},
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        time.Minute,
		DisableCompression:     true,
		MaxResponseHeaderBytes: MaxResponseHeaderBytes,
	}}
	// Every stream the guest opens is taken at once and either handed to
	// a reverse-forward handler or closed: an untaken stream would pin
	// its receive window in host memory for the session's lifetime.
	go c.acceptStreams()
	return c, nil
}

// AgentVersion is the version the agent announced in the handshake.
func (c *Client) AgentVersion() string { return c.agentVersion }

// Done is closed when the session ends (agent gone, connection closed).
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

// Close ends the session and the connection.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	err := c.sess.Close()
	c.conn.Close()
	return err
}

func (c *Client) openStream(ctx context.Context) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s, err := c.sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open agent stream: %w", err)
	}
	return s, nil
}

func (c *Client) newRequest(ctx context.Context, method, path string, q url.Values, body io.Reader) (*http.Request, error) {
	u := "http://agent" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set(proto.TokenHeader, c.token)
	return req, nil
}

// do sends a request and turns non-2xx answers into *proto.Error.
func (c *Client) do(req *http.Request) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

func decodeError(resp *http.Response) error {
	var body proto.ErrorBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if json.Unmarshal(b, &body) == nil && body.Error != nil {
		body.Error.Status = resp.StatusCode
		return body.Error
	}
	return &proto.Error{Status: resp.StatusCode, Code: proto.CodeInternal, Message: "unexpected answer " + resp.Status}
}

func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	req, err := c.newRequest(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return err
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := decodeJSON(resp.Body, v); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}

func (c *Client) postJSON(ctx context.Context, path string, in any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := c.newRequest(ctx, http.MethodPost, path, nil, strings.NewReader(string(b)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Health returns the agent's version, uptime, readiness and services.
func (c *Client) Health(ctx context.Context) (proto.Health, error) {
	var h proto.Health
	if err := c.getJSON(ctx, proto.PathHealth, &h); err != nil {
		return h, fmt.Errorf("agent health: %w", err)
	}
	return h, nil
}

// Services returns every supervised service's status.
func (c *Client) Services(ctx context.Context) ([]proto.ServiceStatus, error) {
	var s []proto.ServiceStatus
	if err := c.getJSON(ctx, proto.PathServices, &s); err != nil {
		return nil, fmt.Errorf("agent services: %w", err)
	}
	return s, nil
}

// SetClock sets the guest's clock to t (call after a snapshot restore; the
// handshake already sets it on every connect).
func (c *Client) SetClock(ctx context.Context, t time.Time) error {
	if err := c.postJSON(ctx, proto.PathClock, proto.ClockRequest{UnixNano: t.UnixNano()}); err != nil {
		return fmt.Errorf("agent set clock: %w", err)
	}
	return nil
}

// Shutdown asks the agent to stop its services, sync, unmount and power off
// (or reboot). It returns once the agent accepted; wait for the VM to exit.
func (c *Client) Shutdown(ctx context.Context, reboot bool) error {
	if err := c.postJSON(ctx, proto.PathShutdown, proto.ShutdownRequest{Reboot: reboot}); err != nil {
		return fmt.Errorf("agent shutdown: %w", err)
	}
	return nil
}

// Events opens the agent's event stream. The first event is always
// proto.EventHello with the current health; proto.EventReady follows (or
// is implied by Health.Ready) when every required service is ready. The
// channel closes when ctx ends or the stream breaks; reopen to resync.
func (c *Client) Events(ctx context.Context) (<-chan proto.Event, error) {
	req, err := c.newRequest(ctx, http.MethodGet, proto.PathEvents, nil, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, fmt.Errorf("agent events: %w", err)
	}
	ch := make(chan proto.Event, 16)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		dec := newNDJSONReader(resp.Body)
		for {
			var ev proto.Event
			if err := dec.next(&ev); err != nil {
				if !errors.Is(err, io.EOF) && ctx.Err() == nil {
					c.log.Warn("agent event stream refused", "err", err)
				}
				return
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// Logs calls fn for each kept log line (of one service, or all when
// req.Service is empty, oldest first) and, with req.Follow, for each new
// line until ctx ends or fn returns an error.
func (c *Client) Logs(ctx context.Context, req proto.LogsRequest, fn func(proto.LogLine) error) error {
	q := url.Values{}
	if req.Service != "" {
		q.Set(proto.QueryService, req.Service)
	}
	if req.Follow {
		q.Set(proto.QueryFollow, "1")
	}
	if req.Tail > 0 {
		q.Set(proto.QueryTail, strconv.Itoa(req.Tail))
	}
	hreq, err := c.newRequest(ctx, http.MethodGet, proto.PathLogs, q, nil)
	if err != nil {
		return err
	}
	resp, err := c.do(hreq)
	if err != nil {
		return fmt.Errorf("agent logs: %w", err)
	}
	defer resp.Body.Close()
	dec := newNDJSONReader(resp.Body)
	for {
		var l proto.LogLine
		if err := dec.next(&l); err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("agent logs: %w", err)
		}
		if err := fn(l); err != nil {
			return err
		}
	}
}

// PutFileRequest describes a file to write in the guest.
type PutFileRequest struct {
	// Path is absolute; ".." components and symlinks anywhere on it are refused.
	Path string
	// Mode of the file (default 0644).
	Mode uint32
	// UID and GID own the file when set.
	UID, GID *int
	// Mkdir creates missing parent directories (mode 0755, owned like the file).
	Mkdir bool
	// Size of content when known (-1 or 0: unknown, sent chunked).
	Size int64
}

// PutFile writes content to req.Path atomically (temporary file, fsync,
// rename). The agent refuses files above its size limit.
func (c *Client) PutFile(ctx context.Context, req PutFileRequest, content io.Reader) (proto.FileStat, error) {
	q := url.Values{proto.QueryPath: {req.Path}}
	if req.Mode != 0 {
		q.Set(proto.QueryMode, strconv.FormatUint(uint64(req.Mode), 8))
	}
	if req.UID != nil {
		q.Set(proto.QueryUID, strconv.Itoa(*req.UID))
	}
	if req.GID != nil {
		q.Set(proto.QueryGID, strconv.Itoa(*req.GID))
	}
	if req.Mkdir {
		q.Set(proto.QueryMkdir, "1")
	}
	hreq, err := c.newRequest(ctx, http.MethodPut, proto.PathFiles, q, content)
	if err != nil {
		return proto.FileStat{}, err
	}
	if req.Size > 0 {
		hreq.ContentLength = req.Size
	}
	hreq.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.do(hreq)
	if err != nil {
		return proto.FileStat{}, fmt.Errorf("agent put file: %w", err)
	}
	defer resp.Body.Close()
	var st proto.FileStat
	if err := decodeJSON(resp.Body, &st); err != nil {
		return st, fmt.Errorf("agent put file: decode answer: %w", err)
	}
	return st, nil
}

// GetFile copies the regular file at path to w, at most maxBytes
// (DefaultMaxFileBytes when maxBytes <= 0). The cap is enforced here: it is
// also sent to the agent so an honest one refuses before sending, but a
// guest that ignores it gets an error wrapping ErrTooLarge after at most
// maxBytes+1 bytes were copied to w (the caller discards w on error).
func (c *Client) GetFile(ctx context.Context, path string, maxBytes int64, w io.Writer) (proto.FileStat, error) {
	body, st, err := c.OpenFile(ctx, path, maxBytes)
	if err != nil {
		return st, err
	}
	defer body.Close()
	n, err := io.Copy(w, body)
	if err != nil {
		return st, err
	}
	if st.Size < 0 {
		st.Size = n
	}
	return st, nil
}

// OpenFile starts reading the regular file at path and returns its stat
// (Size is -1 when the agent did not announce it) and a reader of its
// content, so callers can stream it without staging it anywhere. The
// reader fails with an error wrapping ErrTooLarge past maxBytes
// (DefaultMaxFileBytes when maxBytes <= 0), and with an error when the
// content ends short of the announced size. A size the agent announces
// above maxBytes is refused before any content is read.
func (c *Client) OpenFile(ctx context.Context, path string, maxBytes int64) (io.ReadCloser, proto.FileStat, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxFileBytes
	}
	q := url.Values{proto.QueryPath: {path}}
	q.Set(proto.QueryMax, strconv.FormatInt(maxBytes, 10))
	hreq, err := c.newRequest(ctx, http.MethodGet, proto.PathFiles, q, nil)
	if err != nil {
		return nil, proto.FileStat{}, err
	}
	resp, err := c.do(hreq)
	if err != nil {
		return nil, proto.FileStat{}, fmt.Errorf("agent get file: %w", err)
	}
	st := proto.FileStat{Path: path, Size: resp.ContentLength}
	if m, err := strconv.ParseUint(resp.Header.Get(proto.HeaderMode), 8, 32); err == nil {
		st.Mode = uint32(m)
	}
	st.UID, _ = strconv.Atoi(resp.Header.Get(proto.HeaderUID))
	st.GID, _ = strconv.Atoi(resp.Header.Get(proto.HeaderGID))
	if st.Size > maxBytes {
		resp.Body.Close()
		return nil, st, fmt.Errorf("agent get file: %w", tooLarge(fmt.Sprintf("file of %d bytes", st.Size), maxBytes))
	}
	// cap+1: a body longer than the cap shows itself by its extra byte,
	// whether or not the agent announced its length.
	return &fileBody{body: resp.Body, r: io.LimitReader(resp.Body, maxBytes+1), max: maxBytes, size: st.Size}, st, nil
}

// fileBody is OpenFile's reader.
type fileBody struct {
	body io.Closer
	r    io.Reader
	max  int64
	size int64 // announced, or -1
	n    int64
}

func (f *fileBody) Read(p []byte) (int, error) {
	m, err := f.r.Read(p)
	f.n += int64(m)
	if f.n > f.max {
		return 0, fmt.Errorf("agent get file: %w", tooLarge("file", f.max))
	}
	if errors.Is(err, io.EOF) && f.size >= 0 && f.n != f.size {
		return m, fmt.Errorf("agent get file: got %d of %d bytes", f.n, f.size)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("agent get file: %w", err)
	}
	return m, err
}

func (f *fileBody) Close() error { return f.body.Close() }

// upgrade sends an Upgrade request on a fresh stream and returns the stream
// as a raw pipe once the agent answered 101.
func (c *Client) upgrade(ctx context.Context, path string, q url.Values, protocol string, body []byte) (net.Conn, *bufio.Reader, error) {
	stream, err := c.openStream(ctx)
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { abort(stream) })
	defer stop()
	req, err := c.newRequest(ctx, http.MethodPost, path, q, strings.NewReader(string(body)))
	if err != nil {
		stream.Close()
		return nil, nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", protocol)
	req.Header.Set("Content-Type", "application/json")
	if err := req.Write(stream); err != nil {
		stream.Close()
		return nil, nil, fmt.Errorf("send request: %w", err)
	}
	resp, br, err := readResponse(stream, req)
	if err != nil {
		stream.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, nil, fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		err := decodeError(resp)
		resp.Body.Close()
		stream.Close()
		return nil, nil, err
	}
	return stream, br, nil
}

// abort ends a stream's pending reads and writes at once, then closes it.
// Closing alone is not enough when the guest is frozen: yamux's Close waits
// until its FIN is written (up to its write timeout) before it wakes a
// reader, so a call would outlive its context by that much.
func abort(stream net.Conn) {
	_ = stream.SetDeadline(time.Unix(1, 0))
	go stream.Close()
}

// DialPort opens a raw byte stream to 127.0.0.1:port inside the guest (no
// guest network needed). Closing the returned conn closes the TCP
// connection in the guest.
func (c *Client) DialPort(ctx context.Context, port int) (net.Conn, error) {
	q := url.Values{proto.QueryPort: {strconv.Itoa(port)}}
	stream, br, err := c.upgrade(ctx, proto.PathForward, q, proto.UpgradeForward, nil)
	if err != nil {
		return nil, fmt.Errorf("agent dial port %d: %w", port, err)
	}
	return &readerConn{Conn: stream, r: br}, nil
}

// readerConn is a net.Conn whose reads go through r (bytes the agent sent
// right after the 101, e.g. an RFB greeting, may already be buffered there).
type readerConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// ConfigureNetwork sets up the guest's interface, default route, resolver
// and proxy environment.
func (c *Client) ConfigureNetwork(ctx context.Context, cfg proto.NetworkConfig) error {
	if err := c.postJSON(ctx, proto.PathNetwork, cfg); err != nil {
		return fmt.Errorf("agent configure network: %w", err)
	}
	return nil
}
