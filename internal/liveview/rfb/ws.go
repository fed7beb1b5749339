package rfb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	neturl "net/url"

	"github.com/coder/websocket"
)

// StatusError is a websocket handshake the server answered with an HTTP
// status instead of an upgrade (403 for a refused token, 410 for an ended
// session, 502 when the VM cannot be reached).
type StatusError struct {
	Code int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("websocket handshake refused: %d %s", e.Code, http.StatusText(e.Code))
}

// DialWebsocket opens a websocket to url (ws:// or wss://) asking for the
// "binary" subprotocol, as noVNC does, and returns it as a byte stream
// (each write one binary message) ready for Handshake. ctx bounds the dial
// only. The URL is not part of any error, because it carries a token.
func DialWebsocket(ctx context.Context, url string) (net.Conn, error) {
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"binary"}})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, fmt.Errorf("live view websocket: %w", &StatusError{Code: resp.StatusCode})
		}
		return nil, fmt.Errorf("live view websocket: %w", redact(err))
	}
	return websocket.NetConn(context.WithoutCancel(ctx), c, websocket.MessageBinary), nil
}

// redact keeps the network cause of a dial failure and drops the rest:
// the websocket library's messages quote the URL, which carries a token.
func redact(err error) error {
	var ue *neturl.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return errors.New("websocket dial failed")
}
