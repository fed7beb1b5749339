package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/hangar-vm/hangar/internal/liveview"
	"github.com/hangar-vm/hangar/internal/login"
	"github.com/hangar-vm/hangar/internal/login/devoauth"
	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/vm"
)

// setupLogins builds the browser-login side: the credential keyring, the
// built-in dev OAuth provider, the live view, and the session manager; it
// mounts their routes and registers the VM destroy task.
func (d *Daemon) setupLogins(ctx context.Context, log *slog.Logger) error {
	keys, err := seal.Open(d.cfg.DataDir, os.LookupEnv)
	if err != nil {
		return fmt.Errorf("credential keyring: %w", err)
	}
	log.Info("credential keyring ready", "source", keys.Source(), "current_key_version", keys.Current())
	recipes, err := login.LoadRecipes()
	if err != nil {
		return fmt.Errorf("provider recipes: %w", err)
	}
	dev := devoauth.New(devoauth.Options{Prefix: "/dev-oauth", AccessTTL: time.Duration(d.cfg.DevAccessTokenTTL), Log: log.With("component", "dev-oauth")})
	d.devOAuth = dev
	d.api.MountPublic("/dev-oauth/", dev)

	signer := liveview.NewSigner()
	d.logins = login.NewManager(login.Config{DestroyTaskKind: vm.DestroyTaskKind, HeartbeatTimeout: time.Duration(d.cfg.LoginHeartbeatTimeout)}, d.store, d.bus, d.vms, d.runner, keys, signer, recipes, dev, log.With("component", "login"))
	d.api.MountAuth(d.logins)

	alive := func(_ context.Context, id string) bool { return d.logins.Alive(id) }
	rtc, lvMetrics, err := d.setupWebRTC(log, alive)
	if err != nil {
		return err
	}
	lv := liveview.Handler(liveview.Options{
		WebRTC:  rtc,
		Metrics: lvMetrics,
		Signer:  signer,
		Log:     log.With("component", "liveview"),
		Alive:   alive,
		Dial: func(ctx context.Context, sessionID string, c liveview.Claims) (net.Conn, error) {
			vmID, err := d.logins.LiveVM(ctx, sessionID, c.OwnerID)
			if err != nil {
				return nil, err
			}
			u, err := d.store.GetUser(ctx, c.OwnerID)
			if err != nil {
				return nil, err
			}
			return d.vms.DialPort(ctx, u, vmID, 5900)
		},
	})
	d.api.MountPublic("/live/", lv)
	// A viewer page loads about 55 immutable, content-addressed module
	// files; they are not worth a share of the per-address rate limit.
	d.api.MountUnlimited("/live/v/", lv)
	d.logins.SetOnEnd(lv.EndSession)
	d.closers = append(d.closers, closer{"liveview", func(context.Context) error { lv.Close(); return nil }})

	d.runner.Register(vm.DestroyTaskKind, func(ctx context.Context, t store.Task) error {
		return d.vms.RunDestroyTask(ctx, t.Payload)
	})
	if err := d.logins.Recover(ctx); err != nil {
		return fmt.Errorf("recover login sessions: %w", err)
	}
	d.closers = append(d.closers, closer{"logins", func(context.Context) error { d.logins.Close(); return nil }})
	return d.setupPrompts(ctx, log, keys, recipes, dev)
}

// DevOAuth is the built-in dev provider (tests replay its tokens).
func (d *Daemon) DevOAuth() *devoauth.Server { return d.devOAuth }

// Logins is the login session manager.
func (d *Daemon) Logins() *login.Manager { return d.logins }
