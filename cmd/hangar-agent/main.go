// Command hangar-agent is the guest agent of hangar: PID 1 in every VM.
//
// As PID 1 (the kernel runs it via init=/usr/sbin/hangar-agent) it mounts
// the overlay root, sets the host name, brings lo up, supervises the
// services declared in /etc/hangar/services.d/*.json and serves the host
// over the agent link named by hangar.link on the kernel command line (see
// proto.Params). Its log and every service's output go to /dev/console with
// a "[name] " prefix and into rings the host can read.
//
// Not as PID 1 (development and tests) it skips the mounts and serves the
// same protocol on -listen unix:/path or tcp:host:port.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hangar-vm/hangar/internal/agent"
	"github.com/hangar-vm/hangar/internal/agentlink/proto"
	"github.com/hangar-vm/hangar/internal/devcli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const servicesDir = "/etc/hangar/services.d"

func main() {
	// One static binary serves two programs in the images: the agent, and
	// the dev provider's CLI through the /usr/local/bin/hangar-devcli
	// symlink (busybox style), so the images need no second Go binary.
	if filepath.Base(os.Args[0]) == "hangar-devcli" {
		os.Exit(devcli.Main(os.Args[1:]))
	}
	if os.Getpid() == 1 {
		runPID1()
		return
	}
	os.Exit(runDev())
}

// runDev serves on a socket without touching the system.
func runDev() int {
	showVersion := flag.Bool("version", false, "print the version and exit")
	listen := flag.String("listen", "", "serve on unix:/path or tcp:host:port")
	tokenFile := flag.String("token-file", "", "file holding the per-VM token (default: $HANGAR_AGENT_TOKEN)")
	services := flag.String("services", "", "directory of service declarations (*.json); none when empty")
	debug := flag.Bool("debug", false, "log at debug level")
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return 0
	}
	token := os.Getenv("HANGAR_AGENT_TOKEN")
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "hangar-agent: read token file:", err)
			return 2
		}
		token = strings.TrimSpace(string(b))
	}
	network, addr, ok := strings.Cut(*listen, ":")
	if !ok || (network != "unix" && network != "tcp") || token == "" {
		fmt.Fprintln(os.Stderr, "hangar-agent: not PID 1: need -listen unix:/path|tcp:host:port and a token (-token-file or $HANGAR_AGENT_TOKEN)")
		flag.Usage()
		return 2
	}
	var specs []proto.ServiceSpec
	if *services != "" {
		var err error
		if specs, err = agent.LoadServices(*services); err != nil {
			fmt.Fprintln(os.Stderr, "hangar-agent:", err)
			return 1
		}
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	a, err := agent.New(agent.Config{Token: token, Version: version, Services: specs, Console: os.Stderr, LogLevel: level})
	if err != nil {
		fmt.Fprintln(os.Stderr, "hangar-agent:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen(network, addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hangar-agent:", err)
		return 1
	}
	go func() {
		if err := a.ServeListener(ctx, ln); err != nil && ctx.Err() == nil {
			a.Logger().Error("serve", "err", err)
		}
	}()
	if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return 1
	}
	return 0
}

// runPID1 boots the VM. It never returns: PID 1 exiting panics the kernel.
func runPID1() {
	earlyErr := agent.MountEarly()
	var console io.Writer = os.Stdout
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|syscall.O_NOCTTY, 0); err == nil {
		console = f
	}
	cmdline, cmdErr := os.ReadFile("/proc/cmdline")
	params, paramErr := proto.ParseKernelArgs(string(cmdline))

	// The agent (and its logger) exists before the mounts, so every step
	// is on the console and in the "agent" ring the host can read.
	var a *agent.Agent
	level := slog.LevelInfo
	if params.Debug {
		level = slog.LevelDebug
	}
	a, err := agent.New(agent.Config{
		Token:    params.Token,
		Version:  version,
		Console:  console,
		PID1:     true,
		LogLevel: level,
		SetClock: agent.SetSystemClock,
		// Clones of a template are re-keyed through these.
		Reseed:      agent.ReseedKernelRNG,
		SetHostname: agent.SetHostname,
		PowerOff: func(reboot bool) {
			// Firecracker has no ACPI power-off: a guest reboot makes it exit.
			agent.PowerOff(a.Logger(), reboot || params.Link == proto.LinkVsock)
		},
	})
	if err != nil || cmdErr != nil || paramErr != nil {
		// Without a token the host can never talk to us; say why on the
		// console, where the host keeps it, and wait to be killed.
		fmt.Fprintf(console, "[agent] fatal: cannot start: %v\n", errors.Join(err, cmdErr, paramErr))
		select {}
	}
	log := a.Logger()
	log.Info("hangar-agent booting", "version", version, "upper", params.Upper, "link", params.Link, "hostname", params.Hostname)
	if earlyErr != nil {
		log.Error("early mounts", "err", earlyErr)
	}
	if err := agent.DisableCtrlAltDel(); err != nil {
		log.Error("ctrl-alt-del would restart the guest without a clean shutdown", "err", err)
	}
	start := time.Now()
	if err := agent.SetupRoot(log, params.Upper); err != nil {
		log.Error("overlay root failed: running on the read-only base; writes outside /run and /tmp will fail", "err", err)
	}
	if err := agent.MountRuntime(); err != nil {
		log.Error("runtime mounts", "err", err)
	}
	if err := agent.SetHostname(params.Hostname); err != nil {
		log.Error("hostname", "err", err)
	}
	if err := agent.LoopbackUp(); err != nil {
		log.Error("loopback", "err", err)
	}
	_ = os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	log.Info("system mounted", "took", time.Since(start).Round(time.Millisecond).String())

	specs, err := agent.LoadServices(servicesDir)
	if err == nil {
		err = a.SetServices(specs)
	}
	if err != nil {
		log.Error("service declarations are invalid: starting no services", "err", err)
	}

	ctx := context.Background()
	sigs := make(chan os.Signal, 4)
	// Go's default for SIGTERM/SIGINT is to exit, which would panic the
	// kernel: catch them. SIGINT is what ctrl-alt-del sends to init.
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGPWR)
	signal.Ignore(syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE)
	go func() {
		s := <-sigs
		log.Info("signal received, shutting down", "signal", s.String())
		a.Shutdown(false)
	}()

	switch params.Link {
	case proto.LinkVsock:
		ln, err := agent.ListenVsock(proto.VsockPort)
		if err != nil {
			log.Error("agent link", "err", err)
		} else {
			go func() { _ = a.ServeListener(ctx, ln) }()
		}
	default:
		go func() { _ = a.ServePort(ctx, agent.OpenVirtioPort(proto.VirtioPortName)) }()
	}
	_ = a.Run(ctx)
	select {}
}
