package bench

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAtomicLatencyBuckets(t *testing.T) {
	t.Parallel()
	prev := -1
	for us := int64(0); us <= latencyHighest; us = us + 1 + us/97 {
		b := atomicBucket(us)
		if b < prev {
			t.Fatalf("atomicBucket(%d) = %d after %d", us, b, prev)
		}
		if b >= atomicBuckets {
			t.Fatalf("atomicBucket(%d) = %d, past the %d buckets", us, b, atomicBuckets)
		}
		if v := atomicValue(b); math.Abs(float64(v-us)) > float64(us)/32+1 {
			t.Fatalf("atomicValue(atomicBucket(%d)) = %d, more than 1/32 off", us, v)
		}
		prev = b
	}
	if got := atomicBucket(latencyHighest); got >= atomicBuckets {
		t.Errorf("the top of the range is in bucket %d of %d", got, atomicBuckets)
	}
}

func TestAtomicLatency(t *testing.T) {
	t.Parallel()
	var a atomicLatency
	var wg sync.WaitGroup
	// 1..1000 ms, each once, from 4 goroutines; 3 early; one past the hour.
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ms := 1 + g; ms <= 1000; ms += 4 {
				a.record(time.Duration(ms) * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	for range 3 {
		a.record(-time.Millisecond)
	}
	a.record(2 * time.Hour)
	l := a.latency()
	if got := l.Count(); got != 1004 {
		t.Errorf("Count = %d, want 1004", got)
	}
	if n, _ := l.Early(); n != 3 {
		t.Errorf("Early = %d, want 3", n)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 499 * time.Millisecond}, {90, 900 * time.Millisecond}, {99, 990 * time.Millisecond}} {
		got := l.Quantile(tc.p)
		if math.Abs(float64(got-tc.want)) > float64(tc.want)/30 {
			t.Errorf("p%g = %v, want %v within 3%%", tc.p, got, tc.want)
		}
	}
	if got := l.Quantile(100); got < 59*time.Minute {
		t.Errorf("max = %v, want the hour the over-long value is clamped to", got)
	}
}

func TestHistDelta(t *testing.T) {
	t.Parallel()
	buckets := []float64{math.Inf(-1), 0, 1e-3, 2e-3, math.Inf(1)}
	a := &metrics.Float64Histogram{Counts: []uint64{1, 5, 0, 2}, Buckets: buckets}
	b := &metrics.Float64Histogram{Counts: []uint64{1, 105, 10, 2}, Buckets: buckets}
	l := histDelta(a, b)
	if got := l.Count(); got != 110 {
		t.Fatalf("Count = %d, want the 110 values gained", got)
	}
	// 100 in [0, 1ms) at 0.5ms, 10 in [1ms, 2ms) at 1.5ms.
	if got := l.Quantile(50); !within(got, 500*time.Microsecond) {
		t.Errorf("p50 = %v, want 0.5ms", got)
	}
	if got := l.Quantile(100); !within(got, 1500*time.Microsecond) {
		t.Errorf("max = %v, want 1.5ms", got)
	}
	if got := histDelta(nil, b).Count(); got != 0 {
		t.Errorf("histDelta without a first reading has %d values", got)
	}
}

// TestFloorProbe runs fire on the in-process peer and checks that every
// report carries the floor measured beside it, in each of its forms, and
// that the starved flag follows its threshold.
func TestFloorProbe(t *testing.T) {
	for _, tc := range []struct {
		name    string
		starved time.Duration
		want    bool
	}{
		// Nothing fires a nanosecond late, and everything within an hour.
		{"starved", time.Nanosecond, true},
		{"quiet", time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := NewAfterFunc()
			defer a.Close()
			cfg := Config{Rate: 200, Duration: 500 * time.Millisecond, Lead: 100 * time.Millisecond, Drain: 5 * time.Second,
				Tick: 50 * time.Millisecond, FloorRate: 500, StarvedP99: tc.starved}
			rep, err := Run(context.Background(), "fire", a, cfg, Progress{})
			if err != nil {
				t.Fatal(err)
			}
			f := rep.Floor
			if f == nil {
				t.Fatal("the report has no floor")
			}
			// The probe ran for the whole run: about 500/s over 0.6 s or
			// more, so well over 100 timers, each fired or counted unfired.
			if n := f.Lateness.Count + f.Unfired; n < 100 || f.Rate != 500 {
				t.Errorf("the probe took %d timers at %g/s, want over 100 at 500/s", n, f.Rate)
			}
			if f.SchedLatency.Count == 0 {
				t.Error("no scheduler latencies were read")
			}
			if f.Elapsed < 0.5 || f.CPUUser+f.CPUSystem <= 0 {
				t.Errorf("elapsed %gs, CPU %gs user %gs system", f.Elapsed, f.CPUUser, f.CPUSystem)
			}
			if _, err := os.Stat("/proc/stat"); err == nil && (!f.HostKnown || f.HostBusy < 0 || f.HostBusy > 1) {
				t.Errorf("host figures: known %v, busy %g", f.HostKnown, f.HostBusy)
			}
			if f.Starved != tc.want || f.StarvedP99 != float64(tc.starved)/1e6 {
				t.Errorf("Starved = %v at a threshold of %g ms with p99 %g ms, want %v", f.Starved, f.StarvedP99, f.Lateness.P99, tc.want)
			}
			// The target's run is unaffected: the floor is no check.
			if err := rep.Err(); err != nil {
				t.Errorf("Err = %v", err)
			}

			mark := "MACHINE STARVED"
			has := func(where, s string) {
				t.Helper()
				for _, want := range []string{floorLatenessName, floorSchedName, "floor: bench CPU", "machine starved"} {
					if !strings.Contains(s, want) {
						t.Errorf("%s lacks %q:\n%s", where, want, s)
					}
				}
				if strings.Contains(s, mark) != tc.want {
					t.Errorf("%s: %q shown = %v, want %v:\n%s", where, mark, !tc.want, tc.want, s)
				}
			}
			var tab bytes.Buffer
			if err := WriteTable(&tab, rep); err != nil {
				t.Fatal(err)
			}
			has("table", tab.String())
			var js bytes.Buffer
			if err := WriteJSON(&js, rep); err != nil {
				t.Fatal(err)
			}
			back, err := ReadJSON(&js)
			if err != nil {
				t.Fatal(err)
			}
			if back.Floor == nil || back.Floor.Starved != tc.want || back.Floor.Lateness.Count != f.Lateness.Count {
				t.Errorf("JSON round trip: floor %+v", back.Floor)
			}
			dir := t.TempDir()
			if err := WriteDir(dir, rep); err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{reportMDFile, reportHTMLFile} {
				b, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				// Markdown escapes the dots of no name here; the names
				// are checked as the table shows them.
				s := strings.ReplaceAll(string(b), `\_`, "_")
				has(name, s)
			}
			svg, err := os.ReadFile(filepath.Join(dir, latencyFile))
			if err != nil || !strings.Contains(string(svg), floorLatenessName) {
				t.Errorf("the latency plot does not draw the floor (%v)", err)
			}
			var cmp bytes.Buffer
			if err := Compare(&cmp, []string{"a", "b"}, []*Report{rep, back}); err != nil {
				t.Fatal(err)
			}
			if s := cmp.String(); !strings.Contains(s, floorLatenessName+" p99") || strings.Contains(s, "note: a: "+mark) != tc.want {
				t.Errorf("comparison:\n%s", s)
			}
		})
	}
}
