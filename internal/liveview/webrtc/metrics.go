package webrtc

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the live view's transport counters. One set serves both
// transports: the VNC bridge counts its sessions under transport="vnc".
type Metrics struct {
	// Sessions is open live views by transport ("webrtc", "vnc").
	Sessions *prometheus.GaugeVec
	// Fallbacks counts WebRTC views that ended in a switch to noVNC, by
	// reason: "encoder" (the encoder died), "connect" (the viewer gave up
	// waiting for media), "error" (the pipeline failed otherwise).
	Fallbacks *prometheus.CounterVec
	// Frames counts encoded frames sent; Bytes their payload bytes, whose
	// rate is the bitrate.
	Frames prometheus.Counter
	Bytes  prometheus.Counter
	// EncodeSeconds is the time from a raw frame written to the encoder to
	// its encoded frame read back.
	EncodeSeconds prometheus.Histogram
	// InputDropped counts input events refused because the view is view
	// only.
	InputDropped prometheus.Counter
}

// NewMetrics builds unregistered metrics.
func NewMetrics() *Metrics {
	return &Metrics{
		Sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hangar_liveview_sessions",
			Help: "Open live views by transport.",
		}, []string{"transport"}),
		Fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hangar_liveview_webrtc_fallbacks_total",
			Help: "WebRTC live views that fell back to noVNC, by reason.",
		}, []string{"reason"}),
		Frames: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hangar_liveview_webrtc_frames_total",
			Help: "Encoded video frames sent over WebRTC.",
		}),
		Bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hangar_liveview_webrtc_video_bytes_total",
			Help: "Encoded video bytes sent over WebRTC (rate() is the bitrate).",
		}),
		EncodeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hangar_liveview_webrtc_encode_seconds",
			Help:    "Time to encode one frame on the host.",
			Buckets: []float64{0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32},
		}),
		InputDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hangar_liveview_webrtc_input_dropped_total",
			Help: "Input events dropped because the view is view only.",
		}),
	}
}

// Register adds the metrics to r.
func (m *Metrics) Register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.Sessions, m.Fallbacks, m.Frames, m.Bytes, m.EncodeSeconds, m.InputDropped} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
