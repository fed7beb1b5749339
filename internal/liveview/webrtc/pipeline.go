package webrtc

import (
	"context"
	"errors"
	"fmt"
	"image"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"

	"github.com/hangar-vm/hangar/internal/liveview/rfb"
)

// errEncoderDied is a pipeline that lost its encoder without asking: the
// viewer falls back to noVNC rather than the daemon restarting a process
// that may die again on the same input.
var errEncoderDied = errors.New("video encoder exited")

// rtpWriter is the video track (an interface so the pipeline can be
// tested without a peer connection).
type rtpWriter interface {
	WriteRTP(*rtp.Packet) error
}

// rtpMTU keeps packets under common path MTUs after SRTP and TURN
// framing.
const rtpMTU = 1200

// pipeline turns one RFB connection into VP8 samples on one track. It
// reads the screen only as the server reports damage and encodes a frame
// only when something changed, at most maxFPS a second: a static login
// page costs no frames at all.
type pipeline struct {
	rfb     *rfb.Client
	track   rtpWriter
	cfg     encoderConfig
	maxFPS  int
	minRate int // lowest bitrate the estimate may push the encoder to
	maxRate int // configured bitrate, the ceiling
	metrics *Metrics
	log     *slog.Logger
	// onEncoder is told of each encoder started (tests kill it).
	onEncoder func(pid int)

	// mu guards screen, dirty and rate; damage is signalled (without
	// blocking) whenever dirty is set.
	mu     sync.Mutex
	screen *image.RGBA
	dirty  bool
	rate   int
	damage chan struct{}
	// restart asks for a new encoder: a key frame for a receiver that lost
	// the stream, or a new bitrate.
	restart chan struct{}
	// started is closed once the first full screen is in.
	started chan struct{}
	// packetizer and clock belong to the track, not to one encoder, so
	// sequence numbers and timestamps run on across restarts; only the
	// forward goroutine of the current encoder uses them.
	packetizer rtp.Packetizer
	clock      rtpClock
}

func newPipeline(c *rfb.Client, track rtpWriter, cfg encoderConfig, maxFPS int, m *Metrics, log *slog.Logger) *pipeline {
	cfg.width, cfg.height = c.Width, c.Height
	return &pipeline{
		rfb: c, track: track, cfg: cfg, maxFPS: maxFPS,
		minRate: min(150_000, cfg.bitrate), maxRate: cfg.bitrate, rate: cfg.bitrate,
		metrics: m, log: log,
		screen:  image.NewRGBA(image.Rect(0, 0, c.Width, c.Height)),
		damage:  make(chan struct{}, 1),
		restart: make(chan struct{}, 1),
		started: make(chan struct{}),
		// Payload type and SSRC are set by the track for each binding.
		packetizer: rtp.NewPacketizer(rtpMTU, 0, 0, &codecs.VP8Payloader{EnablePictureID: true}, rtp.NewRandomSequencer(), 90000),
		clock:      rtpClock{start: time.Now(), base: rand.Uint32()},
	}
}

// capture keeps p.screen current from RFB updates until ctx ends or the
// connection fails. It reads into its own copy, because ReadUpdate blocks
// until the server has damage to report, and copies only the damaged
// rectangles under the lock.
func (p *pipeline) capture(ctx context.Context) error {
	shadow := image.NewRGBA(p.screen.Rect)
	first := true
	for {
		rects, err := p.rfb.ReadUpdate(ctx, shadow, !first)
		if err != nil {
			return err
		}
		p.mu.Lock()
		for _, r := range rects {
			r = r.Intersect(shadow.Rect)
			for y := r.Min.Y; y < r.Max.Y; y++ {
				o := shadow.PixOffset(r.Min.X, y)
				copy(p.screen.Pix[o:o+4*r.Dx()], shadow.Pix[o:o+4*r.Dx()])
			}
		}
		if len(rects) > 0 || first {
			p.dirty = true
			select {
			case p.damage <- struct{}{}:
			default:
			}
		}
		p.mu.Unlock()
		if first {
			close(p.started)
			first = false
		}
	}
}

// requestKeyFrame asks for a fresh encoder, which starts with a key frame.
func (p *pipeline) requestKeyFrame() {
	select {
	case p.restart <- struct{}{}:
	default:
	}
}

