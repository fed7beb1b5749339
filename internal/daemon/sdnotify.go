package daemon

import (
	"net"
	"os"
	"strings"
)

// notify tells systemd about the daemon's state (sd_notify(3)) when it runs
// as a Type=notify service: "READY=1" once the API serves, "RELOADING=1"
// and "READY=1" around a SIGHUP reload, "STOPPING=1" at shutdown. Outside
// systemd (no NOTIFY_SOCKET) it does nothing. The protocol is one datagram
// per message on the socket systemd names; "@" names an abstract socket.
func notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

// Notify sends state to systemd (see notify); the serve command uses it
// around reloads.
func Notify(state string) error { return notify(state) }
