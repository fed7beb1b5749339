package bench

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Markdown renders the run as a table: every measure with N and its
// distribution, then every comparison with its ratio and goal.
func Markdown(r *Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "hangar bench %s on %s (%d CPUs, %d MiB), %s acceleration%s, hangar %s\n\n",
		r.StartedAt.UTC().Format("2006-01-02 15:04 UTC"), r.Host.Name, r.Host.CPUs, r.Host.MemMiB,
		strings.ToUpper(r.Host.Accel), map[bool]string{true: ", QUICK set", false: ""}[r.Quick], r.Host.Version)
	b.WriteString("| measure | unit | N | p50 | p90 | p99 | max |\n|---|---|---:|---:|---:|---:|---:|\n")
	for _, m := range r.Measures {
		s := m.Summary
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s | %s |\n", m.Label, m.Unit, s.N, num(s.P50), num(s.P90), num(s.P99), num(s.Max))
	}
	if len(r.Comparisons) > 0 {
		b.WriteString("\n| hangar vs baseline (same run) | hangar p50 | baseline p50 | ratio | goal | met |\n|---|---:|---:|---:|---|---|\n")
		for _, c := range r.Comparisons {
			h, _ := r.Measure(c.Hangar)
			bl, _ := r.Measure(c.Baseline)
			met := "—"
			if c.Met != nil {
				met = map[bool]string{true: "yes", false: "**NO**"}[*c.Met]
			}
			fmt.Fprintf(&b, "| %s | %s %s | %s %s | %s | %s | %s |\n", c.Label,
				num(h.Summary.P50), h.Unit, num(bl.Summary.P50), bl.Unit, ratio(c.Ratio), orDash(c.Goal), met)
		}
	}
	if len(r.Limits) > 0 {
		b.WriteString("\n| goal (absolute) | value | limit | met |\n|---|---:|---:|---|\n")
		for _, l := range r.Limits {
			m, _ := r.Measure(l.Measure)
			met := map[bool]string{true: "yes", false: "**NO**"}[l.Met]
			fmt.Fprintf(&b, "| %s | %s %s %s | ≤ %s %s | %s |\n", l.Label, l.Stat, num(l.Value), m.Unit, num(l.Max), m.Unit, met)
		}
	}
	if len(r.NotMeasured) > 0 {
		b.WriteString("\nNot measured in this run:\n\n")
		for _, n := range r.NotMeasured {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func ratio(v float64) string {
	if v < 0.01 {
		return fmt.Sprintf("1/%.0f", 1/v)
	}
	return fmt.Sprintf("%.3f", v)
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// Bar is one bar of a chart: the p50 of a measure.
type Bar struct {
	Group string // the x category, e.g. "base"
	ID    string // Measure.ID, or "" when not measured
}

// Series is a named set of bars, one per group, drawn in one color.
type Series struct {
	Name string
	Bars []Bar
}

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
}

// GroupedBars draws the p50s of series side by side per group as a PNG.
// A bar whose measure is missing is drawn as zero height and the title
// says so, never as an invented value.
func GroupedBars(r *Result, path, title, ylabel string, groups []string, series []Series) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	w := vg.Points(14)
	var missing []string
	for i, s := range series {
		var gone []string
		vals := make(plotter.Values, len(groups))
		for gi, g := range groups {
			for _, bar := range s.Bars {
				if bar.Group != g {
					continue
				}
				if m, ok := r.Measure(bar.ID); ok && bar.ID != "" {
					vals[gi] = m.Summary.P50
				} else {
					gone = append(gone, g)
				}
			}
		}
		if len(gone) > 0 {
			missing = append(missing, s.Name+" for "+strings.Join(gone, ", "))
		}
		bc, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bc.Color = palette[i%len(palette)]
		bc.LineStyle.Width = 0
		bc.Offset = w * vg.Length(float64(i)-float64(len(series)-1)/2)
		p.Add(bc)
		p.Legend.Add(s.Name, bc)
	}
	finish(p, groups)
	if len(missing) > 0 {
		p.Title.Text += "\n(not measured: " + strings.Join(missing, ", ") + ")"
	}
	p.Title.Text += fmt.Sprintf("\n%s, %s, p50", r.Host.Name, strings.ToUpper(r.Host.Accel))
	return p.Save(vg.Points(float64(max(320, 120*len(groups)+60))), vg.Points(300), path)
}

// StackedBars draws, per group, the p50s of consecutive phases stacked.
// Stacked p50s are not the p50 of the total; the chart is for the shape of
// a boot, the table has the distributions.
func StackedBars(r *Result, path, title, ylabel string, groups []string, phases []Series) error {
	p := plot.New()
	p.Title.Text = title + fmt.Sprintf("\n%s, %s, p50 of each phase", r.Host.Name, strings.ToUpper(r.Host.Accel))
	p.Y.Label.Text = ylabel
	var below *plotter.BarChart
	for i, s := range phases {
		vals := make(plotter.Values, len(groups))
		for gi, g := range groups {
			for _, bar := range s.Bars {
				if m, ok := r.Measure(bar.ID); ok && bar.Group == g {
					vals[gi] = m.Summary.P50
				}
			}
		}
		bc, err := plotter.NewBarChart(vals, vg.Points(28))
		if err != nil {
			return err
		}
		bc.Color = palette[i%len(palette)]
		bc.LineStyle.Width = 0
		if below != nil {
			bc.StackOn(below)
		}
		below = bc
		p.Add(bc)
		p.Legend.Add(s.Name, bc)
	}
	finish(p, groups)
	return p.Save(vg.Points(float64(max(320, 110*len(groups)+60))), vg.Points(300), path)
}

// finish lays out a bar chart: category labels, room beside the outer
// bars and above the tallest for the legend, which goes top left.
func finish(p *plot.Plot, groups []string) {
	p.NominalX(groups...)
	p.X.Min, p.X.Max = -0.7, float64(len(groups)-1)+0.7
	p.Y.Min = 0
	p.Y.Max = niceCeil(p.Y.Max * 1.25)
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Points(8)
}

// niceCeil rounds v up to a round multiple of a power of ten, so the
// axis' ticks land on round numbers.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	mag := math.Pow(10, math.Floor(math.Log10(v)))
	for _, f := range []float64{1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if v <= f*mag {
			return f * mag
		}
	}
	return 10 * mag
}

// ChartPath names a chart beside the result's JSON.
func ChartPath(jsonPath, name string) string {
	return strings.TrimSuffix(jsonPath, filepath.Ext(jsonPath)) + "-" + name + ".png"
}
