package webrtc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/cc"
	"github.com/pion/interceptor/pkg/gcc"
	"github.com/pion/rtcp"
	pion "github.com/pion/webrtc/v4"

	"github.com/hangar-vm/hangar/internal/liveview/rfb"
)

// Defaults for Options.
const (
	DefaultBitrate       = 1_500_000
	DefaultMaxFPS        = 25
	DefaultCredentialTTL = 10 * time.Minute
)

// Options configure the WebRTC transport.
type Options struct {
	// FFmpeg is the encoder binary; empty means "ffmpeg" in PATH.
	FFmpeg string
	// Bitrate is the encoder's target (and ceiling) in bits per second;
	// the receiver's estimate can lower it.
	Bitrate int
	// MaxFPS caps frames a second while the screen changes.
	MaxFPS int
	// TURN, when set, is handed to browsers (with a fresh credential per
	// view) as their ICE server; nil leaves them with host candidates.
	TURN *TURN
	// CredentialTTL is how long a TURN credential stays valid.
	CredentialTTL time.Duration
	// LoopbackCandidates lets the daemon's peer offer 127.0.0.1: needed
	// when the TURN relay itself is on loopback (tests, a TURN server
	// reached through an SSH tunnel), useless otherwise.
	LoopbackCandidates bool
	// Metrics may be nil.
	Metrics *Metrics
	Log     *slog.Logger
	// OnEncoder, if set, is told the pid of every encoder started (tests
	// kill it to play a crash).
	OnEncoder func(sessionID string, pid int)
}

// Server runs WebRTC live views. Token checks, the session's liveness and
// the websocket upgrade stay with the liveview package, which hands each
// accepted signalling websocket to Serve.
type Server struct {
	opts Options
}

