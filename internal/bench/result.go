// Package bench holds what `make bench` measures and how it reports it:
// the result schema (one JSON file per run), summaries, comparisons with
// baselines measured in the same run, the Markdown table and the charts,
// and the pieces that boot the systemd baseline and read host memory.
//
// Absolute times on a shared, emulated host are noise; a ratio against a
// baseline measured minutes apart on the same machine is not. So every
// figure this package reports is a distribution (p50/p90/max over N) and,
// where a baseline exists, the ratio to it.
package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"time"
)

// Schema is the version of the result file format.
const Schema = 1

// Result is one run of the suite: where it ran, what it measured.
type Result struct {
	Schema     int       `json:"schema"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	Quick      bool      `json:"quick"`
	Host       Host      `json:"host"`
	// Measures are the raw samples, each summarized.
	Measures []Measure `json:"measures"`
	// Comparisons pair a hangar measure with its baseline measure.
	Comparisons []Comparison `json:"comparisons"`
	// Limits are goals stated as absolute bounds on a measure of this run
	// (latency under load), where no baseline applies.
	Limits []Limit `json:"limits,omitempty"`
	// NotMeasured names what the suite knows about but did not measure in
	// this run, and why (a missing feature, a skipped stage, a failure).
	NotMeasured []string `json:"not_measured,omitempty"`
}

// Host describes the machine and the acceleration of a run. Runs with
// different accelerations are not comparable (see Comparable).
type Host struct {
	Name        string `json:"name"`
	CPUs        int    `json:"cpus"`
	MemMiB      int64  `json:"mem_mib"`
	Kernel      string `json:"kernel"`
	Hypervisor  string `json:"hypervisor"`
	Accel       string `json:"accel"`
	AccelReason string `json:"accel_reason,omitempty"`
	Version     string `json:"version"`
	GoVersion   string `json:"go_version"`
}

// Measure is one distribution: N samples of one quantity.
type Measure struct {
	// ID is stable across runs, e.g. "boot/base/hangar/total".
	ID      string    `json:"id"`
	Label   string    `json:"label"`
	Unit    string    `json:"unit"` // "ms", "MiB", "KiB"
	Samples []float64 `json:"samples"`
	Summary Summary   `json:"summary"`
}

// Summary is the distribution of a measure's samples.
type Summary struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Comparison is hangar against a baseline measured in the same run.
// Ratio is hangar's p50 over the baseline's p50; a goal is met when the
// ratio is at most GoalRatio.
type Comparison struct {
	Label     string  `json:"label"`
	Hangar    string  `json:"hangar"`   // Measure.ID
	Baseline  string  `json:"baseline"` // Measure.ID
	Ratio     float64 `json:"ratio"`
	GoalRatio float64 `json:"goal_ratio,omitempty"`
	Goal      string  `json:"goal,omitempty"`
	Met       *bool   `json:"met,omitempty"`
}

// Limit is a goal on one statistic of one measure: Stat ("p50", "p99",
// "max") must be at most Max.
type Limit struct {
	Label   string  `json:"label"`
	Measure string  `json:"measure"`
	Stat    string  `json:"stat"`
	Max     float64 `json:"max"`
	Value   float64 `json:"value"`
	Met     bool    `json:"met"`
}

// AddLimit records whether a measure's statistic stays within max.
func (r *Result) AddLimit(label, id, stat string, limit float64) {
	m, ok := r.Measure(id)
	if !ok || m.Summary.N == 0 {
		return
	}
	v := map[string]float64{"p50": m.Summary.P50, "p90": m.Summary.P90, "p99": m.Summary.P99, "max": m.Summary.Max}[stat]
	r.Limits = append(r.Limits, Limit{Label: label, Measure: id, Stat: stat, Max: limit, Value: v, Met: v <= limit})
}

// Summarize computes p50, p90 and max by nearest rank (no interpolation:
// with the small N of a benchmark every reported figure is a real sample).
func Summarize(samples []float64) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	s := append([]float64(nil), samples...)
	sort.Float64s(s)
	rank := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return Summary{N: len(s), P50: rank(0.5), P90: rank(0.9), P99: rank(0.99), Max: s[len(s)-1]}
}

// Add records a measure (summarizing it) and returns it.
func (r *Result) Add(id, label, unit string, samples []float64) Measure {
	m := Measure{ID: id, Label: label, Unit: unit, Samples: samples, Summary: Summarize(samples)}
	for i := range r.Measures {
		if r.Measures[i].ID == id {
			r.Measures[i] = m
			return m
		}
	}
	r.Measures = append(r.Measures, m)
	return m
}

// Measure finds a measure by id.
func (r *Result) Measure(id string) (Measure, bool) {
	for _, m := range r.Measures {
		if m.ID == id {
			return m, true
		}
	}
	return Measure{}, false
}

// Compare adds a comparison of two recorded measures. goalRatio 0 means
// no goal. It does nothing when either side was not measured (the run's
// NotMeasured says why).
func (r *Result) Compare(label, hangar, baseline string, goalRatio float64, goal string) {
	h, ok1 := r.Measure(hangar)
	b, ok2 := r.Measure(baseline)
	if !ok1 || !ok2 || h.Summary.N == 0 || b.Summary.N == 0 || b.Summary.P50 == 0 {
		return
	}
	c := Comparison{Label: label, Hangar: hangar, Baseline: baseline, Ratio: h.Summary.P50 / b.Summary.P50, GoalRatio: goalRatio, Goal: goal}
	if goalRatio > 0 {
		met := c.Ratio <= goalRatio
		c.Met = &met
	}
	r.Comparisons = append(r.Comparisons, c)
}

// Validate checks a result against the schema: version, host fields, every
// measure summarized from its own samples, every comparison pointing at
// measures that exist.
func (r *Result) Validate() error {
	if r.Schema != Schema {
		return fmt.Errorf("result schema %d, want %d", r.Schema, Schema)
	}
	if r.Host.Name == "" || r.Host.Accel == "" {
		return fmt.Errorf("result has no host name or acceleration")
	}
	if r.StartedAt.IsZero() || r.FinishedAt.Before(r.StartedAt) {
		return fmt.Errorf("result has no valid start and finish times")
	}
	seen := map[string]bool{}
	for _, m := range r.Measures {
		if m.ID == "" || m.Unit == "" {
			return fmt.Errorf("measure %q has no id or unit", m.Label)
		}
		if seen[m.ID] {
			return fmt.Errorf("measure %s recorded twice", m.ID)
		}
		seen[m.ID] = true
		if Summarize(m.Samples) != m.Summary {
			return fmt.Errorf("measure %s: summary does not match its samples", m.ID)
		}
	}
	for _, c := range r.Comparisons {
		if !seen[c.Hangar] || !seen[c.Baseline] {
			return fmt.Errorf("comparison %q refers to a measure not in the result", c.Label)
		}
	}
	for _, l := range r.Limits {
		if !seen[l.Measure] {
			return fmt.Errorf("limit %q refers to a measure not in the result", l.Label)
		}
	}
	return nil
}

// Comparable refuses to put two runs side by side when they ran under
// different accelerations (TCG emulation is an order of magnitude slower
// than KVM: a difference would say nothing about hangar).
func Comparable(a, b *Result) error {
	if a.Host.Accel != b.Host.Accel {
		return fmt.Errorf("runs are not comparable: %s ran under %s, %s under %s",
			a.StartedAt.Format(time.RFC3339), a.Host.Accel, b.StartedAt.Format(time.RFC3339), b.Host.Accel)
	}
	return nil
}

// WriteJSON writes r to path after validating it.
func WriteJSON(path string, r *Result) error {
	if err := r.Validate(); err != nil {
		return err
	}
	// Compact: a run holds thousands of latency samples, and one per line
	// would make a result file several times larger for no reader's gain
	// (the Markdown beside it is the readable form).
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// ReadJSON reads and validates a result file.
func ReadJSON(path string) (*Result, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Result
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// CompareRuns renders, for each measure both runs have, this run's p50
// against the earlier run's: how a change moved it. Runs under different
// accelerations are refused (Comparable).
func CompareRuns(earlier, now *Result) (string, error) {
	if err := Comparable(earlier, now); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| measure (vs %s on %s) | unit | then p50 (N) | now p50 (N) | now/then |\n|---|---|---:|---:|---:|\n",
		earlier.StartedAt.Format("2006-01-02 15:04"), earlier.Host.Name)
	for _, m := range now.Measures {
		old, ok := earlier.Measure(m.ID)
		if !ok || old.Summary.P50 == 0 || old.Unit != m.Unit {
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s (%d) | %s (%d) | %.2f |\n", m.Label, m.Unit,
			num(old.Summary.P50), old.Summary.N, num(m.Summary.P50), m.Summary.N, m.Summary.P50/old.Summary.P50)
	}
	return b.String(), nil
}
