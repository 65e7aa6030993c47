package train

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics serves the run's figures for Prometheus on the address the config
// names (logging.metrics_addr).
type metrics struct {
	addr   string
	srv    *http.Server
	gauges map[string]prometheus.Gauge
}

// serveMetrics starts the metrics endpoint; a failure of the server after
// it started is reported through logf (the run goes on without metrics).
func serveMetrics(addr string, logf func(string, ...any)) (*metrics, error) {
	reg := prometheus.NewRegistry()
	m := &metrics{gauges: map[string]prometheus.Gauge{}}
	for name, help := range map[string]string{
		"step":                   "optimizer steps done",
		"loss":                   "training loss of the last step",
		"learning_rate":          "learning rate of the last step",
		"grad_norm":              "global gradient norm before clipping of the last step",
		"loss_scale":             "loss scale of the last step",
		"skipped_steps":          "steps skipped for non-finite gradients",
		"samples_per_second":     "training throughput of the last step",
		"seconds_per_step":       "wall time of the last step",
		"memory_allocated_bytes": "backend memory held by live buffers",
		"memory_peak_bytes":      "backend memory peak",
		"validation_loss":        "held-out loss at fixed timesteps, last measured",
	} {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "newbie_train", Name: name, Help: help})
		reg.MustRegister(g)
		m.gauges[name] = g
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("logging.metrics_addr %s: %w", addr, err)
	}
	m.addr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logf("warning: metrics server on %s stopped: %v", m.addr, err)
		}
	}()
	return m, nil
}

// observe publishes one step's record; a nil receiver does nothing.
func (m *metrics) observe(r logRecord) {
	if m == nil {
		return
	}
	set := func(name string, v float64) { m.gauges[name].Set(v) }
	set("step", float64(r.Step))
	set("loss", float64(r.Loss))
	set("learning_rate", float64(r.LR))
	set("grad_norm", float64(r.GradNorm))
	set("loss_scale", float64(r.LossScale))
	set("skipped_steps", float64(r.Skipped))
	set("samples_per_second", float64(r.SamplesPerSecond))
	set("seconds_per_step", float64(r.SecondsPerStep))
	set("memory_allocated_bytes", float64(r.MemAllocated))
	set("memory_peak_bytes", float64(r.MemPeak))
	if r.ValLoss != nil {
		set("validation_loss", float64(*r.ValLoss))
	}
}

func (m *metrics) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	m.srv.Shutdown(ctx)
}

// BytesText formats a byte count in GiB, MiB or KiB, as the trainer's
// progress lines print memory.
func BytesText(n int64) string { return bytesText(n) }
