package liveview

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// cdp is a minimal Chrome DevTools Protocol client: enough to evaluate
// script in a page and dispatch real input events to it, as a user's
// keyboard and mouse would.
type cdp struct {
	c    *websocket.Conn
	next atomic.Int64
}

// attachCDP finds the page whose URL contains urlPart in the Chromium
// started with --remote-debugging-port=0 --user-data-dir=dir.
func attachCDP(ctx context.Context, dir, urlPart string) (*cdp, error) {
	var port string
	for {
		b, err := os.ReadFile(filepath.Join(dir, "DevToolsActivePort"))
		if err == nil {
			port, _, _ = strings.Cut(string(b), "\n")
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("chromium never wrote DevToolsActivePort: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	for {
		var targets []struct {
			Type, URL            string
			WebSocketDebuggerURL string `json:"webSocketDebuggerUrl"`
		}
		// Each look has its own short deadline: on a loaded host one
		// request to a Chromium still starting can hang (seen in CI, a
		// whole minute), and the next one answers.
		lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
		req, _ := http.NewRequestWithContext(lctx, http.MethodGet, "http://127.0.0.1:"+port+"/json/list", nil)
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			err = json.NewDecoder(res.Body).Decode(&targets)
			res.Body.Close()
		}
		lcancel()
		for _, t := range targets {
			if t.Type == "page" && strings.Contains(t.URL, urlPart) {
				c, _, err := websocket.Dial(ctx, t.WebSocketDebuggerURL, nil)
				if err != nil {
					return nil, err
				}
				c.SetReadLimit(64 << 20)
				return &cdp{c: c}, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no page target for %s: %w", urlPart, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// call sends one command and waits for its result (events are skipped).
func (d *cdp) call(ctx context.Context, method string, params any, result any) error {
	id := d.next.Add(1)
	msg, _ := json.Marshal(map[string]any{"id": id, "method": method, "params": params})
	if err := d.c.Write(ctx, websocket.MessageText, msg); err != nil {
		return err
	}
	for {
		_, b, err := d.c.Read(ctx)
		if err != nil {
			return err
		}
		var resp struct {
			ID     int64           `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct{ Message string }
		}
		if err := json.Unmarshal(b, &resp); err != nil {
			return err
		}
		if resp.ID != id {
			continue
		}
		if resp.Error != nil {
			return fmt.Errorf("%s: %s", method, resp.Error.Message)
		}
		if result != nil {
			return json.Unmarshal(resp.Result, result)
		}
		return nil
	}
}

// eval evaluates a JavaScript expression and returns its value as JSON.
func (d *cdp) eval(ctx context.Context, expr string) (string, error) {
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
	}
	err := d.call(ctx, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &r)
	return string(r.Result.Value), err
}
