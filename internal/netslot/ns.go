package netslot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces live, the same place
// `ip netns` uses, so operators can inspect slots with `ip netns exec`.
const netnsDir = "/run/netns"

// NetNSPath returns the bind-mount path of the named network namespace.
func NetNSPath(name string) string { return filepath.Join(netnsDir, name) }

// inNS runs fn on an OS thread switched into ns and switches back. Sockets,
// TAP devices and child processes created by fn belong to ns. If the thread
// cannot be switched back it stays locked, so the Go runtime throws it away
// instead of reusing a thread in the wrong namespace.
func inNS(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with this goroutine.
		return errors.Join(fnErr, fmt.Errorf("return to original netns: %w", err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// createNamedNS creates a fresh network namespace bind-mounted at
// /run/netns/name, the way `ip netns add` does, without moving the calling
// thread into it for longer than the unshare takes.
func createNamedNS(name string) (netns.NsHandle, error) {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return netns.None(), fmt.Errorf("create %s: %w", netnsDir, err)
	}
	path := NetNSPath(name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return netns.None(), fmt.Errorf("create netns file %s: %w", name, err)
	}
	f.Close()

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		os.Remove(path)
		return netns.None(), fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		os.Remove(path)
		return netns.None(), fmt.Errorf("unshare netns: %w", err)
	}
	src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
	mountErr := unix.Mount(src, path, "none", unix.MS_BIND, "")
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the new namespace: keep it locked so it
		// is destroyed with this goroutine.
		_ = unix.Unmount(path, unix.MNT_DETACH)
		os.Remove(path)
		return netns.None(), fmt.Errorf("return to original netns: %w", err)
	}
	runtime.UnlockOSThread()
	if mountErr != nil {
		os.Remove(path)
		return netns.None(), fmt.Errorf("bind-mount netns %s: %w", name, mountErr)
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		deleteNamedNS(name)
		return netns.None(), fmt.Errorf("open netns %s: %w", name, err)
	}
	return h, nil
}

// deleteNamedNS unmounts and removes /run/netns/name. A missing namespace
// is not an error, so removal can be retried.
func deleteNamedNS(name string) error {
	path := NetNSPath(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	return nil
}

// listNamedNS returns the names in /run/netns that start with prefix.
func listNamedNS(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", netnsDir, err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// writeSysctl sets a /proc/sys value in the calling thread's network
// namespace (call it inside inNS for another namespace).
func writeSysctl(key, value string) error {
	p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}
