package vm

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hangar-vm/hangar/pkg/api"
)

type metrics struct {
	phases     *prometheus.HistogramVec
	linkErrors prometheus.Counter
	failures   prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hangar_vm_boot_phase_seconds",
			Help:    "Duration of each VM boot phase (spawn, kernel, agent, services, total).",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120},
		}, []string{"phase"}),
		linkErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hangar_agent_link_errors_total",
			Help: "Agent link failures (dial, handshake, event stream).",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hangar_vm_failures_total",
			Help: "VMs marked failed.",
		}),
	}
}

func (mt *metrics) observe(p *api.BootPhases) {
	for name, ms := range map[string]int64{"spawn": p.SpawnMS, "kernel": p.KernelMS, "agent": p.AgentUpMS, "services": p.ServicesReadyMS, "total": p.TotalMS} {
		mt.phases.WithLabelValues(name).Observe((time.Duration(ms) * time.Millisecond).Seconds())
	}
}

// stateCollector reports VMs by state and kind from the store at scrape.
type stateCollector struct {
	m    *Manager
	desc *prometheus.Desc
}

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	vs, err := c.m.store.ListVMs(ctx, "")
	if err != nil {
		return
	}
	counts := map[[2]string]int{}
	for _, v := range vs {
		counts[[2]string{v.State, v.Kind}]++
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
}

// Register adds the manager's metrics to reg.
func (m *Manager) Register(reg prometheus.Registerer) {
	reg.MustRegister(m.metrics.phases, m.metrics.linkErrors, m.metrics.failures, stateCollector{m: m,
		desc: prometheus.NewDesc("hangar_vms", "VMs by state and kind.", []string{"state", "kind"}, nil)})
	m.hib.register(reg)
	m.registerPool(reg)
}
