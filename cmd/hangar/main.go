// Command hangar is the hangar daemon (hangar serve) and its command-line
// client (every other subcommand).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
)

func main() {
	// Ctrl-C ends client commands (a followed log, a long exec) cleanly;
	// serve installs its own handling for SIGTERM.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	var ee exitError
	if errors.As(err, &ee) {
		os.Exit(ee.code)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
