package daemon

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/hangar-vm/hangar/internal/creds"
	"github.com/hangar-vm/hangar/internal/httpapi"
	"github.com/hangar-vm/hangar/internal/login"
	"github.com/hangar-vm/hangar/internal/prompt"
	"github.com/hangar-vm/hangar/internal/seal"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/vm"
	"github.com/hangar-vm/hangar/pkg/api"
)

// system is the caller subsystems act as when they reach any user's VM.
var system = store.User{ID: "system", Name: "system", Role: store.RoleAdmin}

// credVMs adapts the VM manager to the credential manager.
type credVMs struct{ vms *vm.Manager }

func (a credVMs) VM(ctx context.Context, id string) (api.VM, error) { return a.vms.Record(ctx, id) }

func (a credVMs) Agent(ctx context.Context, id string) (creds.Agent, error) {
	c, err := a.vms.Link(ctx, system, id)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// setupPrompts builds the credential manager (delivery, leases, sync-back)
// and the prompt service, wires them to VM lifecycles and to logins, and
// mounts the prompt routes. It runs before the VMs are recovered, so that
// re-attached VMs are handed to the credential manager too.
func (d *Daemon) setupPrompts(ctx context.Context, log *slog.Logger, keys *seal.Keyring, recipes login.Recipes, dev http.Handler) error {
	cm := creds.New(creds.Config{
		LeaseTTL: time.Duration(d.cfg.CredentialLeaseTTL), LeaseWait: time.Duration(d.cfg.CredentialLeaseWait),
		SyncInterval: time.Duration(d.cfg.CredentialSyncInterval), DevOAuth: dev,
	}, d.store, keys, recipes, credVMs{d.vms}, d.bus, log.With("component", "creds"))
	d.vms.SetLifecycle(cm)
	cm.Start()
	d.closers = append(d.closers, closer{"credentials", func(context.Context) error { cm.Close(); return nil }})
	workspaces := func(ctx context.Context, owner string) []string {
		vs, err := d.vms.List(ctx, store.User{ID: owner, Role: store.RoleUser})
		if err != nil {
			return nil
		}
		var ids []string
		for _, v := range vs {
			if v.Kind == api.KindCLI && v.Purpose == api.PurposeWorkspace && v.State == api.VMReady {
				ids = append(ids, v.ID)
			}
		}
		return ids
	}
	d.logins.SetOnCredentials(func(owner, provider string) {
		d.bg.Add(1)
		go func() {
			defer d.bg.Done()
			cm.Changed(owner, provider, workspaces)
		}()
	})
	d.prompts = prompt.New(prompt.Config{
		DataDir: d.cfg.DataDir, DefaultTimeout: time.Duration(d.cfg.PromptTimeout),
		LeaseWait: time.Duration(d.cfg.CredentialLeaseWait), ReadyTimeout: time.Duration(d.cfg.BootTimeout) + time.Minute,
	}, d.store, d.bus, d.vms, cm, recipes, log.With("component", "prompt"))
	d.api.MountPrompts(d.prompts)
	if err := d.prompts.Recover(ctx); err != nil {
		return err
	}
	d.closers = append(d.closers, closer{"prompts", func(context.Context) error { d.prompts.Close(); return nil }})
	d.creds = cm
	return nil
}

// Prompts is the prompt service.
func (d *Daemon) Prompts() *prompt.Service { return d.prompts }

// Credentials is the credential manager.
func (d *Daemon) Credentials() *creds.Manager { return d.creds }

// shells adapts the VM manager to the API's terminal route.
type shells struct{ vms *vm.Manager }

func (a shells) Shell(ctx context.Context, caller store.User, id string, req api.ShellRequest) (httpapi.Terminal, error) {
	t, err := a.vms.Shell(ctx, caller, id, req)
	if err != nil {
		return nil, err
	}
	return t, nil
}
