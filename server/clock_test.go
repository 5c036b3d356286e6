package server

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/redistest"
)

// TestClockSkewMetric starts nodes whose wall clock reads 5 minutes
// ahead of the machine's (Config.Wall) and reads their clock gauges: on
// Redis the node fires by Redis's time and reports the wall's skew; on
// the embedded store it has no other clock and fires by the wall.
func TestClockSkewMetric(t *testing.T) {
	const ahead = 5 * time.Minute
	rs := redistest.Start(t)
	for _, tc := range []struct {
		name                string
		redis               bool
		wantSkew, wantStore time.Duration
	}{
		{"redis", true, ahead, 0},
		{"embedded", false, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, "", func(c *Config) {
				if tc.redis {
					c.RedisURL = "redis://" + rs.Addr()
				}
				c.Wall = func() time.Time { return time.Now().Add(ahead).Round(0) }
			})
			page := e.metricsText()
			for name, want := range map[string]time.Duration{
				"timerd_clock_skew_seconds":       tc.wantSkew,
				"timerd_clock_store_skew_seconds": tc.wantStore,
			} {
				got, ok := gaugeOn(page, name)
				if !ok {
					t.Fatalf("/metrics lacks %s", name)
				}
				if (got - want).Abs() > time.Second {
					t.Errorf("%s = %v, want %v", name, got, want)
				}
			}
		})
	}
}

// gaugeOn reads the unlabelled gauge name from a /metrics page.
func gaugeOn(page, name string) (time.Duration, bool) {
	for line := range strings.Lines(page) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return time.Duration(f * float64(time.Second)), err == nil
		}
	}
	return 0, false
}