// estimate takes the sender-side bandwidth estimate (bits per second). ffmpeg cannot change libvpx's target while running, so a new
// bitrate means a new encoder (and a key frame); it happens only on a
// large change, and the caller limits how often.
func (p *pipeline) estimate(bps uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := min(max(int(float64(bps)*0.85), p.minRate), p.maxRate)
	if want < p.rate*7/10 || (p.rate < p.maxRate && want > p.rate*3/2) {
		p.log.Debug("webrtc bitrate change", "from", p.rate, "to", want)
		p.rate = want
		p.requestKeyFrame()
		return true
	}
	return false
}

// run encodes until ctx ends (nil) or the encoder dies (errEncoderDied).
func (p *pipeline) run(ctx context.Context) error {
	select {
	case <-p.started:
	case <-ctx.Done():
		return nil
	}
	interval := time.Second / time.Duration(max(p.maxFPS, 1))
	var buf []byte
	for {
		p.mu.Lock()
		cfg := p.cfg
		cfg.bitrate = p.rate
		p.mu.Unlock()
		enc, err := startEncoder(ctx, cfg)
		if err != nil {
			return fmt.Errorf("%w: %w", errEncoderDied, err)
		}
		if p.onEncoder != nil {
			p.onEncoder(enc.pid())
		}
		// writes holds the time each raw frame went in, for encode time;
		// libvpx with no look-ahead returns one frame per frame written.
		writes := make(chan time.Time, 64)
		readDone := make(chan error, 1)
		go func() { readDone <- p.forward(enc, writes) }()
		// A new encoder's first frame is a key frame of the whole screen.
		p.mu.Lock()
		p.dirty = true
		p.mu.Unlock()
		last := time.Time{}
		restart := false
		for !restart {
			p.mu.Lock()
			dirty := p.dirty
			p.mu.Unlock()
			if dirty {
				if wait := time.Until(last.Add(interval)); wait > 0 {
					t := time.NewTimer(wait)
					select {
					case <-t.C:
					case <-ctx.Done():
						t.Stop()
						enc.kill()
						return nil
					}
				}
				p.mu.Lock()
				buf = append(buf[:0], p.screen.Pix...)
				p.dirty = false
				p.mu.Unlock()
				last = time.Now()
				select {
				case writes <- last:
				default:
				}
				if err := enc.write(buf); err != nil {
					if ctx.Err() != nil {
						enc.kill()
						return nil
					}
					<-enc.done
					if enc.failed() {
						return fmt.Errorf("%w: %v", errEncoderDied, enc.err)
					}
					return err
				}
				continue
			}
			select {
			case <-ctx.Done():
				enc.kill()
				return nil
			case <-p.damage:
			case <-p.restart:
				enc.kill()
				<-readDone
				restart = true
			case err := <-readDone:
				if ctx.Err() != nil {
					return nil
				}
				<-enc.done
				if enc.failed() {
					return fmt.Errorf("%w: %v", errEncoderDied, enc.err)
				}
				return fmt.Errorf("encoder output: %w", err)
			}
		}
	}
}

// forward packetizes encoded frames onto the track until the encoder's
// output ends. Each frame's RTP timestamp is the wall-clock time it came
// out of the encoder. (pion's sample track advances the timestamp after a
// frame by that frame's duration, which is unknown when frames come only
// on damage; guessing it made the browser's jitter buffer see seconds of
// jitter after every idle spell and hold frames for hundreds of
// milliseconds.)
func (p *pipeline) forward(enc *encoder, writes chan time.Time) error {
	if err := enc.readHeader(); err != nil {
		return err
	}
	for {
		f, err := enc.read()
		if err != nil {
			return err
		}
		select {
		case w := <-writes:
			p.metrics.EncodeSeconds.Observe(f.at.Sub(w).Seconds())
		default:
		}
		ts := p.clock.timestamp(f.at)
		for _, pkt := range p.packetizer.Packetize(f.data, 0) {
			pkt.Timestamp = ts
			if err := p.track.WriteRTP(pkt); err != nil {
				return err
			}
		}
		p.metrics.Frames.Inc()
		p.metrics.Bytes.Add(float64(len(f.data)))
	}
}

// rtpClock maps wall-clock times to 90 kHz RTP timestamps from a random
// origin (RFC 3550 wants one), continuous across encoder restarts.
type rtpClock struct {
	start time.Time
	base  uint32
}

func (c rtpClock) timestamp(t time.Time) uint32 {
	return c.base + uint32(t.Sub(c.start)*90/time.Millisecond)
}
