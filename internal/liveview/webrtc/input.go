package webrtc

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync/atomic"
	"unicode/utf8"

	"github.com/hangar-vm/hangar/internal/liveview/rfb"
)

// inputEvent is one message on the "input" data channel:
//
//	{"t":"key","down":true,"keysym":97}
//	{"t":"ptr","x":10,"y":20,"buttons":1}
//	{"t":"paste","text":"…"}
//
// Keysyms are X keysyms (the page computes them with noVNC's own keyboard
// code, so keys behave as in the VNC view); x and y are remote screen
// pixels; buttons is the RFB button mask.
type inputEvent struct {
	T       string `json:"t"`
	Down    bool   `json:"down"`
	Keysym  uint32 `json:"keysym"`
	X       int    `json:"x"`
	Y       int    `json:"y"`
	Buttons uint8  `json:"buttons"`
	Text    string `json:"text"`
}

// maxPasteBytes bounds a paste; RFB cut text is Latin-1, and a login form
// never needs more.
const maxPasteBytes = 64 << 10

// inputHandler turns data channel messages into RFB events.
//
// View-only views follow the VNC live view's rule (filter.go): anything
// that could change the remote desktop — key, pointer and cut-text events
// — is dropped, and only the pixels flow. Here every input message is one
// of those, so a view-only handler drops them all; the daemon enforces it,
// whatever the page does.
type inputHandler struct {
	rfb      *rfb.Client
	viewOnly bool
	metrics  *Metrics
	log      *slog.Logger
	dropped  atomic.Int64
}

func (h *inputHandler) handle(ctx context.Context, data []byte) {
	if h.viewOnly {
		h.metrics.InputDropped.Inc()
		if h.dropped.Add(1) == 1 {
			h.log.Info("view-only live view: input dropped")
		}
		return
	}
	var ev inputEvent
	if err := json.Unmarshal(data, &ev); err != nil {
		h.log.Debug("webrtc input: bad message", "err", err.Error())
		return
	}
	var err error
	switch ev.T {
	case "key":
		err = h.rfb.KeyEvent(ctx, ev.Down, ev.Keysym)
	case "ptr":
		err = h.rfb.Pointer(ctx, ev.X, ev.Y, ev.Buttons)
	case "paste":
		if len(ev.Text) > maxPasteBytes || !utf8.ValidString(ev.Text) {
			return
		}
		err = h.rfb.CutText(ctx, latin1(ev.Text))
	default:
		return
	}
	if err != nil {
		h.log.Debug("webrtc input: rfb write failed", "err", err.Error())
	}
}

// latin1 maps text to RFB's Latin-1 cut text, replacing what it cannot
// hold with '?'.
func latin1(s string) string {
	b := make([]byte, 0, len(s))
	for _, r := range s {
		if r > 0xff {
			r = '?'
		}
		b = append(b, byte(r))
	}
	return string(b)
}
