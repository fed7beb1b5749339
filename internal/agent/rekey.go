package agent

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// tokenBox holds the token requests must carry. It starts as the one on
// the kernel command line and changes once per re-key: a VM restored from
// a template shares that command line (and the agent's memory) with every
// sibling, so the template's token must stop working the moment the clone
// has its own.
type tokenBox struct {
	mu  sync.RWMutex // guards tok
	tok []byte
}

func (b *tokenBox) set(t string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tok = []byte(t)
}

// matches compares in constant time.
func (b *tokenBox) matches(got string) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return subtle.ConstantTimeCompare([]byte(got), b.tok) == 1
}

// handleRekey applies a RekeyRequest: random pool first (nothing the clone
// does afterwards may draw from the template's random state), then clock,
// hostname and last the token, so that a failure leaves the old token in
// force and the host can tell.
func (a *Agent) handleRekey(w http.ResponseWriter, r *http.Request) {
	var req proto.RekeyRequest
	if !readJSON(w, r, &req) {
		return
	}
	if len(req.Token) < proto.MinTokenLen || len(req.Seed) < proto.MinRekeySeed || len(req.Seed) > proto.MaxRekeySeed || len(req.Hostname) > 64 {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "rekey: token, seed or hostname out of bounds")
		return
	}
	if a.cfg.Reseed != nil {
		if err := a.cfg.Reseed(req.Seed); err != nil {
			writeError(w, http.StatusInternalServerError, proto.CodeInternal, "rekey: reseed the random pool: "+err.Error())
			return
		}
	}
	a.setClock(time.Unix(0, req.UnixNano))
	if req.Hostname != "" && a.cfg.SetHostname != nil {
		if err := a.cfg.SetHostname(req.Hostname); err != nil {
			writeError(w, http.StatusInternalServerError, proto.CodeInternal, "rekey: set hostname: "+err.Error())
			return
		}
	}
	a.tok.set(req.Token)
	a.log.Info("re-keyed from the host: new token, random pool reseeded, clock and hostname set", "hostname", req.Hostname)
	w.WriteHeader(http.StatusNoContent)
}

// Linux random ioctls (include/uapi/linux/random.h).
const (
	rndAddEntropy   = 0x40085203 // _IOW('R', 0x03, int[2])
	rndReseedCRNG   = 0x5207     // _IO('R', 0x07)
	bitsPerSeedByte = 8
)

// ReseedKernelRNG mixes seed into the kernel's input pool, credited as
// entropy, and forces the CRNG to reseed from it. Mixing alone is not
// enough after a snapshot restore: the kernel keeps generating from its
// current CRNG key (a copy of the template's) until its next scheduled
// reseed, so siblings would read the same bytes from /dev/urandom until
// then. Needs CAP_SYS_ADMIN (the agent is PID 1, root).
func ReseedKernelRNG(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(seed))
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(len(seed) * bitsPerSeedByte)
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(seed))
	copy(buf[8:], seed)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); e != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", e)
	}
	return nil
}
