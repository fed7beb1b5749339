package daemon

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/login"
	"github.com/hangar-vm/hangar/internal/netslot"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// TestCLIAllowListReachesProviderHosts: under an allow-list, a CLI VM
// still reaches the hosts its providers' CLIs need (the recipes' api_hosts);
// browser VMs and "none" are left as configured.
func TestCLIAllowListReachesProviderHosts(t *testing.T) {
	recipes, err := login.LoadRecipes()
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for _, n := range recipes.Names() {
		hosts = append(hosts, recipes[n].APIHosts...)
	}
	if !slices.Contains(hosts, "api.openai.com") || !slices.Contains(hosts, "api.anthropic.com") {
		t.Fatalf("recipes name no provider API hosts: %v", hosts)
	}
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "hangar.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	p := &policies{store: st, providerHosts: hosts, defaults: map[string]config.EgressPolicy{
		api.KindCLI:     {Mode: "allow", Allow: []string{"example.com"}},
		api.KindBrowser: {Mode: "allow", Allow: []string{"example.com"}},
		api.KindBase:    {Mode: "none"},
	}}
	ctx := context.Background()
	cli, err := p.VMPolicy(ctx, "usr_nobody", api.KindCLI)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range append([]string{"example.com"}, hosts...) {
		if !slices.Contains(cli.AllowDomains, h) {
			t.Errorf("cli allow-list lacks %s: %v", h, cli.AllowDomains)
		}
	}
	br, _ := p.VMPolicy(ctx, "usr_nobody", api.KindBrowser)
	if slices.Contains(br.AllowDomains, "api.openai.com") {
		t.Errorf("a browser VM's allow-list was opened to provider hosts: %v", br.AllowDomains)
	}
	base, _ := p.VMPolicy(ctx, "usr_nobody", api.KindBase)
	if base.Mode != netslot.ModeNone {
		t.Errorf("mode none became %s", base.Mode)
	}
}
