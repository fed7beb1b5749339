package agent

import (
	"context"
	"fmt"
	"github.com/hangar-vm/hangar/internal/atomicfile"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// netState is the guest network the host configured: the proxy
// environment commands started afterwards get.
type netState struct {
	mu  sync.Mutex // guards env
	env map[string]string
}

// withEnv returns the proxy environment overlaid with req (the request's
// own variables win).
func (n *netState) withEnv(req map[string]string) map[string]string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.env) == 0 {
		return req
	}
	out := make(map[string]string, len(n.env)+len(req))
	for k, v := range n.env {
		out[k] = v
	}
	for k, v := range req {
		out[k] = v
	}
	return out
}

// handleNetwork configures the guest interface from the host's slot: the
// interface by MAC (or the first non-loopback one), MTU, address, default
// route, /etc/resolv.conf, and the proxy environment. It uses the image's
// `ip` (iproute2 is in every hangar image); the agent itself speaks no
// netlink.
func (a *Agent) handleNetwork(w http.ResponseWriter, r *http.Request) {
	var req proto.NetworkConfig
	if !readJSON(w, r, &req) {
		return
	}
	if err := validateNetwork(req); err != nil {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	if err := a.configureNetwork(ctx, req); err != nil {
		a.log.Error("network configuration failed", "err", err)
		writeError(w, http.StatusInternalServerError, proto.CodeInternal, err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func validateNetwork(req proto.NetworkConfig) error {
	if _, err := netip.ParsePrefix(req.Address); err != nil {
		return fmt.Errorf("address %q: %w", req.Address, err)
	}
	if _, err := netip.ParseAddr(req.Gateway); err != nil {
		return fmt.Errorf("gateway %q: %w", req.Gateway, err)
	}
	for _, d := range req.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			return fmt.Errorf("dns %q: %w", d, err)
		}
	}
	if req.MTU != 0 && (req.MTU < 576 || req.MTU > 65535) {
		return fmt.Errorf("mtu %d out of range", req.MTU)
	}
	for _, kv := range req.ProxyEnv {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsAny(kv, "\x00\n") {
			return fmt.Errorf("proxy environment entry %q is not KEY=value", kv)
		}
	}
	return nil
}

func (a *Agent) configureNetwork(ctx context.Context, req proto.NetworkConfig) error {
	dev, err := guestInterface(req.MAC)
	if err != nil {
		return err
	}
	ip := func(args ...string) error {
		out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if req.MTU != 0 {
		if err := ip("link", "set", "dev", dev, "mtu", strconv.Itoa(req.MTU)); err != nil {
			return err
		}
	}
	if err := ip("link", "set", "dev", dev, "up"); err != nil {
		return err
	}
	if err := ip("addr", "replace", req.Address, "dev", dev); err != nil {
		return err
	}
	if err := ip("route", "replace", "default", "via", req.Gateway, "dev", dev); err != nil {
		return err
	}
	if len(req.DNS) > 0 {
		var b strings.Builder
		b.WriteString("# written by hangar-agent from the host's network slot\n")
		for _, d := range req.DNS {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		b.WriteString("options timeout:2 attempts:2\n")
		if err := writeFileAtomic("/etc/resolv.conf", []byte(b.String()), 0o644); err != nil {
			return fmt.Errorf("write /etc/resolv.conf: %w", err)
		}
	}
	env := map[string]string{}
	for _, kv := range req.ProxyEnv {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	a.net.mu.Lock()
	a.net.env = env
	a.net.mu.Unlock()
	a.log.Info("network configured", "dev", dev, "address", req.Address, "gateway", req.Gateway, "proxy", len(env) > 0)
	return nil
}

// guestInterface finds the interface with mac, or the first one that is
// not loopback when mac is empty.
func guestInterface(mac string) (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("list interfaces: %w", err)
	}
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback != 0 {
			continue
		}
		if mac == "" || strings.EqualFold(i.HardwareAddr.String(), mac) {
			return i.Name, nil
		}
	}
	return "", fmt.Errorf("no network interface with MAC %q", mac)
}

// writeFileAtomic replaces path through a temp file and rename (a
// /etc/resolv.conf that is a symlink is replaced by a file).
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return atomicfile.Write(path, data, mode)
}
