package shard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestFiringBoundsLogged: at debug level a shard logs when it may start
// dispatching under its epoch ("shard firing") and when its
// firing loop has stopped ("shard stopped firing"), each with the lease's
// validity as the shard last knew it. The fault tests rebuild from these
// lines which process may dispatch a shard when, to check that no two
// epochs of a shard overlap.
func TestFiringBoundsLogged(t *testing.T) {
	tests := []struct {
		name string
		stop func(t *testing.T, e *env, s *Shard)
		err  string // in the stop line's err
	}{
		{"closed", func(t *testing.T, e *env, s *Shard) {
			if err := s.Close(ctx); err != nil {
				t.Fatal(err)
			}
		}, "closed"},
		{"crashed", func(t *testing.T, e *env, s *Shard) { s.Abandon() }, "crashed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEmbeddedEnv(t)
			// Read once the shard has stopped: its goroutines, which
			// log, have ended by then (and JSONHandler serializes writes).
			var out bytes.Buffer
			cfg := e.config(3, "a", newSink(true))
			cfg.Logger = slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
			start := e.clock.Now()
			s := e.openConfig(t, cfg)
			drift := cfg.ClockDrift
			if drift == 0 {
				drift = ClockDriftFor(cfg.LeaseTTL)
			}
			wantValid := start.Add(cfg.LeaseTTL - drift)
			tt.stop(t, e, s)

			lines := logLines(t, out.String())
			acq, stopped := lines["shard firing"], lines["shard stopped firing"]
			if len(acq) != 1 || len(stopped) != 1 {
				t.Fatalf("got %d acquire and %d stop lines, want one each; log:\n%s", len(acq), len(stopped), out.String())
			}
			for _, l := range []map[string]any{acq[0], stopped[0]} {
				if l["shard"] != float64(3) || l["epoch"] != float64(s.Epoch()) {
					t.Errorf("%q: shard %v epoch %v, want 3 and %d", l["msg"], l["shard"], l["epoch"], s.Epoch())
				}
				got, err := time.Parse(time.RFC3339Nano, l["valid_until"].(string))
				if err != nil || !got.Equal(wantValid) {
					t.Errorf("%q: valid_until %v (%v), want %v", l["msg"], l["valid_until"], err, wantValid)
				}
			}
			if acq[0]["owner"] != "a" {
				t.Errorf("acquire line's owner = %v, want a", acq[0]["owner"])
			}
			if e, _ := stopped[0]["err"].(string); !strings.Contains(e, tt.err) {
				t.Errorf("stop line's err = %q, want it to say %q", e, tt.err)
			}
		})
	}
}

// logLines parses a JSON log by message.
func logLines(t *testing.T, log string) map[string][]map[string]any {
	t.Helper()
	out := make(map[string][]map[string]any)
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		var l map[string]any
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		msg, _ := l["msg"].(string)
		out[msg] = append(out[msg], l)
	}
	return out
}
