package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os/exec"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/liveview/webrtc"
)

// setupWebRTC builds the live view's WebRTC transport and, when it is on,
// the embedded TURN server. It returns a nil server (the page then uses
// noVNC only) when WebRTC is off or its encoder is missing: a missing
// ffmpeg is a warning, not a reason for the daemon not to start.
func (d *Daemon) setupWebRTC(log *slog.Logger, alive func(context.Context, string) bool) (*webrtc.Server, *webrtc.Metrics, error) {
	metrics := webrtc.NewMetrics()
	if err := metrics.Register(d.api.Registry()); err != nil {
		return nil, nil, fmt.Errorf("live view metrics: %w", err)
	}
	c := d.cfg.WebRTC
	if !c.Enabled {
		return nil, metrics, nil
	}
	bin := c.FFmpeg
	if bin == "" {
		bin = webrtc.DefaultFFmpeg
	}
	if _, err := exec.LookPath(bin); err != nil {
		log.Warn("webrtc live view off: encoder not found (apt-get install ffmpeg)", "ffmpeg", bin)
		return nil, metrics, nil
	}
	listenHost, _, _ := net.SplitHostPort(d.cfg.Listen)
	loopback := isLoopback(listenHost)
	turnSrv, err := d.startTURN(c.TURN, listenHost, loopback, log, alive)
	if err != nil {
		return nil, nil, err
	}
	opts := webrtc.Options{
		FFmpeg: c.FFmpeg, Bitrate: c.Bitrate, MaxFPS: c.MaxFPS,
		Metrics: metrics, Log: log.With("component", "webrtc"),
		// A daemon on loopback serves viewers on the same host, which
		// reach its loopback candidates; so does a loopback TURN relay.
		LoopbackCandidates: loopback,
	}
	if turnSrv != nil {
		opts.TURN = turnSrv
		d.closers = append(d.closers, closer{"turn", func(context.Context) error { return turnSrv.Close() }})
	}
	srv, err := webrtc.New(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("webrtc: %w", err)
	}
	log.Info("webrtc live view on", "turn", turnSrv != nil)
	return srv, metrics, nil
}

// startTURN starts the embedded TURN server when the configuration asks
// for it. In auto mode it stays off for a daemon on loopback (every viewer
// is local) and, with a warning, when no public address can be worked out.
func (d *Daemon) startTURN(t config.TURN, listenHost string, loopback bool, log *slog.Logger, alive func(context.Context, string) bool) (*webrtc.TURN, error) {
	if t.Mode == "off" || (t.Mode == "auto" && loopback) {
		return nil, nil
	}
	listen := t.Listen
	if listen == "" {
		listen = net.JoinHostPort(listenHost, "3478")
	}
	host, _, _ := net.SplitHostPort(listen)
	public := t.PublicIP
	if public == "" {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			public = host
		}
	}
	if public == "" {
		if t.Mode == "on" {
			return nil, fmt.Errorf("webrtc.turn: listening on %q needs webrtc.turn.public_ip, the address browsers reach", listen)
		}
		log.Warn("embedded TURN off: set webrtc.turn.public_ip (the address browsers reach) to turn it on", "listen", listen)
		return nil, nil
	}
	lo, hi, _ := t.RelayPortRange()
	srv, err := webrtc.NewTURN(webrtc.TURNConfig{
		Listen: listen, TCP: t.TCP, PublicIP: public,
		RelayMinPort: lo, RelayMaxPort: hi,
		MaxAllocationsPerSession: t.MaxAllocationsPerSession,
		Alive:                    alive,
		Log:                      log.With("component", "turn"),
	})
	if err != nil {
		return nil, err
	}
	log.Info("embedded TURN server listening", "listen", listen, "public_ip", public, "tcp", t.TCP)
	return srv, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
