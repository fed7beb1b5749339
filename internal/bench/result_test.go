package bench

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sampleResult(accel string) *Result {
	r := &Result{Schema: Schema, StartedAt: time.Now().UTC(), Host: Host{Name: "h", Accel: accel}}
	r.Add("boot/base/hangar/total", "hangar", "ms", []float64{300, 100, 200})
	r.Add("boot/base/systemd/ready", "systemd", "ms", []float64{2000, 1000})
	r.FinishedAt = r.StartedAt.Add(time.Minute)
	return r
}

func TestSummarizeNearestRank(t *testing.T) {
	got := Summarize([]float64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6})
	if got != (Summary{N: 10, P50: 5, P90: 9, P99: 10, Max: 10}) {
		t.Fatalf("summary %+v", got)
	}
	if got := Summarize([]float64{7}); got != (Summary{N: 1, P50: 7, P90: 7, P99: 7, Max: 7}) {
		t.Fatalf("one sample: %+v", got)
	}
	if got := Summarize(nil); got.N != 0 {
		t.Fatalf("no samples: %+v", got)
	}
}

func TestResultSchemaRoundTrip(t *testing.T) {
	r := sampleResult("tcg")
	r.Compare("boot", "boot/base/hangar/total", "boot/base/systemd/ready", 0.2, "≤ 1/5")
	if len(r.Comparisons) != 1 || r.Comparisons[0].Met == nil || !*r.Comparisons[0].Met || r.Comparisons[0].Ratio != 0.2 {
		t.Fatalf("comparison %+v", r.Comparisons)
	}
	r.Compare("missing side", "boot/base/hangar/total", "boot/browser/systemd/ready", 0.2, "")
	if len(r.Comparisons) != 1 {
		t.Fatal("a comparison with an unmeasured side was recorded")
	}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := WriteJSON(path, r); err != nil {
		t.Fatal(err)
	}
	back, err := ReadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Measures) != 2 || back.Measures[0].Summary.P50 != 200 || back.Host.Accel != "tcg" {
		t.Fatalf("read back %+v", back)
	}
	back.AddLimit("p99 latency", "boot/base/hangar/total", "p99", 250)
	if md := Markdown(back); !strings.Contains(md, "TCG") || !strings.Contains(md, "| boot | 200 ms | 1000 ms | 0.200 | ≤ 1/5 | yes |") ||
		!strings.Contains(md, "| p99 latency | p99 300 ms | ≤ 250 ms | **NO** |") {
		t.Fatalf("markdown:\n%s", md)
	}
}

func TestValidateRejects(t *testing.T) {
	for name, mutate := range map[string]func(*Result){
		"schema":          func(r *Result) { r.Schema = 99 },
		"no accel":        func(r *Result) { r.Host.Accel = "" },
		"summary drift":   func(r *Result) { r.Measures[0].Summary.P50 = 1 },
		"duplicate":       func(r *Result) { r.Measures = append(r.Measures, r.Measures[0]) },
		"dangling":        func(r *Result) { r.Comparisons = []Comparison{{Hangar: "nope", Baseline: "boot/base/systemd/ready"}} },
		"finish < start":  func(r *Result) { r.FinishedAt = r.StartedAt.Add(-time.Second) },
		"measure no unit": func(r *Result) { r.Measures[1].Unit = "" },
		"dangling limit":  func(r *Result) { r.Limits = []Limit{{Measure: "nope"}} },
	} {
		r := sampleResult("kvm")
		mutate(r)
		if err := r.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestComparableRefusesDifferentAccel(t *testing.T) {
	if err := Comparable(sampleResult("tcg"), sampleResult("tcg")); err != nil {
		t.Fatal(err)
	}
	err := Comparable(sampleResult("tcg"), sampleResult("kvm"))
	if err == nil || !strings.Contains(err.Error(), "not comparable") {
		t.Fatalf("tcg vs kvm: %v", err)
	}
}

func TestCompareRuns(t *testing.T) {
	then, now := sampleResult("tcg"), sampleResult("tcg")
	now.Add("boot/base/hangar/total", "hangar", "ms", []float64{100})
	md, err := CompareRuns(then, now)
	if err != nil || !strings.Contains(md, "| hangar | ms | 200 (3) | 100 (1) | 0.50 |") {
		t.Fatalf("%v\n%s", err, md)
	}
	if _, err := CompareRuns(then, sampleResult("kvm")); err == nil {
		t.Fatal("compared a TCG run with a KVM run")
	}
}
