package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hangar-vm/hangar/internal/bench"
	"github.com/hangar-vm/hangar/internal/image"
	"github.com/hangar-vm/hangar/pkg/api"
	"github.com/hangar-vm/hangar/pkg/client"
)

// suite runs the benchmarks against one daemon and records into res.
type suite struct {
	p     plan
	res   *bench.Result
	h     *harness
	cache *image.Cache
	// baselines are the systemd baselines by kind; a kind whose baseline
	// failed to build or boot is removed.
	baselines map[string]image.SystemdBaseline
	accel     string
}

const mib = 1 << 20

// samples collects the samples of one run, keyed by measure id, in the
// order measures were first seen (the table keeps that order).
type samples struct {
	order  []string
	labels map[string][2]string // id → label, unit
	vals   map[string][]float64
}

func newSamples() *samples {
	return &samples{labels: map[string][2]string{}, vals: map[string][]float64{}}
}

func (s *samples) add(id, label, unit string, v ...float64) {
	if _, ok := s.labels[id]; !ok {
		s.order = append(s.order, id)
		s.labels[id] = [2]string{label, unit}
	}
	s.vals[id] = append(s.vals[id], v...)
}

func (s *samples) record(r *bench.Result) {
	for _, id := range s.order {
		r.Add(id, s.labels[id][0], s.labels[id][1], s.vals[id])
	}
}

// boots measures cold create → ready for each kind and, interleaved with
// the base boots, the systemd baseline: sample i of each runs back to back,
// so a burst of load from other work on the host hits both.
func (b *suite) boots(ctx context.Context, kinds []string) error {
	s := newSamples()
	defer s.record(b.res)
	rounds := 0
	for _, k := range kinds {
		rounds = max(rounds, b.p.boot[k], b.p.systemd[k])
	}
	shapes := map[string]api.VM{}
	for i := 0; i < rounds; i++ {
		for _, k := range kinds {
			if i < b.p.boot[k] {
				vm, err := b.hangarBoot(ctx, s, k, i)
				if err != nil {
					return err
				}
				shapes[k] = vm
			}
			bl, ok := b.baselines[k]
			shape, booted := shapes[k]
			if ok && booted && i < b.p.systemd[k] {
				if err := b.systemdBoot(ctx, s, k, bl, shape, i); err != nil {
					say("systemd baseline boot of %s failed: %v", k, err)
					b.res.NotMeasured = append(b.res.NotMeasured, "systemd baseline boot of "+k+": "+firstLine(err.Error()))
					delete(b.baselines, k)
				}
			}
		}
	}
	return nil
}

