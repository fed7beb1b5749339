package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/coder/websocket"

	"github.com/hangar-vm/hangar/pkg/api"
)

// Shell runs an interactive terminal in a VM (GET /api/v1/vms/{id}/shell):
// stdin's bytes are typed, the terminal's output goes to stdout, sizes
// received on resize change the terminal's size. It returns the command's
// exit code when it ends.
func (c *Client) Shell(ctx context.Context, id string, req api.ShellRequest, stdin io.Reader, stdout io.Writer, resize <-chan [2]uint16) (int, error) {
	q := url.Values{}
	for _, a := range req.Argv {
		q.Add("arg", a)
	}
	if req.User != "" {
		q.Set("user", req.User)
	}
	if req.Term != "" {
		q.Set("term", req.Term)
	}
	if req.Rows > 0 && req.Cols > 0 {
		q.Set("rows", strconv.Itoa(int(req.Rows)))
		q.Set("cols", strconv.Itoa(int(req.Cols)))
	}
	u := strings.Replace(c.base, "http", "ws", 1) + "/api/v1/vms/" + url.PathEscape(id) + "/shell?" + q.Encode()
	h := http.Header{}
	h.Set("Authorization", "Bearer "+c.token)
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 {
			return 0, decodeErrorResponse(resp)
		}
		return 0, fmt.Errorf("open the terminal: %w", err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(4 << 20)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				if werr := conn.Write(ctx, websocket.MessageBinary, buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case sz, ok := <-resize:
				if !ok {
					return
				}
				b, _ := json.Marshal(api.ShellControl{Type: "resize", Rows: sz[0], Cols: sz[1]})
				if conn.Write(ctx, websocket.MessageText, b) != nil {
					return
				}
			}
		}
	}()
	for {
		typ, b, err := conn.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			return 0, fmt.Errorf("the terminal ended without an exit code: %w", err)
		}
		if typ == websocket.MessageBinary {
			if _, err := stdout.Write(b); err != nil {
				return 0, err
			}
			continue
		}
		var m api.ShellControl
		if json.Unmarshal(b, &m) == nil && m.Type == "exit" {
			conn.Close(websocket.StatusNormalClosure, "")
			return m.ExitCode, nil
		}
	}
}

// decodeErrorResponse turns an API error answer into an *Error.
func decodeErrorResponse(resp *http.Response) error {
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &body) != nil || body.Error.Message == "" {
		return &Error{Status: resp.StatusCode, Code: "http_" + strconv.Itoa(resp.StatusCode), Message: resp.Status}
	}
	return &Error{Status: resp.StatusCode, Code: body.Error.Code, Message: body.Error.Message}
}
