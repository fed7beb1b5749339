package vm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// Console files are written by the hypervisor, not by hangar: QEMU's
// chardev and Firecracker's stdout append to the file directly, and guest
// root can write to the serial port as fast as the emulated UART goes. So
// the file is bounded after the fact (rotateConsole, every
// consoleCheckInterval while the VM runs) and every reader of it is bounded
// per line (lineReader), whatever the guest wrote.
const (
	// DefaultConsoleMaxBytes caps a console file when Config leaves it 0.
	DefaultConsoleMaxBytes = 8 << 20
	// maxConsoleLine bounds one console line read back into memory;
	// longer lines are cut with a marker.
	maxConsoleLine = 16 << 10
	// consoleCheckInterval is how often a running VM's console size is
	// checked. A guest can exceed the cap by what it writes in between.
	consoleCheckInterval = 2 * time.Second
)

// rotatedSuffix names the one older console file kept beside the current.
const rotatedSuffix = ".1"

// rotateConsole moves the content of the console file at path to
// path+".1" (replacing an older one) and empties path, when path is larger
// than max. It copies and truncates rather than renames because the
// hypervisor holds path open; both drivers open it with O_APPEND, so their
// next write lands at the new end, not at the old offset. Lines written
// between the copy and the truncate are lost, which is the price of not
// owning the writer.
func rotateConsole(path string, max int64) (bool, error) {
	fi, err := os.Stat(path)
	if err != nil || fi.Size() <= max {
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		return false, err
	}
	src, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer src.Close()
	tmp := path + rotatedSuffix + ".tmp"
	dst, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return false, err
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path+rotatedSuffix)
	}
	if err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("rotate console: %w", err)
	}
	if err := os.Truncate(path, 0); err != nil {
		return false, fmt.Errorf("rotate console: %w", err)
	}
	return true, nil
}

// fileID identifies the file at path (0 when absent): rotateConsole renames
// a new file into path+".1" each time, so a changed ID means a rotation.
func fileID(path string) uint64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Ino
}

func (m *Manager) consoleMax() int64 {
	if m.cfg.ConsoleMaxBytes > 0 {
		return m.cfg.ConsoleMaxBytes
	}
	return DefaultConsoleMaxBytes
}

// lineReader yields the lines of a console file, each at most
// maxConsoleLine bytes plus a marker: a line the guest never ends is cut,
// not assembled in memory.
type lineReader struct {
	br        *bufio.Reader
	buf       []byte
	truncated bool
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// next returns the next line with its newline. At the end of the data it
// returns io.EOF, keeping a partial last line for a later call (a
// following reader waits for the rest) unless flush is set, in which case
// the partial line is returned first.
func (l *lineReader) next(flush bool) (string, error) {
	for {
		chunk, err := l.br.ReadSlice('\n')
		if !l.truncated {
			if room := maxConsoleLine - len(l.buf); len(chunk) > room {
				l.buf = append(l.buf, chunk[:room]...)
				l.truncated = true
			} else {
				l.buf = append(l.buf, chunk...)
			}
		}
		switch {
		case err == nil:
			return l.take(), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && flush && (len(l.buf) > 0 || l.truncated):
			return l.take(), nil
		default:
			return "", err
		}
	}
}

func (l *lineReader) take() string {
	s := string(l.buf)
	if l.truncated {
		s = strings.TrimRight(s, "\r\n") + " [line cut at 16 KiB]\n"
	} else if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	l.buf, l.truncated = l.buf[:0], false
	return s
}

// reset drops a partial line and reads from r (after a rotation).
func (l *lineReader) reset(r io.Reader) {
	l.br.Reset(r)
	l.buf, l.truncated = l.buf[:0], false
}

// lastLines returns up to n last non-empty lines of the console at path
// (continuing into the rotated file when the current one is short), each
// cut to 512 bytes, with the agent token redacted.
func lastLines(path string, n int) string {
	keep := tailLines(path, n)
	if len(keep) < n {
		keep = append(tailLines(path+rotatedSuffix, n-len(keep)), keep...)
	}
	return proto.RedactKernelArgs(strings.Join(keep, "\n"))
}

func tailLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	const tailBytes = 16 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > tailBytes {
		_, _ = f.Seek(fi.Size()-tailBytes, 0)
	}
	b := make([]byte, tailBytes)
	k, _ := io.ReadFull(f, b)
	lines := strings.Split(strings.TrimRight(string(b[:k]), "\r\n"), "\n")
	var keep []string
	for i := len(lines) - 1; i >= 0 && len(keep) < n; i-- {
		l := strings.TrimSpace(strings.TrimRight(lines[i], "\r"))
		if len(l) > 512 {
			l = l[:512] + " [cut]"
		}
		if l != "" {
			keep = append([]string{l}, keep...)
		}
	}
	return keep
}
