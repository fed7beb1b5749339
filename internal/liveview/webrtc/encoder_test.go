package webrtc

import (
	"context"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/hangar-vm/hangar/internal/testutil"
)

// TestEncoderOneFrameOutPerFrameIn: the encoder returns each frame before
// the next is written (no look-ahead, which the latency depends on), the
// first is a key frame and the next are not, and an odd screen size works.
func TestEncoderOneFrameOutPerFrameIn(t *testing.T) {
	_, err := exec.LookPath("ffmpeg")
	testutil.Require(t, err == nil, "ffmpeg is not installed (apt-get install ffmpeg)")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	enc, err := startEncoder(ctx, encoderConfig{width: 321, height: 201, bitrate: 500_000, fps: 25})
	if err != nil {
		t.Fatal(err)
	}
	defer enc.kill()
	// ffmpeg writes the IVF header only with the first frame, so one
	// goroutine reads the header and then every frame in order.
	frames := make(chan encodedFrame, 3)
	go func() {
		if err := enc.readHeader(); err != nil {
			t.Error(err)
			return
		}
		for {
			f, err := enc.read()
			if err != nil {
				return
			}
			frames <- f
		}
	}()
	pix := make([]byte, 4*321*201)
	for i := range 3 {
		for j := range pix {
			pix[j] = byte(i * 70)
		}
		if err := enc.write(pix); err != nil {
			t.Fatal(err)
		}
		select {
		case f := <-frames:
			// VP8 frame tag: bit 0 clear means a key frame.
			key := len(f.data) > 0 && f.data[0]&1 == 0
			if key != (i == 0) {
				t.Fatalf("frame %d: key frame %v", i, key)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("frame %d not out before the next was written", i)
		}
	}
	if enc.failed() {
		t.Fatal("running encoder reported failed")
	}
}

// TestEncoderDeathIsAFailure: an encoder killed from outside is a failure
// (the viewer falls back); one the pipeline ends itself is not.
func TestEncoderDeathIsAFailure(t *testing.T) {
	_, err := exec.LookPath("ffmpeg")
	testutil.Require(t, err == nil, "ffmpeg is not installed (apt-get install ffmpeg)")
	cfg := encoderConfig{width: 64, height: 64, bitrate: 200_000, fps: 25}
	a, err := startEncoder(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	_ = syscall.Kill(a.pid(), syscall.SIGKILL)
	<-a.done
	if !a.failed() {
		t.Fatal("killed encoder not reported as failed")
	}
	b, err := startEncoder(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.kill()
	if b.failed() {
		t.Fatal("encoder ended on purpose reported as failed")
	}
}
