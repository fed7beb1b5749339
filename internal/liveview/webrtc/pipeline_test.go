package webrtc

import (
	"log/slog"
	"testing"
)

// TestEstimateHysteresis: the encoder is restarted (which costs a key
// frame) only when the bandwidth estimate moves far from the current
// bitrate, never above the configured ceiling or below the floor.
func TestEstimateHysteresis(t *testing.T) {
	p := &pipeline{minRate: 150_000, maxRate: 1_500_000, rate: 1_500_000, restart: make(chan struct{}, 1), log: slog.New(slog.DiscardHandler)}
	steps := []struct {
		bps     uint64
		restart bool
		rate    int
	}{
		{2_000_000, false, 1_500_000}, // above the ceiling: stay
		{1_400_000, false, 1_500_000}, // small drop: stay
		{1_000_000, true, 850_000},    // large drop: 85% of the estimate
		{1_100_000, false, 850_000},   // small rise: stay
		{5_000_000, true, 1_500_000},  // large rise: back to the ceiling
		{10_000, true, 150_000},       // collapse: the floor
	}
	for i, s := range steps {
		got := p.estimate(s.bps)
		restarted := len(p.restart) == 1
		if restarted {
			<-p.restart
		}
		if got != s.restart || restarted != s.restart || p.rate != s.rate {
			t.Fatalf("step %d (%d bps): restart %v/%v rate %d, want %v rate %d", i, s.bps, got, restarted, p.rate, s.restart, s.rate)
		}
	}
}
