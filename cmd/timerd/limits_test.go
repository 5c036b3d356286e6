package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/server"
)

func TestParseLimits(t *testing.T) {
	def := server.DefaultConfig()
	for _, tc := range []struct {
		name string
		env  [2]string
		args []string
		want func(c server.Config) bool
	}{
		{"defaults", [2]string{}, nil, func(c server.Config) bool {
			return c.Limits == def.Limits && c.MaxConcurrentStreams == def.MaxConcurrentStreams
		}},
		{"namespace limits", [2]string{}, []string{"--ns-max-pending", "1000", "--ns-schedule-rate", "50.5", "--ns-schedule-burst", "200"}, func(c server.Config) bool {
			return c.Limits.MaxPending == 1000 && c.Limits.ScheduleRate == 50.5 && c.Limits.ScheduleBurst == 200
		}},
		{"delivery rate", [2]string{"TIMERD_NS_DELIVER_BURST", "300"}, []string{"--ns-deliver-rate", "25000"}, func(c server.Config) bool {
			return c.Limits.DeliverRate == 25000 && c.Limits.DeliverBurst == 300
		}},
		{"limits file", [2]string{"TIMERD_NS_LIMITS_FILE", "limits.json"}, nil, func(c server.Config) bool {
			return c.NamespaceLimitsFile == "limits.json"
		}},
		{"streams", [2]string{"TIMERD_MAX_SUBSCRIBE_STREAMS", "7"}, []string{"--max-concurrent-streams", "9"}, func(c server.Config) bool {
			return c.Limits.MaxSubscribeStreams == 7 && c.MaxConcurrentStreams == 9
		}},
		{"bad calls", [2]string{"TIMERD_BAD_CALL_BURST", "20"}, []string{"--bad-call-rate", "5", "--bad-call-delay", "250ms"}, func(c server.Config) bool {
			return c.BadCallRate == 5 && c.BadCallBurst == 20 && c.BadCallDelay == 250*time.Millisecond
		}},
		{"bad calls default", [2]string{}, nil, func(c server.Config) bool {
			return c.BadCallRate == def.BadCallRate && c.BadCallBurst == def.BadCallBurst && c.BadCallDelay == def.BadCallDelay
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env[0] != "" {
				t.Setenv(tc.env[0], tc.env[1])
			}
			cfg, _, _, err := parse(tc.args, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(cfg) {
				t.Fatalf("Limits %+v, MaxConcurrentStreams %d", cfg.Limits, cfg.MaxConcurrentStreams)
			}
		})
	}
}

func TestRunRejectsBadLimits(t *testing.T) {
	badFile := filepath.Join(t.TempDir(), "limits.json")
	if err := os.WriteFile(badFile, []byte(`{"namespaces": {"orders": {"max_pending": -5}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--ns-max-pending", "-1"}, "Limits.MaxPending"},
		{[]string{"--ns-schedule-rate", "-5"}, "Limits.ScheduleRate"},
		{[]string{"--ns-schedule-burst", "5"}, "Limits.ScheduleBurst needs"},
		{[]string{"--ns-deliver-rate", "-5"}, "Limits.DeliverRate"},
		{[]string{"--ns-deliver-burst", "5"}, "Limits.DeliverBurst needs"},
		{[]string{"--max-subscribe-streams", "0"}, "Limits.MaxSubscribeStreams"},
		{[]string{"--ns-limits-file", badFile, "--data-dir", t.TempDir()}, `namespaces["orders"].max_pending must be >= 0`},
		{[]string{"--max-concurrent-streams", "0"}, "MaxConcurrentStreams"},
		{[]string{"--bad-call-rate", "-1"}, "BadCallRate"},
		{[]string{"--bad-call-burst", "0"}, "BadCallBurst"},
		{[]string{"--bad-call-delay", "0s"}, "BadCallDelay"},
		{[]string{"--max-concurrent-streams", "5000000000"}, "--max-concurrent-streams 5000000000 is too large"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, out bytes.Buffer
			if code := run(tc.args, &stdout, &out); code != 2 || !strings.Contains(out.String(), tc.want) {
				t.Fatalf("exit %d, output %q; want 2 and %q", code, out.String(), tc.want)
			}
		})
	}
}
