package webrtc

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// DefaultFFmpeg is the encoder binary looked up in PATH when
// Options.FFmpeg is empty (Debian's ffmpeg package, built with libvpx).
const DefaultFFmpeg = "ffmpeg"

// maxFrameBytes bounds one encoded frame read back from the encoder: a
// VP8 key frame of a 4K screen at the bitrates used here is far smaller,
// so anything larger means the stream is not what we think it is.
const maxFrameBytes = 8 << 20

// encoderConfig is what an encoder process is started with.
type encoderConfig struct {
	ffmpeg        string
	width, height int
	// bitrate is the target in bits per second.
	bitrate int
	// fps is the rate the encoder's rate control assumes; frames are sent
	// only on damage, so the real rate is lower on a static screen.
	fps int
}

// encoder is one ffmpeg process turning raw RGBA frames on its stdin into
// VP8 in an IVF stream on its stdout. ffmpeg rather than a cgo binding
// keeps the daemon a pure Go binary and puts the codec (libvpx, the most
// exposed code here, fed pixels a hostile guest controls) in a separate
// process that can die without taking the daemon with it.
type encoder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	frame int // bytes per raw frame
	// done is closed when the process has exited; err is its result.
	done chan struct{}
	err  error
	// killed records that we ended the process ourselves, so its exit is
	// not reported as an encoder failure.
	mu     sync.Mutex
	killed bool
}

// encodedFrame is one VP8 frame from the encoder.
type encodedFrame struct {
	data []byte
	// at is when it was read, for the sample duration.
	at time.Time
}

func (c encoderConfig) args() []string {
	return []string{
		"-hide_banner", "-nostdin", "-loglevel", "error",
		"-f", "rawvideo", "-pix_fmt", "rgba",
		"-s", strconv.Itoa(c.width) + "x" + strconv.Itoa(c.height),
		"-r", strconv.Itoa(c.fps), "-i", "pipe:0",
		// 4:2:0 needs even sizes; an odd screen gets a one-pixel border.
		"-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
		"-c:v", "libvpx", "-pix_fmt", "yuv420p",
		// Realtime with no look-ahead: each frame written comes out
		// encoded before the next is read, which is what keeps the
		// glass-to-glass time low.
		"-deadline", "realtime", "-cpu-used", "8", "-lag-in-frames", "0", "-auto-alt-ref", "0",
		"-error-resilient", "1",
		"-b:v", strconv.Itoa(c.bitrate), "-maxrate", strconv.Itoa(c.bitrate), "-bufsize", strconv.Itoa(c.bitrate),
		"-qmin", "4", "-qmax", "48",
		// Key frames only at start (a new encoder is started when the
		// receiver asks for one); a periodic one would cost bandwidth on a
		// static page for no benefit on a link that reports its losses.
		"-g", "100000",
		"-threads", "1",
		"-flush_packets", "1", "-f", "ivf", "pipe:1",
	}
}

// startEncoder runs ffmpeg. ctx ends the process.
func startEncoder(ctx context.Context, c encoderConfig) (*encoder, error) {
	bin := c.ffmpeg
	if bin == "" {
		bin = DefaultFFmpeg
	}
	cmd := exec.CommandContext(ctx, bin, c.args()...)
	// The encoder's diagnostics are few (loglevel error) and say nothing
	// secret; they are kept short for the error returned on failure.
	stderr := &tailBuffer{max: 2048}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start encoder: %w", err)
	}
	e := &encoder{cmd: cmd, stdin: stdin, out: bufio.NewReaderSize(stdout, 256<<10), frame: 4 * c.width * c.height, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		if err != nil && stderr.String() != "" {
			err = fmt.Errorf("%w: %s", err, stderr.String())
		}
		e.err = err
		close(e.done)
	}()
	return e, nil
}

// write sends one raw RGBA frame.
func (e *encoder) write(pix []byte) error {
	if len(pix) != e.frame {
		return fmt.Errorf("encoder: frame of %d bytes, want %d", len(pix), e.frame)
	}
	_, err := e.stdin.Write(pix)
	return err
}

// readHeader reads the IVF file header.
func (e *encoder) readHeader() error {
	var hdr [32]byte
	if _, err := io.ReadFull(e.out, hdr[:]); err != nil {
		return fmt.Errorf("encoder: read ivf header: %w", err)
	}
	if string(hdr[:4]) != "DKIF" || string(hdr[8:12]) != "VP80" {
		return errors.New("encoder: output is not a VP8 IVF stream")
	}
	return nil
}

// read returns the next encoded frame.
func (e *encoder) read() (encodedFrame, error) {
	var fh [12]byte
	if _, err := io.ReadFull(e.out, fh[:]); err != nil {
		return encodedFrame{}, err
	}
	n := binary.LittleEndian.Uint32(fh[:4])
	if n == 0 || n > maxFrameBytes {
		return encodedFrame{}, fmt.Errorf("encoder: frame of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(e.out, b); err != nil {
		return encodedFrame{}, err
	}
	return encodedFrame{data: b, at: time.Now()}, nil
}

// kill ends the process on purpose.
func (e *encoder) kill() {
	e.mu.Lock()
	e.killed = true
	e.mu.Unlock()
	_ = e.stdin.Close()
	if e.cmd.Process != nil {
		_ = e.cmd.Process.Kill()
	}
	<-e.done
}

// failed reports whether the process exited without being asked to.
func (e *encoder) failed() bool {
	select {
	case <-e.done:
	default:
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return !e.killed
}

// pid is the process id (tests kill it to play a crash).
func (e *encoder) pid() int { return e.cmd.Process.Pid }

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
