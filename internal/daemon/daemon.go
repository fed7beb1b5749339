// Package daemon is hangar's composition root: it builds every subsystem
// from the Config, starts the background work, and shuts everything down in
// reverse order.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/creds"
	"github.com/hangar-vm/hangar/internal/events"
	"github.com/hangar-vm/hangar/internal/httpapi"
	"github.com/hangar-vm/hangar/internal/image"
	"github.com/hangar-vm/hangar/internal/login"
	"github.com/hangar-vm/hangar/internal/login/devoauth"
	"github.com/hangar-vm/hangar/internal/netslot"
	"github.com/hangar-vm/hangar/internal/prompt"
	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/tasks"
	"github.com/hangar-vm/hangar/internal/vm"
	"github.com/hangar-vm/hangar/web/dashboard"
)

// Version is set at build time with -ldflags "-X ...daemon.Version=...".
var Version = "dev"

// AdminKeyFile is the name of the file, in the data directory, that holds
// the first admin's API key.
const AdminKeyFile = "admin.key"

// closer is one named step of the ordered shutdown.
type closer struct {
	name string
	fn   func(context.Context) error
}

// Daemon is a running hangar.
type Daemon struct {
	cfg    config.Config
	log    *slog.Logger
	store  store.Store
	bus    *events.Bus
	api    *httpapi.Server
	runner *tasks.Runner
	images *image.Cache
	vms    *vm.Manager
	// slots and policies are nil when VM networking is off.
	slots    *netslot.Manager
	policies *policies
	// netKeys seals the upstream proxies of users' network policies.
	netKeys  *seal.Keyring
	logins   *login.Manager
	prompts  *prompt.Service
	creds    *creds.Manager
	devOAuth *devoauth.Server
	srv      *http.Server
	ln       net.Listener
	closers  []closer // run in reverse order by Shutdown

	// Banner, when set, receives a short human greeting once the API
	// listens: where it is and where the admin key is.
	Banner io.Writer

	bg     sync.WaitGroup // background goroutines
	cancel context.CancelFunc
}

