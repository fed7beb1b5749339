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
		// Errors may quote a guest (an agent's refusal, a console line).
		fmt.Fprintln(os.Stderr, "error:", sanitize(err.Error(), true))
		os.Exit(1)
	}
}
