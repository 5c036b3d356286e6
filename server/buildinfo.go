package server

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// registerBuildInfo registers timerd_build_info, a gauge of 1 whose
// labels say what the node was built from (Config.Version and
// Config.Revision) and with which Go, so that a dashboard can tell the
// nodes of a rolling upgrade apart.
func registerBuildInfo(reg *prometheus.Registry, version, commit string) {
	if version == "" {
		version = "devel"
	}
	if commit == "" {
		commit = "unknown"
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "timerd",
		Name:      "build_info",
		Help:      "What the node was built from: its version, its commit and the Go version; always 1.",
		ConstLabels: prometheus.Labels{
			"version":   version,
			"commit":    commit,
			"goversion": runtime.Version(),
		},
	}, func() float64 { return 1 }))
}
