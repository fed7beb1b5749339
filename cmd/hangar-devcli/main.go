// Command hangar-devcli is the CLI of hangar's "dev" provider; see package
// internal/devcli. In the guest images the same code runs from the agent's
// binary through the /usr/local/bin/hangar-devcli symlink.
package main

import (
	"os"

	"github.com/hangar-vm/hangar/internal/devcli"
)

func main() { os.Exit(devcli.Main(os.Args[1:])) }
