package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/image"
	"github.com/hangar-vm/hangar/internal/netslot"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/internal/vm"
	"github.com/hangar-vm/hangar/pkg/api"
)

// leftover is one host object of this data directory (or network prefix)
// that no VM record accounts for.
type leftover struct {
	// Kind is "process", "run_dir", "netns", "link" or "nft_table".
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Why says how it was judged a leftover.
	Why string `json:"why"`

	proc *vm.HypervisorProcess
	slot *netslot.Found
}

// loadConfig builds the daemon's configuration the way `hangar serve`
// does (defaults, --config file, HANGAR_* env, --data-dir), so doctor and
// gc look at the same data directory, prefix and namespace.
func loadConfig(o *rootOptions, configFile string) (config.Config, error) {
	cfg := config.Default()
	if configFile != "" {
		if err := cfg.LoadFile(configFile); err != nil {
			return cfg, err
		}
	}
	if err := cfg.LoadEnv(os.LookupEnv); err != nil {
		return cfg, err
	}
	if o.dataDir != "" {
		cfg.DataDir = o.dataDir
	}
	return cfg, nil
}

// vmRecords lists every VM record; an embedded store that does not exist
// yet has none (it is not created just to look).
func vmRecords(ctx context.Context, cfg config.Config) ([]store.VM, error) {
	if cfg.Database == "" {
		if _, err := os.Stat(cfg.DSN()); errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
	}
	st, err := store.Open(ctx, cfg.DSN(), slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	defer st.Close()
	return st.ListVMs(ctx, "")
}

// findLeftovers compares the store with the host: hypervisor processes of
// the data directory no record persisted, run directories of VMs that are
// unknown or destroyed, slot namespaces and host links no active record
// holds, and hangar's host nftables table when no record holds a slot.
// With the daemon running, its idle pool slots show up as unrecorded too.
func findLeftovers(ctx context.Context, cfg config.Config) ([]leftover, error) {
	recs, err := vmRecords(ctx, cfg)
	if err != nil {
		return nil, err
	}
	byID := map[string]store.VM{}
	kept := map[string]bool{}
	for _, v := range recs {
		byID[v.ID] = v
		if s := vm.RecordSlot(v); s != "" {
			kept[s] = true
		}
	}
	var out []leftover
	var errList []error
	procs, err := vm.ScanHypervisors(cfg.DataDir)
	if err != nil {
		errList = append(errList, err)
	}
	for _, p := range procs {
		v, ok := byID[p.VMID]
		if ok && vm.RecordOwnsProcess(v, p) {
			continue
		}
		why := "no vm record"
		if ok {
			why = "vm " + v.State + ", record names another process"
		}
		out = append(out, leftover{Kind: "process", Name: fmt.Sprintf("%d (%s, vm %s)", p.PID, p.Exe, p.VMID), Why: why, proc: &p})
	}
	ents, err := os.ReadDir(filepath.Join(cfg.DataDir, "vms"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errList = append(errList, err)
	}
	for _, e := range ents {
		v, ok := byID[e.Name()]
		if ok && v.State != api.VMDestroyed {
			continue
		}
		why := "no vm record"
		if ok {
			why = "vm destroyed"
		}
		out = append(out, leftover{Kind: "run_dir", Name: filepath.Join(cfg.DataDir, "vms", e.Name()), Why: why})
	}
	n := cfg.Network
	found, err := netslot.Scan(ctx, n.Prefix, n.HostNetNS)
	if err != nil {
		errList = append(errList, fmt.Errorf("scan network slots: %w", err))
	}
	for _, f := range found {
		if kept[f.SlotID] {
			continue
		}
		out = append(out, leftover{Kind: f.Kind, Name: f.Name, Why: "slot " + f.SlotID + " is held by no active vm record", slot: &f})
	}
	if len(kept) == 0 {
		if ok, err := netslot.ScanTable(ctx, n.Prefix, n.HostNetNS); err != nil {
			errList = append(errList, err)
		} else if ok {
			out = append(out, leftover{Kind: "nft_table", Name: "inet " + n.Prefix, Why: "no vm record holds a network slot"})
		}
	}
	return out, errors.Join(errList...)
}

// removeLeftover removes one leftover: processes are killed (pid and start
// time checked through a pidfd), run directories removed, links deleted
// before namespaces (deleting a namespace takes its veth with it).
func removeLeftover(ctx context.Context, cfg config.Config, l leftover) error {
	switch l.Kind {
	case "process":
		return vm.KillProcess(*l.proc, 5*time.Second)
	case "run_dir":
		return os.RemoveAll(l.Name)
	case "netns", "link":
		return netslot.Remove(ctx, cfg.Network.HostNetNS, *l.slot)
	case "nft_table":
		return netslot.RemoveTable(ctx, cfg.Network.Prefix, cfg.Network.HostNetNS)
	}
	return fmt.Errorf("unknown leftover kind %q", l.Kind)
}

// gcOrder is the removal order: processes before their directories and
// namespaces, links before namespaces, the table last.
var gcOrder = map[string]int{"process": 0, "run_dir": 1, "link": 2, "netns": 3, "nft_table": 4}

// daemonAnswers reports whether a hangar API answers at listen.
func daemonAnswers(ctx context.Context, listen string) bool {
	host := listen
	if strings.HasPrefix(host, ":") || strings.HasPrefix(host, "0.0.0.0:") {
		host = "127.0.0.1:" + host[strings.LastIndexByte(host, ':')+1:]
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/health", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// leftoverChecks turns leftovers into doctor checks (warnings with a fix).
func leftoverChecks(ctx context.Context, cfg config.Config) []image.Check {
	ls, err := findLeftovers(ctx, cfg)
	var checks []image.Check
	if err != nil {
		checks = append(checks, image.Check{Name: "leftovers", For: "a clean host", Warn: true,
			Info: "could not look at everything: " + err.Error(), Fix: "run hangar doctor as root"})
	}
	fix := "hangar gc (with the daemon stopped)"
	running := daemonAnswers(ctx, cfg.Listen)
	for _, l := range ls {
		info := l.Why
		if running && (l.Kind == "netns" || l.Kind == "link") {
			info += " (the daemon is running: this may be its idle pool)"
		}
		checks = append(checks, image.Check{Name: "leftover " + l.Kind + " " + l.Name, For: "a clean host", Warn: true, Info: info, Fix: fix})
	}
	if err == nil && len(ls) == 0 {
		checks = append(checks, image.Check{Name: "leftovers", For: "a clean host", OK: true,
			Info: "no hypervisor process, run directory or network slot without a vm record"})
	}
	return checks
}

func newGCCmd(o *rootOptions) *cobra.Command {
	var configFile string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove what no VM record owns: hypervisor processes, run directories, network slots",
		Long: `Removes the leftovers hangar doctor reports: hypervisor processes of the
data directory that no VM record persisted, run directories of unknown or
destroyed VMs, network slot namespaces and host links no active record
holds, and hangar's nftables table when no record holds a slot.

The daemon does the same at start and every reconcile_interval, so gc is
for a daemon that is stopped (and will not be restarted soon). It refuses
while the daemon's API answers on the configured address.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, err := loadConfig(o, configFile)
			if err != nil {
				return err
			}
			if daemonAnswers(ctx, cfg.Listen) {
				return fmt.Errorf("the hangar daemon answers at %s: stop the daemon first, or let it reconcile", cfg.Listen)
			}
			ls, err := findLeftovers(ctx, cfg)
			if err != nil {
				return err
			}
			sortLeftovers(ls)
			w := cmd.OutOrStdout()
			var errList []error
			for _, l := range ls {
				if dryRun {
					fmt.Fprintf(w, "would remove %s %s (%s)\n", l.Kind, l.Name, l.Why)
					continue
				}
				if err := removeLeftover(ctx, cfg, l); err != nil {
					errList = append(errList, fmt.Errorf("remove %s %s: %w", l.Kind, l.Name, err))
					continue
				}
				fmt.Fprintf(w, "removed %s %s (%s)\n", l.Kind, l.Name, l.Why)
			}
			if len(ls) == 0 {
				fmt.Fprintln(w, "nothing to remove")
			}
			return errors.Join(errList...)
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "the daemon's JSON config file (for its data dir, listen address and network prefix)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only list what would be removed")
	return cmd
}

func sortLeftovers(ls []leftover) {
	slices.SortStableFunc(ls, func(a, b leftover) int { return gcOrder[a.Kind] - gcOrder[b.Kind] })
}
