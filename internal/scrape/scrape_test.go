package scrape

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// TestSum: a real registry served by promhttp, summed over labels; a
// metric whose name is a prefix of another's is not mixed with it.
func TestSum(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total"}, []string{"k"})
	longer := prometheus.NewCounter(prometheus.CounterOpts{Name: "x_total_more"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "y"})
	reg.MustRegister(c, longer, g)
	c.WithLabelValues("a").Add(2)
	c.WithLabelValues("b").Add(3)
	longer.Add(100)
	g.Set(1.5)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	tests := []struct {
		name string
		want float64
	}{
		{"x_total", 5},
		{"x_total_more", 100},
		{"y", 1.5},
		{"absent", 0},
	}
	for _, tt := range tests {
		got, err := Sum(context.Background(), addr, tt.name)
		if err != nil || got != tt.want {
			t.Errorf("Sum(%q) = %v, %v; want %v", tt.name, got, err, tt.want)
		}
	}
	if _, err := Sum(context.Background(), "127.0.0.1:1", "y"); err == nil {
		t.Error("Sum of an address nobody serves: no error")
	}
}
