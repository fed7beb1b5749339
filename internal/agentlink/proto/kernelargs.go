package proto

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"
)

// Link kinds, the value of hangar.link.
const (
	LinkVirtioSerial = "virtio-serial" // QEMU: virtserialport named VirtioPortName
	LinkVsock        = "vsock"         // Firecracker: AF_VSOCK on VsockPort
)

// Upper disk values besides a device path, the value of hangar.upper.
const (
	// UpperTmpfs keeps the overlay's upper layer in memory (throwaway VMs).
	UpperTmpfs = "tmpfs"
	// UpperNone runs on the read-only base without an overlay (debugging).
	UpperNone = "none"
)

// Params are hangar's kernel command line parameters, read by the agent from
// /proc/cmdline. The driver appends KernelArgs(p) to its own arguments
// (root=/dev/vda ro init=/usr/sbin/hangar-agent console=ttyS0 ...).
//
// The token is readable inside the guest through /proc/cmdline. That is
// accepted: the guest belongs to the VM's user, and the token only
// authenticates the host to that same guest. The agent never logs it.
type Params struct {
	// Token is the per-VM secret every request must carry (hangar.token).
	Token string
	// Upper is the overlay's upper layer: a block device such as "/dev/vdb"
	// (ext4, formatted by the host, persistent), UpperTmpfs or UpperNone
	// (hangar.upper, default UpperTmpfs).
	Upper string
	// Hostname of the guest (hangar.hostname, default "hangar").
	Hostname string
	// Link is LinkVirtioSerial or LinkVsock (hangar.link, default LinkVirtioSerial).
	Link string
	// Debug makes the agent log at debug level (hangar.debug=1).
	Debug bool
}

// Kernel parameter names.
const (
	ArgToken    = "hangar.token"
	ArgUpper    = "hangar.upper"
	ArgHostname = "hangar.hostname"
	ArgLink     = "hangar.link"
	ArgDebug    = "hangar.debug"
)

var (
	tokenRE    = regexp.MustCompile(`^[A-Za-z0-9_-]{16,128}$`)
	hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	upperRE    = regexp.MustCompile(`^(tmpfs|none|/dev/[A-Za-z0-9/_-]+)$`)
)

// NewToken returns a fresh random per-VM token (32 bytes, base64url).
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("read random token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Validate checks that every value is safe to put on a kernel command line.
// Errors never include the token.
func (p Params) Validate() error {
	if !tokenRE.MatchString(p.Token) {
		return fmt.Errorf("token must be 16-128 characters of [A-Za-z0-9_-]")
	}
	if p.Upper != "" && !upperRE.MatchString(p.Upper) {
		return fmt.Errorf("upper %q must be tmpfs, none or a /dev path", p.Upper)
	}
	if p.Hostname != "" && !hostnameRE.MatchString(p.Hostname) {
		return fmt.Errorf("hostname %q is not a valid host name", p.Hostname)
	}
	switch p.Link {
	case "", LinkVirtioSerial, LinkVsock:
	default:
		return fmt.Errorf("link %q must be %s or %s", p.Link, LinkVirtioSerial, LinkVsock)
	}
	return nil
}

// KernelArgs renders p as kernel parameters, e.g.
// "hangar.token=… hangar.upper=/dev/vdb hangar.hostname=vm-1 hangar.link=virtio-serial".
// Call Validate first; KernelArgs does not quote.
func KernelArgs(p Params) string {
	args := []string{ArgToken + "=" + p.Token}
	if p.Upper != "" {
		args = append(args, ArgUpper+"="+p.Upper)
	}
	if p.Hostname != "" {
		args = append(args, ArgHostname+"="+p.Hostname)
	}
	if p.Link != "" {
		args = append(args, ArgLink+"="+p.Link)
	}
	if p.Debug {
		args = append(args, ArgDebug+"=1")
	}
	return strings.Join(args, " ")
}

// ParseKernelArgs reads hangar's parameters from a kernel command line
// (the contents of /proc/cmdline) and fills in defaults. Unknown words are
// ignored; the last occurrence of a parameter wins.
func ParseKernelArgs(cmdline string) (Params, error) {
	p := Params{Upper: UpperTmpfs, Hostname: "hangar", Link: LinkVirtioSerial}
	for _, w := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(w, "=")
		switch k {
		case ArgToken:
			p.Token = v
		case ArgUpper:
			p.Upper = v
		case ArgHostname:
			p.Hostname = v
		case ArgLink:
			p.Link = v
		case ArgDebug:
			p.Debug = v == "1" || v == "true"
		}
	}
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("kernel command line: %w", err)
	}
	return p, nil
}

var tokenArgRE = regexp.MustCompile(regexp.QuoteMeta(ArgToken) + `=\S+`)

// RedactKernelArgs replaces the token's value in s (a command line, a
// console log, a process listing) with "REDACTED". The daemon runs console
// logs through it before storing or serving them: the kernel prints its
// command line at boot unless "quiet" or loglevel<=4 is given.
func RedactKernelArgs(s string) string {
	return tokenArgRE.ReplaceAllString(s, ArgToken+"=REDACTED")
}