func (b *suite) hangarBoot(ctx context.Context, s *samples, kind string, i int) (api.VM, error) {
	say("[boot %s %d/%d] hangar: create → ready", kind, i+1, b.p.boot[kind])
	before, err := bench.AllocatedBytes(b.h.dataDir)
	if err != nil {
		return api.VM{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	start := time.Now()
	vm, err := b.h.admin.CreateVM(cctx, api.CreateVMRequest{Kind: kind})
	if err != nil {
		return api.VM{}, fmt.Errorf("create %s vm: %w", kind, err)
	}
	ready, err := b.h.admin.WaitVM(cctx, vm.ID, api.VMReady)
	wall := time.Since(start)
	if err != nil {
		var logs strings.Builder
		_ = b.h.admin.Logs(context.Background(), vm.ID, "", false, &logs)
		return api.VM{}, fmt.Errorf("%s vm %s not ready: %w\nconsole tail:\n%s", kind, vm.ID, err, tail(logs.String(), 30))
	}
	after, err := bench.AllocatedBytes(b.h.dataDir)
	if err != nil {
		return api.VM{}, err
	}
	if ready.Acceleration != "" && ready.Acceleration != b.accel {
		return api.VM{}, fmt.Errorf("the daemon booted under %s, the run recorded %s", ready.Acceleration, b.accel)
	}
	ph := ready.BootPhases
	if ph == nil {
		return api.VM{}, fmt.Errorf("%s vm %s is ready without boot phases", kind, vm.ID)
	}
	pre := "boot/" + kind + "/hangar/"
	s.add(pre+"total", kind+": hangar QEMU start → ready (boot phases total)", "ms", float64(ph.TotalMS))
	s.add(pre+"spawn", kind+":   phase spawn (QEMU process up)", "ms", float64(ph.SpawnMS))
	s.add(pre+"kernel", kind+":   phase kernel (to agent start)", "ms", float64(ph.KernelMS))
	s.add(pre+"agent", kind+":   phase agent up (to link)", "ms", float64(ph.AgentUpMS))
	s.add(pre+"services", kind+":   phase services ready", "ms", float64(ph.ServicesReadyMS))
	s.add(pre+"api", kind+": hangar API create → ready seen (client, 250 ms polls)", "ms", float64(wall.Milliseconds()))
	s.add("create/"+kind+"/hangar/bytes", kind+": disk allocated in the data dir per create (overlay, logs, store)", "MiB", float64(after-before)/mib)
	say("[boot %s %d/%d] ready in %d ms (spawn %d, kernel %d, agent %d, services %d); data dir +%.2f MiB; %d vCPU, %d MiB",
		kind, i+1, b.p.boot[kind], ph.TotalMS, ph.SpawnMS, ph.KernelMS, ph.AgentUpMS, ph.ServicesReadyMS, float64(after-before)/mib, ready.VCPUs, ready.MemoryMiB)

	pid, err := bench.FindProcess("hangar-"+strings.ReplaceAll(vm.ID, "_", "-")+",", "qemu")
	if err != nil {
		return api.VM{}, err
	}
	say("[boot %s %d/%d] idle %s, then PSS of QEMU pid %d", kind, i+1, b.p.boot[kind], b.p.settle, pid)
	select {
	case <-time.After(b.p.settle):
	case <-ctx.Done():
		return api.VM{}, ctx.Err()
	}
	pss, err := bench.PSSKiB(pid)
	if err != nil {
		return api.VM{}, err
	}
	s.add("memory/"+kind+"/hangar/pss", kind+": hangar host memory per idle VM (QEMU PSS)", "MiB", float64(pss)/1024)
	say("[boot %s %d/%d] PSS %.1f MiB; deleting", kind, i+1, b.p.boot[kind], float64(pss)/1024)
	if err := b.h.admin.DeleteVM(cctx, vm.ID); err != nil {
		return api.VM{}, fmt.Errorf("delete %s: %w", vm.ID, err)
	}
	return ready, nil
}

// systemdBoot boots kind's systemd baseline once in the shape (vCPUs,
// memory) hangar gave the same kind.
func (b *suite) systemdBoot(ctx context.Context, s *samples, kind string, bl image.SystemdBaseline, shape api.VM, i int) error {
	say("[boot %s %d/%d] systemd baseline: QEMU start → ready unit (%d vCPU, %d MiB, %s)", kind, i+1, b.p.systemd[kind], shape.VCPUs, shape.MemoryMiB, b.accel)
	console := filepath.Join(bl.Dir, "..", "logs", fmt.Sprintf("boot-%s-%s-%d.log", kind, b.res.StartedAt.Format("20060102T150405"), i+1))
	r, err := bench.BootSystemd(ctx, bl, b.accel, shape.VCPUs, shape.MemoryMiB, b.p.settle, console, func(m string) {
		say("[boot %s %d/%d] systemd baseline: %s", kind, i+1, b.p.systemd[kind], m)
	})
	if err != nil {
		return err
	}
	pre := "boot/" + kind + "/systemd/"
	s.add(pre+"ready", kind+": systemd baseline QEMU start → ready unit", "ms", float64(r.Ready.Milliseconds()))
	s.add(pre+"kernel", kind+":   systemd baseline to first kernel output", "ms", float64(r.FirstOutput.Milliseconds()))
	s.add(pre+"systemd", kind+":   systemd baseline to systemd banner (kernel + initramfs)", "ms", float64(r.SystemdUp.Milliseconds()))
	s.add("memory/"+kind+"/systemd/pss", kind+": systemd baseline host memory per idle VM (QEMU PSS)", "MiB", float64(r.PSSKiB)/1024)
	say("[boot %s %d/%d] systemd baseline ready in %d ms, PSS %.1f MiB", kind, i+1, b.p.systemd[kind], r.Ready.Milliseconds(), float64(r.PSSKiB)/1024)
	return nil
}

// fullCopies measures the old system's per-VM create: a plain copy of the
// flavor's whole root filesystem image (as dd did: every block written,
// no sparseness, no reflink), flushed to disk.
func (b *suite) fullCopies(ctx context.Context, kinds []string) error {
	s := newSamples()
	defer s.record(b.res)
	for _, k := range kinds {
		img, err := b.cache.Lookup(ctx, k)
		if err != nil {
			return err
		}
		for i := 0; i < b.p.copies; i++ {
			dst := filepath.Join(b.h.dataDir, "full-copy-"+k+".ext4")
			say("[create %s %d/%d] full copy of %s", k, i+1, b.p.copies, img.Rootfs)
			start := time.Now()
			if err := copyAll(ctx, img.Rootfs, dst); err != nil {
				os.Remove(dst)
				return err
			}
			el := time.Since(start)
			alloc, err := bench.AllocatedBytes(dst)
			os.Remove(dst)
			if err != nil {
				return err
			}
			s.add("create/"+k+"/copy/time", k+": full rootfs copy per create (old way), time", "ms", float64(el.Milliseconds()))
			s.add("create/"+k+"/copy/bytes", k+": full rootfs copy per create (old way), disk allocated", "MiB", float64(alloc)/mib)
			say("[create %s %d/%d] copied %.0f MiB in %s", k, i+1, b.p.copies, float64(alloc)/mib, el.Round(time.Millisecond))
		}
	}
	return nil
}

func copyAll(ctx context.Context, from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	buf := make([]byte, 4*mib)
	for {
		if ctx.Err() != nil {
			out.Close()
			return ctx.Err()
		}
		n, rerr := in.Read(buf)
		if n > 0 {
			if _, err := out.Write(buf[:n]); err != nil {
				out.Close()
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			out.Close()
			return rerr
		}
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

var hiddenRequestRE = regexp.MustCompile(`name="request" value="([^"]+)"`)

// prompts logs a user in to the dev provider once (paste mode: a CLI VM
// runs the dev CLI's login, the bench plays the user's browser against the
// dev OAuth server and pastes the code), then times prompts: API call →
// first output event → completed. The first prompt boots the user's CLI
// workspace VM cold and is recorded apart from the rest.
func (b *suite) prompts(ctx context.Context) error {
	s := newSamples()
	defer s.record(b.res)
	u, err := b.h.admin.CreateUser(ctx, api.CreateUserRequest{Name: "bench"})
	if err != nil {
		return err
	}
	c := client.New(b.h.url, u.APIKey)
	say("[login dev] paste-mode session: a CLI VM runs the dev CLI's login")
	start := time.Now()
	var sess api.AuthSession
	if err := c.Do(ctx, http.MethodPost, "/api/v1/auth/sessions", api.CreateAuthSessionRequest{Provider: "dev", Mode: api.ModePaste}, &sess); err != nil {
		return err
	}
	sess, err = waitSession(ctx, c, sess.ID, 5*time.Minute, func(s api.AuthSession) bool { return s.OAuthURL != "" && s.State == api.AuthAwaitingUser })
	if err != nil {
		return err
	}
	toURL := time.Since(start)
	say("[login dev] OAuth URL after %s; signing in and consenting", toURL.Round(time.Millisecond))
	code, err := devOAuth(b.h.url, sess.OAuthURL)
	if err != nil {
		return err
	}
	pasted := time.Now()
	if err := c.AuthInput(ctx, sess.ID, code); err != nil {
		return err
	}
	if _, err := waitSession(ctx, c, sess.ID, 2*time.Minute, func(s api.AuthSession) bool { return s.State == api.AuthCompleted }); err != nil {
		return err
	}
	toCaptured := time.Since(pasted)
	s.add("login/dev/url", "login dev (paste): API call → OAuth URL shown (boots a CLI VM)", "ms", float64(toURL.Milliseconds()))
	s.add("login/dev/captured", "login dev (paste): code pasted → credentials captured", "ms", float64(toCaptured.Milliseconds()))
	say("[login dev] credentials captured %s after the paste", toCaptured.Round(time.Millisecond))

	for i := 0; i <= b.p.prompts; i++ {
		first, done, err := onePrompt(ctx, c, fmt.Sprintf("benchmark prompt %d", i))
		if err != nil {
			return err
		}
		id := "prompt/dev/warm/"
		label := "prompt dev, CLI VM running: "
		if i == 0 {
			id, label = "prompt/dev/cold/", "prompt dev, first (boots the CLI VM): "
		}
		s.add(id+"first", label+"API call → first output event", "ms", float64(first.Milliseconds()))
		s.add(id+"done", label+"API call → completed", "ms", float64(done.Milliseconds()))
		say("[prompt dev %d/%d] first output %s, completed %s", i, b.p.prompts, first.Round(time.Millisecond), done.Round(time.Millisecond))
	}
	return nil
}

func onePrompt(ctx context.Context, c *client.Client, text string) (first, done time.Duration, err error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	start := time.Now()
	p, err := c.CreatePrompt(cctx, api.CreatePromptRequest{Provider: "dev", Prompt: text})
	if err != nil {
		return 0, 0, fmt.Errorf("create prompt: %w", err)
	}
	final := ""
	err = c.FollowPrompt(cctx, p.ID, func(e api.PromptEvent) error {
		switch e.Type {
		case api.PromptEventOutput:
			if first == 0 {
				first = time.Since(start)
			}
		case api.PromptEventCompleted, api.PromptEventFailed:
			done, final = time.Since(start), e.Type
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("follow prompt %s: %w", p.ID, err)
	}
	if final != api.PromptEventCompleted || first == 0 {
		return 0, 0, fmt.Errorf("prompt %s ended %q (output seen: %v)", p.ID, final, first != 0)
	}
	return first, done, nil
}

func waitSession(ctx context.Context, c *client.Client, id string, within time.Duration, cond func(api.AuthSession) bool) (api.AuthSession, error) {
	deadline := time.Now().Add(within)
	for {
		var s api.AuthSession
		if err := c.Do(ctx, http.MethodGet, "/api/v1/auth/sessions/"+id, nil, &s); err == nil && cond(s) {
			return s, nil
		}
		if s.State == api.AuthFailed || s.State == api.AuthTimeout || s.State == api.AuthCancelled {
			return s, fmt.Errorf("login session ended %s: %s", s.State, s.Error)
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("login session %s: still %s after %s", id, s.State, within)
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// devOAuth plays the user's browser against hangar's dev OAuth provider:
// sign in as the demo user, allow, and return the code#state to paste.
func devOAuth(base, authorizeURL string) (string, error) {
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 30 * time.Second}
	page := func(resp *http.Response, err error) (string, error) {
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("%s: status %d", resp.Request.URL.Path, resp.StatusCode)
		}
		return string(body), nil
	}
	login, err := page(hc.Get(authorizeURL))
	if err != nil {
		return "", err
	}
	m := hiddenRequestRE.FindStringSubmatch(login)
	if m == nil {
		return "", fmt.Errorf("no sign-in form on the dev provider's page")
	}
	consent, err := page(hc.PostForm(base+"/dev-oauth/login", url.Values{"request": {m[1]}, "username": {"demo"}, "password": {"hangar-demo"}}))
	if err != nil {
		return "", err
	}
	if m = hiddenRequestRE.FindStringSubmatch(consent); m == nil {
		return "", fmt.Errorf("no consent form after signing in")
	}
	resp, err := hc.PostForm(base+"/dev-oauth/consent", url.Values{"request": {m[1]}, "decision": {"allow"}})
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Query().Get("code") == "" {
		return "", fmt.Errorf("consent answered %d without a code", resp.StatusCode)
	}
	return loc.Query().Get("code") + "#" + loc.Query().Get("state"), nil
}

// compare pairs hangar's measures with their baselines. The goals are the
// ones issue 13 states; a miss is shown as a miss.
func (b *suite) compare() {
	r := b.res
	for _, k := range []string{"base", "browser"} {
		r.Compare(k+": cold boot to ready, hangar vs systemd + stock kernel", "boot/"+k+"/hangar/total", "boot/"+k+"/systemd/ready", 0.2, "≤ 1/5")
		r.Compare(k+": host memory per idle VM, hangar vs systemd", "memory/"+k+"/hangar/pss", "memory/"+k+"/systemd/pss", 0, "")
	}
	for _, k := range []string{"base", "cli", "browser"} {
		r.Compare(k+": disk per create, overlay vs full copy", "create/"+k+"/hangar/bytes", "create/"+k+"/copy/bytes", 0.01, "≤ 1/100")
	}
	r.AddLimit("GET /api/v1/vms at 1,000/s on SQLite: p99 latency", "api/vms/latency", "p99", 2)
	r.AddLimit("GET /api/v1/vms at 1,000/s on SQLite: errors", "api/vms/errors", "max", 0)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// api runs the fixed-rate API load for GET /api/v1/vms and /api/v1/me.
func (b *suite) api(ctx context.Context) error {
	s := newSamples()
	defer s.record(b.res)
	for _, e := range []struct{ name, path string }{{"vms", "/api/v1/vms"}, {"me", "/api/v1/me"}} {
		if err := b.apiLoad(ctx, s, e.name, e.path, b.p.apiRate, b.p.apiFor); err != nil {
			return err
		}
	}
	return nil
}

// apiLoad offers authenticated GETs of path at a fixed rate for dur (an
// open loop: request i is due at start + i/rate, and its latency counts
// from when it was due, so a server that stalls is charged for the
// requests queued behind the stall instead of the generator slowing
// down). At most 256 requests are in flight; errors and non-200 answers
// are counted. The load generator runs in the daemon's process and shares
// its cores, as it would on a 2-core host.
func (b *suite) apiLoad(ctx context.Context, s *samples, name, path string, rate int, dur time.Duration) error {
	n := int(float64(rate) * dur.Seconds())
	say("[api %s] GET %s at %d requests/s for %s (%d requests, admin API key)", name, path, rate, dur, n)
	lat := make([]float64, n)
	var errs atomic.Int64
	sem := make(chan struct{}, 256)
	tr := &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	key := b.h.adminKey
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		}
		wg.Add(1)
		go func(i int, due time.Time) {
			defer wg.Done()
			defer func() { <-sem }()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.h.url+path, nil)
			if err == nil {
				req.Header.Set("Authorization", "Bearer "+key)
				var resp *http.Response
				if resp, err = hc.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
			}
			if err != nil {
				errs.Add(1)
			}
			lat[i] = math.Round(float64(time.Since(due).Microseconds())) / 1000
		}(i, due)
	}
	wg.Wait()
	el := time.Since(start)
	achieved := float64(n) / el.Seconds()
	id := "api/" + name + "/"
	s.add(id+"latency", fmt.Sprintf("API GET %s at %d/s offered (SQLite): latency from due time", path, rate), "ms", lat...)
	s.add(id+"rps", fmt.Sprintf("API GET %s at %d/s offered (SQLite): achieved", path, rate), "req/s", math.Round(achieved))
	s.add(id+"errors", fmt.Sprintf("API GET %s at %d/s offered (SQLite): errors", path, rate), "count", float64(errs.Load()))
	sum := bench.Summarize(lat)
	say("[api %s] achieved %.0f/s, p50 %.2f ms, p99 %.2f ms, max %.1f ms, %d errors", name, achieved, sum.P50, sum.P99, sum.Max, errs.Load())
	return nil
}
