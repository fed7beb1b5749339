package config

import (
	"strings"
	"testing"
)

// TestWebRTCValidation: the defaults pass; bad modes, addresses, port
// ranges and rates are each named.
func TestWebRTCValidation(t *testing.T) {
	if errs := Default().WebRTC.validate(); len(errs) != 0 {
		t.Fatalf("defaults: %v", errs)
	}
	for name, c := range map[string]struct {
		mutate func(*WebRTC)
		want   string
	}{
		"mode":        {func(w *WebRTC) { w.TURN.Mode = "maybe" }, "webrtc.turn.mode"},
		"listen":      {func(w *WebRTC) { w.TURN.Listen = "3478" }, "webrtc.turn.listen"},
		"public ip":   {func(w *WebRTC) { w.TURN.PublicIP = "turn.example" }, "webrtc.turn.public_ip"},
		"range order": {func(w *WebRTC) { w.TURN.RelayPorts = "50000-49000" }, "webrtc.turn.relay_ports"},
		"range form":  {func(w *WebRTC) { w.TURN.RelayPorts = "49000" }, "webrtc.turn.relay_ports"},
		"bitrate":     {func(w *WebRTC) { w.Bitrate = 10 }, "webrtc.bitrate"},
		"fps":         {func(w *WebRTC) { w.MaxFPS = 0 }, "webrtc.max_fps"},
		"quota":       {func(w *WebRTC) { w.TURN.MaxAllocationsPerSession = 0 }, "max_allocations_per_session"},
	} {
		w := Default().WebRTC
		c.mutate(&w)
		errs := w.validate()
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), c.want) {
			t.Errorf("%s: errors %v, want one naming %s", name, errs, c.want)
		}
	}
	lo, hi, err := TURN{RelayPorts: "49160-49200"}.RelayPortRange()
	if err != nil || lo != 49160 || hi != 49200 {
		t.Fatalf("range: %d-%d %v", lo, hi, err)
	}
}