// New builds the daemon: data directory, store (migrated), first admin key,
// API, task runner. Nothing listens until Serve.
func New(ctx context.Context, cfg config.Config, log *slog.Logger) (_ *Daemon, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	d := &Daemon{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			d.closeAll(context.Background())
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	st, err := store.Open(ctx, cfg.DSN(), log.With("component", "store"))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	d.store = st
	d.closers = append(d.closers, closer{"store", func(context.Context) error { return st.Close() }})
	log.Info("store ready", "dialect", st.Dialect())

	if err := d.bootstrapAdmin(ctx); err != nil {
		return nil, err
	}

	d.bus = events.NewBus(st, log.With("component", "events"))
	limit, window, _ := config.ParseRateLimit(cfg.RateLimit)
	d.api = httpapi.New(httpapi.Options{
		Store: st, Events: d.bus, Log: log.With("component", "api"), Version: Version,
		RateLimit: limit, RateWindow: window, MaxBodyBytes: cfg.MaxBodyBytes, MaxFileBytes: cfg.MaxFileBytes,
		Root: dashboard.Handler(),
	})
	// The API's event poller reads the store: it stops before the store
	// closes (Close is idempotent; Serve's shutdown calls it first).
	d.closers = append(d.closers, closer{"api", func(context.Context) error { d.api.Close(); return nil }})
	d.runner = tasks.NewRunner(st, log.With("component", "tasks"), time.Duration(cfg.TaskLease))

	d.images = newImageCache(cfg.DataDir, log.With("component", "image"))
	driver, err := newDriver(cfg, log.With("component", "vmm"))
	if err != nil {
		return nil, err
	}
	d.vms = vm.New(vm.Config{
		DataDir: cfg.DataDir, MaxVMsPerUser: cfg.MaxVMsPerUser, MaxBrowserVMs: cfg.MaxBrowserVMs,
		MaxBrowserVMsPerUser: cfg.MaxBrowserVMsPerUser, MaxVCPUsPerUser: cfg.MaxVCPUsPerUser,
		MaxMemoryMiBPerUser: cfg.MaxMemoryMiBPerUser, MaxDiskMiBPerUser: cfg.MaxDiskMiBPerUser,
		BootTimeout: time.Duration(cfg.BootTimeout), LogRetention: time.Duration(cfg.LogRetention),
		StopOnClose: cfg.VMShutdownPolicy == "stop", MaxFileBytes: cfg.MaxFileBytes, ConsoleMaxBytes: cfg.ConsoleMaxBytes,
	}, st, d.bus, &imageSource{cache: d.images, log: log.With("component", "image"), images: map[string]image.Image{}, vmlinux: driver.Name() == "firecracker"}, driver, log.With("component", "vm"))
	d.vms.Register(d.api.Registry())
	d.api.MountVMs(d.vms)
	d.api.MountShell(shells{d.vms})
	d.api.MountWait(d.vms)
	if err := d.mountNetworkPolicies(); err != nil {
		return nil, err
	}
	d.api.MountHibernation(d.vms)
	d.setupIdle()
	if err := d.setupNetwork(ctx); err != nil {
		return nil, err
	}
	// By default VMs keep running when the daemon stops and the next one
	// re-attaches (vm_shutdown_policy=leave); "stop" stops them in Close.
	d.closers = append(d.closers, closer{"vms", func(context.Context) error { d.vms.Close(); return nil }})
	if err := d.setupLogins(ctx, log); err != nil {
		return nil, err
	}
	// After logins and prompts are wired: a re-attached VM is handed to
	// the credential manager like a freshly booted one.
	if err := d.vms.Recover(ctx); err != nil {
		return nil, fmt.Errorf("recover vms: %w", err)
	}
	if os.Getenv("HANGAR_DEBUG_TASKS") == "1" {
		d.runner.Register(DebugTaskKind, debugTask)
		log.Warn("debug task kind enabled (HANGAR_DEBUG_TASKS=1); for tests only")
	}
	return d, nil
}

// Store is the daemon's store (tests and subsystems).
func (d *Daemon) Store() store.Store { return d.store }

// VMs is the VM manager.
func (d *Daemon) VMs() *vm.Manager { return d.vms }

// Runner is the durable task runner.
func (d *Daemon) Runner() *tasks.Runner { return d.runner }

// bootstrapAdmin creates the first admin and writes its key to
// <data-dir>/admin.key (0600) when the store has no users yet.
func (d *Daemon) bootstrapAdmin(ctx context.Context) error {
	path := filepath.Join(d.cfg.DataDir, AdminKeyFile)
	n, err := d.store.CountUsers(ctx)
	if err != nil {
		return fmt.Errorf("count users: %w", err)
	}
	if n > 0 {
		if _, err := os.Stat(path); err == nil {
			d.log.Info("admin key", "path", path)
		}
		return nil
	}
	u := store.User{ID: store.NewID("usr"), Name: "admin", Role: store.RoleAdmin, CreatedAt: time.Now().UTC()}
	key := httpapi.NewKey()
	// Write the key first: a crash after the user exists but before the
	// key is on disk would leave an admin nobody can use.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(key+"\n"), 0o600); err != nil {
		return fmt.Errorf("write admin key: %w", err)
	}
	if err := d.store.CreateUser(ctx, u); err != nil {
		return fmt.Errorf("create admin user: %w", err)
	}
	if err := d.store.CreateAPIKey(ctx, store.APIKey{ID: store.NewID("key"), UserID: u.ID, Hash: httpapi.HashKey(key), Prefix: key[:8], CreatedAt: u.CreatedAt}); err != nil {
		return fmt.Errorf("create admin key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("install admin key: %w", err)
	}
	d.log.Info("created the first admin; its API key is in the file named here (mode 0600)", "path", path, "user_id", u.ID)
	return nil
}

// Listen binds the API address. Split from Serve so tests can listen on
// port 0 and learn the address.
func (d *Daemon) Listen() (net.Addr, error) {
	ln, err := net.Listen("tcp", d.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", d.cfg.Listen, err)
	}
	d.ln = ln
	public := strings.TrimRight(d.cfg.PublicURL, "/")
	if public == "" {
		public = "http://" + ln.Addr().String()
	}
	d.logins.SetPublicDevOAuthURL(public + "/dev-oauth")
	return ln.Addr(), nil
}

// Serve runs the API and the background work until ctx ends, then shuts
// down in order: stop accepting, let in-flight requests finish (bounded by
// ShutdownTimeout), stop background work, close the store.
func (d *Daemon) Serve(ctx context.Context) error {
	if d.ln == nil {
		if _, err := d.Listen(); err != nil {
			return err
		}
	}
	bgctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.bg.Add(1)
	go func() { defer d.bg.Done(); d.runner.Run(bgctx) }()
	d.bg.Add(1)
	go func() { defer d.bg.Done(); d.periodic(bgctx) }()
	d.bg.Add(1)
	go func() { defer d.bg.Done(); d.reconcileLoop(bgctx) }()
	d.bg.Add(1)
	go func() { defer d.bg.Done(); d.idleLoop(bgctx) }()
	d.bg.Add(1)
	go func() { defer d.bg.Done(); d.vms.RunPool(bgctx) }()
	if d.cfg.BuildImages {
		d.bg.Add(1)
		go func() { defer d.bg.Done(); d.buildImages(bgctx) }()
	}

	d.srv = &http.Server{
		Handler:           d.api.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	d.srv.RegisterOnShutdown(d.api.Close)
	errc := make(chan error, 1)
	go func() { errc <- d.srv.Serve(d.ln) }()
	d.log.Info("hangar is serving", "url", "http://"+d.ln.Addr().String(), "version", Version, "store", d.store.Dialect())
	if err := notify("READY=1\nSTATUS=serving at http://" + d.ln.Addr().String()); err != nil {
		d.log.Warn("tell systemd the daemon is ready", "err", err)
	}
	if d.Banner != nil {
		fmt.Fprintf(d.Banner, "\nhangar %s is serving at http://%s\n  dashboard: http://%s/  (sign in with the admin API key)\n  store: %s\n  admin API key: %s\n  try: hangar me   |   hangar auth login dev   |   hangar vm create base\n\n",
			Version, d.ln.Addr(), d.ln.Addr(), d.store.Dialect(), filepath.Join(d.cfg.DataDir, AdminKeyFile))
	}

	var serveErr error
	select {
	case <-ctx.Done():
		d.log.Info("shutting down: finishing in-flight requests", "timeout", time.Duration(d.cfg.ShutdownTimeout))
		_ = notify("STOPPING=1")
	case serveErr = <-errc:
		d.log.Error("API server stopped", "err", serveErr)
	}
	sctx, scancel := context.WithTimeout(context.Background(), time.Duration(d.cfg.ShutdownTimeout))
	defer scancel()
	if err := d.srv.Shutdown(sctx); err != nil {
		d.log.Warn("in-flight requests did not finish in time", "err", err)
	}
	d.cancel()
	d.bg.Wait()
	d.closeAll(sctx)
	d.log.Info("shutdown complete")
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}

// periodic runs housekeeping at start and every few minutes: logs of
// destroyed VMs past their retention, finished tasks and events older than
// event_retention.
func (d *Daemon) periodic(ctx context.Context) {
	t := time.NewTicker(5 * time.Minute)
	defer t.Stop()
	for {
		if _, err := d.vms.PruneLogs(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("prune vm logs", "err", err)
		}
		cutoff := time.Now().Add(-time.Duration(d.cfg.LogRetention))
		if n, err := d.store.DeleteFinishedTasks(ctx, cutoff); err != nil && ctx.Err() == nil {
			d.log.Warn("prune finished tasks", "err", err)
		} else if n > 0 {
			d.log.Info("pruned finished tasks", "count", n)
		}
		if n, err := d.store.DeleteEventsBefore(ctx, time.Now().Add(-time.Duration(d.cfg.EventRetention))); err != nil && ctx.Err() == nil {
			d.log.Warn("prune events", "err", err)
		} else if n > 0 {
			d.log.Info("pruned old events", "count", n, "retention", time.Duration(d.cfg.EventRetention))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// reconcileLoop compares the store with the host every ReconcileInterval
// (the pass at start ran in Recover).
func (d *Daemon) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(time.Duration(d.cfg.ReconcileInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := d.vms.Reconcile(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("reconcile", "err", err)
		}
	}
}

// buildImages makes sure every guest image exists, building what is missing
// while the API already answers. Progress goes to the daemon's log; a VM
// create meanwhile waits for its image.
func (d *Daemon) buildImages(ctx context.Context) {
	for _, flavor := range []string{"base", "cli", "browser"} {
		start := time.Now()
		img, err := d.images.Ensure(ctx, flavor, image.SlogProgress{Log: d.log.With("component", "image", "flavor", flavor)})
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			d.log.Error("guest image unavailable; VMs of this kind will fail until it builds (hangar image build --flavor "+flavor+")", "flavor", flavor, "err", err)
			continue
		}
		d.log.Info("guest image ready", "flavor", flavor, "image_id", img.ID[:12], "duration", time.Since(start).Round(time.Millisecond))
	}
}

func (d *Daemon) closeAll(ctx context.Context) {
	for i := len(d.closers) - 1; i >= 0; i-- {
		c := d.closers[i]
		if err := c.fn(ctx); err != nil {
			d.log.Error("close", "component", c.name, "err", err)
		}
	}
	d.closers = nil
}

// DebugTaskKind is a task that records each run in a file; tests use it to
// prove the queue's crash behaviour through the real daemon. It is only
// registered with HANGAR_DEBUG_TASKS=1.
const DebugTaskKind = "debug.record"

// DebugTaskPayload is the payload of a debug.record task.
type DebugTaskPayload struct {
	File  string `json:"file"`
	Sleep string `json:"sleep"`
}

func debugTask(ctx context.Context, t store.Task) error {
	var p DebugTaskPayload
	if err := json.Unmarshal(t.Payload, &p); err != nil {
		return tasks.Permanent(fmt.Errorf("bad payload: %w", err))
	}
	sleep, _ := time.ParseDuration(p.Sleep)
	appendLine := func(s string) error {
		f, err := os.OpenFile(p.File, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = fmt.Fprintf(f, "%s %d %d\n", s, t.ID, t.Attempts)
		return err
	}
	if err := appendLine("start"); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(sleep):
	}
	return appendLine("done")
}