// New builds the transport. It fails only on a pion setup error.
func New(opts Options) (*Server, error) {
	if opts.Bitrate <= 0 {
		opts.Bitrate = DefaultBitrate
	}
	if opts.MaxFPS <= 0 {
		opts.MaxFPS = DefaultMaxFPS
	}
	if opts.CredentialTTL <= 0 {
		opts.CredentialTTL = DefaultCredentialTTL
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	// Build one API now so a pion setup error shows at start.
	if _, _, err := newAPI(opts); err != nil {
		return nil, err
	}
	return &Server{opts: opts}, nil
}

// newAPI builds the pion API for one peer connection: its own
// congestion controller, whose estimator reports what the receiver can
// take (Chrome sends transport-wide feedback, not REMB, so the estimate is
// made here, by Google Congestion Control on the sender side).
func newAPI(opts Options) (*pion.API, <-chan cc.BandwidthEstimator, error) {
	me := &pion.MediaEngine{}
	// VP8 only: it is what the host encoder makes, and every browser
	// decodes it.
	if err := me.RegisterCodec(pion.RTPCodecParameters{
		RTPCodecCapability: pion.RTPCodecCapability{
			MimeType: pion.MimeTypeVP8, ClockRate: 90000,
			RTCPFeedback: []pion.RTCPFeedback{{Type: "transport-cc"}, {Type: "nack"}, {Type: "nack", Parameter: "pli"}, {Type: "ccm", Parameter: "fir"}},
		},
		PayloadType: 96,
	}, pion.RTPCodecTypeVideo); err != nil {
		return nil, nil, err
	}
	ir := &interceptor.Registry{}
	// No pacer: frames are rare and a key frame should leave at once; the
	// estimate is used to pick the encoder's bitrate instead.
	ccf, err := cc.NewInterceptor(func() (cc.BandwidthEstimator, error) {
		return gcc.NewSendSideBWE(gcc.SendSideBWEInitialBitrate(opts.Bitrate), gcc.SendSideBWEMaxBitrate(opts.Bitrate),
			gcc.SendSideBWEPacer(gcc.NewNoOpPacer()))
	})
	if err != nil {
		return nil, nil, err
	}
	est := make(chan cc.BandwidthEstimator, 1)
	ccf.OnNewPeerConnection(func(_ string, e cc.BandwidthEstimator) {
		select {
		case est <- e:
		default:
		}
	})
	ir.Add(ccf)
	if err := pion.ConfigureTWCCHeaderExtensionSender(me, ir); err != nil {
		return nil, nil, err
	}
	// NACK responder and RTCP reports: lost packets are resent.
	if err := pion.RegisterDefaultInterceptors(me, ir); err != nil {
		return nil, nil, err
	}
	se := pion.SettingEngine{}
	se.SetIncludeLoopbackCandidate(opts.LoopbackCandidates)
	se.SetNetworkTypes([]pion.NetworkType{pion.NetworkTypeUDP4, pion.NetworkTypeUDP6})
	// The browser cannot reach mDNS names of the daemon; plain addresses.
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	return pion.NewAPI(pion.WithMediaEngine(me), pion.WithInterceptorRegistry(ir), pion.WithSettingEngine(se)), est, nil
}

// Metrics returns the transport's metrics.
func (s *Server) Metrics() *Metrics { return s.opts.Metrics }

// Signalling messages, as JSON on the websocket, both ways:
//
//	→ browser  {"type":"hello","iceServers":[…],"width":W,"height":H,"viewOnly":b}
//	← browser  {"type":"offer","sdp":"…"}   (again for an ICE restart)
//	→ browser  {"type":"answer","sdp":"…"}
//	↔          {"type":"candidate","candidate":{…}}   (trickle ICE)
//	→ browser  {"type":"fallback","reason":"…"}   use noVNC from now on
//	← browser  {"type":"fallback","reason":"…"}   the browser gave up
type message struct {
	Type       string                 `json:"type"`
	SDP        string                 `json:"sdp,omitempty"`
	Candidate  *pion.ICECandidateInit `json:"candidate,omitempty"`
	ICEServers []ICEServer            `json:"iceServers,omitempty"`
	Width      int                    `json:"width,omitempty"`
	Height     int                    `json:"height,omitempty"`
	ViewOnly   bool                   `json:"viewOnly,omitempty"`
	Reason     string                 `json:"reason,omitempty"`
}

// maxPixels bounds the guest's screen (4K UHD): three RGBA copies of it
// are about 100 MB.
const maxPixels = 3840 * 2160

// maxSignalBytes bounds one signalling message (an SDP offer is a few KB).
const maxSignalBytes = 64 << 10

// Serve runs one viewer until ctx ends, the websocket closes or the media
// pipeline fails. The caller has verified the token for sessionID and
// accepted ws; dial opens the session's VNC byte stream. Serve closes ws
// when it ends the view itself; when ctx ends, closing ws (with a status
// that says why) is the caller's.
func (s *Server) Serve(ctx context.Context, ws *websocket.Conn, sessionID string, viewOnly bool, dial func(context.Context) (net.Conn, error)) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ws.SetReadLimit(maxSignalBytes)
	log := s.opts.Log.With("session_id", sessionID, "transport", "webrtc")
	m := s.opts.Metrics
	m.Sessions.WithLabelValues("webrtc").Inc()
	defer m.Sessions.WithLabelValues("webrtc").Dec()

	conn, err := dial(ctx)
	if err != nil {
		_ = ws.Close(websocket.StatusInternalError, "cannot reach the browser VM")
		return fmt.Errorf("dial vnc: %w", err)
	}
	hctx, hcancel := context.WithTimeout(ctx, 15*time.Second)
	rc, err := rfb.Handshake(hctx, conn)
	hcancel()
	if err != nil {
		_ = conn.Close()
		_ = ws.Close(websocket.StatusInternalError, "vnc handshake failed")
		return err
	}
	defer rc.Close()
	// The guest announces the screen size; the pipeline keeps three
	// copies of it, so a hostile or broken guest must not pick it.
	if rc.Width < 16 || rc.Height < 16 || rc.Width*rc.Height > maxPixels {
		_ = ws.Close(websocket.StatusInternalError, "unsupported screen size")
		return fmt.Errorf("vnc screen %dx%d outside what the encoder takes", rc.Width, rc.Height)
	}

	api, estimators, err := newAPI(s.opts)
	if err != nil {
		_ = ws.Close(websocket.StatusInternalError, "webrtc setup failed")
		return err
	}
	pc, err := api.NewPeerConnection(pion.Configuration{})
	if err != nil {
		_ = ws.Close(websocket.StatusInternalError, "webrtc setup failed")
		return err
	}
	defer pc.Close()
	track, err := pion.NewTrackLocalStaticRTP(pion.RTPCodecCapability{MimeType: pion.MimeTypeVP8, ClockRate: 90000}, "screen", "hangar")
	if err != nil {
		return err
	}
	sender, err := pc.AddTrack(track)
	if err != nil {
		return err
	}

	// wmu serializes websocket writes (pion calls back from its own
	// goroutines).
	var wmu sync.Mutex
	send := func(msg message) error {
		wmu.Lock()
		defer wmu.Unlock()
		// Not ctx: the websocket library drops the connection without a
		// close frame when an operation's context is cancelled, and the
		// caller closes with a status that tells the page why.
		wctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		return wsjson.Write(wctx, ws, msg)
	}

	p := newPipeline(rc, track, encoderConfig{ffmpeg: s.opts.FFmpeg, bitrate: s.opts.Bitrate, fps: s.opts.MaxFPS}, s.opts.MaxFPS, m, log)
	if s.opts.OnEncoder != nil {
		p.onEncoder = func(pid int) { s.opts.OnEncoder(sessionID, pid) }
	}
	go func() { cancel(p.capture(ctx)) }()
	go s.readRTCP(ctx, sender, p)
	go followEstimate(ctx, estimators, p)

	in := &inputHandler{rfb: rc, viewOnly: viewOnly, metrics: m, log: log}
	pc.OnDataChannel(func(dc *pion.DataChannel) {
		if dc.Label() != "input" {
			return
		}
		dc.OnMessage(func(msg pion.DataChannelMessage) { in.handle(ctx, msg.Data) })
	})
	pc.OnICECandidate(func(c *pion.ICECandidate) {
		if c == nil {
			return
		}
		log.Debug("webrtc local candidate", "type", c.Typ.String(), "address", c.Address, "port", c.Port)
		init := c.ToJSON()
		_ = send(message{Type: "candidate", Candidate: &init})
	})
	// The encoder starts once media can flow, so its first (key) frame is
	// not lost, and runs until the view ends.
	var startOnce sync.Once
	pipeErr := make(chan error, 1)
	// bg counts the encoder loop, so Serve returns only after it has
	// stopped its ffmpeg (the caller's Close waits for Serve).
	var bg sync.WaitGroup
	defer func() {
		cancel(nil)
		bg.Wait()
	}()
	pc.OnConnectionStateChange(func(st pion.PeerConnectionState) {
		log.Debug("webrtc connection state", "state", st.String())
		switch st {
		case pion.PeerConnectionStateConnected:
			startOnce.Do(func() {
				bg.Add(1)
				go func() {
					defer bg.Done()
					pipeErr <- p.run(ctx)
				}()
			})
		case pion.PeerConnectionStateClosed:
			cancel(errors.New("peer connection closed"))
		}
	})

	hello := message{Type: "hello", Width: rc.Width, Height: rc.Height, ViewOnly: viewOnly}
	if s.opts.TURN != nil {
		hello.ICEServers = []ICEServer{s.opts.TURN.Credentials(sessionID, s.opts.CredentialTTL)}
	}
	if err := send(hello); err != nil {
		return err
	}
	log.Info("webrtc live view opened", "view_only", viewOnly)

	msgs := make(chan message)
	go func() {
		for {
			var msg message
			// Ends when ws is closed (see send on why not ctx).
			if err := wsjson.Read(context.Background(), ws, &msg); err != nil {
				cancel(fmt.Errorf("signalling: %w", err))
				return
			}
			select {
			case msgs <- msg:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			// The caller closes ws with a status that says why (a
			// session's end is not a failure to retry).
			log.Info("webrtc live view closed", "reason", context.Cause(ctx).Error())
			return nil
		case err := <-pipeErr:
			if err == nil {
				continue
			}
			reason := "error"
			if errors.Is(err, errEncoderDied) {
				reason = "encoder"
			}
			m.Fallbacks.WithLabelValues(reason).Inc()
			log.Warn("webrtc live view falls back to vnc", "reason", reason, "err", err.Error())
			_ = send(message{Type: "fallback", Reason: "the video encoder stopped"})
			_ = ws.Close(websocket.StatusNormalClosure, "fallback")
			return err
		case msg := <-msgs:
			switch msg.Type {
			case "offer":
				answer, err := s.answer(pc, msg.SDP)
				if err != nil {
					log.Info("webrtc offer refused", "err", err.Error())
					_ = ws.Close(websocket.StatusPolicyViolation, "bad offer")
					return err
				}
				if err := send(message{Type: "answer", SDP: answer}); err != nil {
					return err
				}
			case "candidate":
				if msg.Candidate != nil && msg.Candidate.Candidate != "" {
					log.Debug("webrtc remote candidate", "candidate", msg.Candidate.Candidate)
					if err := pc.AddICECandidate(*msg.Candidate); err != nil {
						log.Debug("webrtc candidate refused", "err", err.Error())
					}
				}
			case "fallback":
				m.Fallbacks.WithLabelValues("connect").Inc()
				log.Info("webrtc viewer fell back to vnc", "reason", truncate(msg.Reason, 80))
				_ = ws.Close(websocket.StatusNormalClosure, "")
				return nil
			}
		}
	}
}

// answer applies an offer (the first, or one for an ICE restart) and
// returns the answer.
func (s *Server) answer(pc *pion.PeerConnection, sdp string) (string, error) {
	if err := pc.SetRemoteDescription(pion.SessionDescription{Type: pion.SDPTypeOffer, SDP: sdp}); err != nil {
		return "", err
	}
	ans, err := pc.CreateAnswer(nil)
	if err != nil {
		return "", err
	}
	if err := pc.SetLocalDescription(ans); err != nil {
		return "", err
	}
	return pc.LocalDescription().SDP, nil
}

// readRTCP follows the receiver's feedback: a picture loss or full intra
// request means it needs a key frame. Encoder restarts for it are limited
// to one a second so a lossy link does not turn into a stream of key
// frames.
func (s *Server) readRTCP(ctx context.Context, sender *pion.RTPSender, p *pipeline) {
	var lastRestart time.Time
	for {
		pkts, _, err := sender.ReadRTCP()
		if err != nil || ctx.Err() != nil {
			return
		}
		for _, pkt := range pkts {
			switch pkt.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				if time.Since(lastRestart) > time.Second {
					lastRestart = time.Now()
					p.requestKeyFrame()
				}
			}
		}
	}
}

// followEstimate polls the congestion controller's target bitrate and
// hands it to the pipeline, which restarts the encoder only on a large
// change; the poll is slow (2 s) because each restart costs a key frame.
func followEstimate(ctx context.Context, estimators <-chan cc.BandwidthEstimator, p *pipeline) {
	var est cc.BandwidthEstimator
	select {
	case est = <-estimators:
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.estimate(uint64(max(est.GetTargetBitrate(), 0)))
		}
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
