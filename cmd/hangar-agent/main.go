// Command hangar-agent is the guest agent of hangar: PID 1 in every VM.
// It mounts the overlay root, supervises the image's services and serves
// the host over the agent link (virtio-serial or vsock).
package main

import (
	"flag"
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return
	}
	fmt.Fprintln(os.Stderr, "hangar-agent: not yet implemented")
	os.Exit(1)
}
