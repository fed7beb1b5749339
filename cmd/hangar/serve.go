package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/daemon"
)

func newServeCmd(o *rootOptions) *cobra.Command {
	var (
		configFile string
		listen     string
		database   string
		rateLimit  string
		logLevel   string
		logFormat  string
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the hangar daemon",
		Long: `Run the hangar daemon: the HTTP API, the store, the durable task runner.

Settings come from, in order: the embedded defaults, the JSON file given
with --config, HANGAR_* environment variables, then these flags.

On first start the daemon creates an admin user and writes its API key to
<data-dir>/admin.key (mode 0600); local hangar commands read it from there.

Under systemd (Type=notify) it reports READY=1 once it serves. SIGHUP
reloads the log level from the config file and environment; SIGTERM stops
it gracefully (VMs keep running by default and the next daemon re-attaches
them).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := config.Default()
			if configFile != "" {
				if err := cfg.LoadFile(configFile); err != nil {
					return err
				}
			}
			if err := cfg.LoadEnv(os.LookupEnv); err != nil {
				return err
			}
			f := cmd.Flags()
			if o.dataDir != "" {
				cfg.DataDir = o.dataDir
			}
			if f.Changed("listen") {
				cfg.Listen = listen
			}
			if f.Changed("database") {
				cfg.Database = database
			}
			if f.Changed("rate-limit") {
				cfg.RateLimit = rateLimit
			}
			if f.Changed("log-level") {
				cfg.LogLevel = logLevel
			}
			if f.Changed("log-format") {
				cfg.LogFormat = logFormat
			}
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("invalid configuration:\n%w", err)
			}
			level := new(slog.LevelVar)
			log := newLogger(cfg, level)
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			// SIGHUP reloads what is safe to change while serving: the log
			// level (from the config file, then the environment). Anything
			// else needs a restart, which VMs survive.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for range hup {
					_ = daemon.Notify("RELOADING=1")
					next := config.Default()
					err := error(nil)
					if configFile != "" {
						err = next.LoadFile(configFile)
					}
					if err == nil {
						err = next.LoadEnv(os.LookupEnv)
					}
					if f.Changed("log-level") {
						next.LogLevel = logLevel
					}
					var lvl slog.Level
					if err == nil {
						err = lvl.UnmarshalText([]byte(next.LogLevel))
					}
					if err != nil {
						log.Warn("SIGHUP: configuration not reloaded", "err", err)
					} else {
						level.Set(lvl)
						log.Info("SIGHUP: configuration reloaded", "log_level", next.LogLevel)
					}
					_ = daemon.Notify("READY=1")
				}
			}()
			d, err := daemon.New(ctx, cfg, log)
			if err != nil {
				return err
			}
			d.Banner = cmd.ErrOrStderr()
			return d.Serve(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "JSON config file (keys as in the README's configuration table)")
	f.StringVar(&listen, "listen", "127.0.0.1:4000", "API address (env HANGAR_LISTEN)")
	f.StringVar(&database, "database", "", "postgres:// URL; empty for the embedded SQLite store in the data dir (env HANGAR_DATABASE)")
	f.StringVar(&rateLimit, "rate-limit", "1000/15m", "requests per window, per API key or client address (env HANGAR_RATE_LIMIT)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error (env HANGAR_LOG_LEVEL)")
	f.StringVar(&logFormat, "log-format", "text", "text or json (env HANGAR_LOG_FORMAT)")
	return cmd
}

func newLogger(cfg config.Config, level *slog.LevelVar) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel))
	level.Set(lvl)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
