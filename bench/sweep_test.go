package bench

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fireReport is a finished fire run: lateness p99 in ms, the early and
// not-delivered checks, and a floor.
func fireReport(p99 float64, early, missing int64) *Report {
	return &Report{
		Scenario: "fire", Target: "t",
		Metrics: []Metric{{Name: "delivered and acked", Value: 1000, Unit: "timers/s"}},
		Dists:   []Dist{{Name: "lateness", Unit: "ms", Count: 1000, P50: p99 / 2, P99: p99, Max: 2 * p99}},
		Checks: []Check{{Name: "early deliveries", Got: early}, {Name: "not delivered", Got: missing},
			{Name: "stray deliveries"}},
		Floor: &Floor{Rate: 1000, Lateness: Dist{Name: "time.AfterFunc lateness", Count: 1000, P99: 1}, StarvedP99: 5},
	}
}

func TestJudgeStep(t *testing.T) {
	t.Parallel()
	with := func(r *Report, f func(*Report)) *Report { f(r); return r }
	for _, tc := range []struct {
		name string
		rep  *Report
		held bool
		why  string
	}{
		{"held", fireReport(4, 0, 0), true, ""},
		{"just under", fireReport(9.999, 0, 0), true, ""},
		{"at the bound", fireReport(10, 0, 0), false, "lateness p99 10 ms, not under 10 ms"},
		{"late", fireReport(250, 0, 0), false, "lateness p99 250 ms"},
		{"early", fireReport(1, 3, 0), false, "early deliveries 3"},
		{"lost", fireReport(1, 0, 7), false, "not delivered 7"},
		{"early and late", fireReport(50, 1, 0), false, "early deliveries 1"},
		{"interrupted", with(fireReport(1, 0, 0), func(r *Report) { r.Interrupted = true }), false, "interrupted"},
		{"failed", with(fireReport(1, 0, 0), func(r *Report) { r.Interrupted, r.Error = true, "schedule: boom" }), false, "the run failed: schedule: boom"},
		{"nothing delivered", with(fireReport(1, 0, 0), func(r *Report) { r.Dists[0].Count = 0 }), false, "nothing was delivered"},
		{"no lateness", with(fireReport(1, 0, 0), func(r *Report) { r.Dists = nil }), false, "nothing was delivered"},
		// A starved floor is shown beside the step, not held against it.
		{"starved floor", with(fireReport(4, 0, 0), func(r *Report) { r.Floor.Starved = true }), true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			held, why := judgeStep(tc.rep, 10*time.Millisecond)
			if held != tc.held || !strings.Contains(why, tc.why) || (tc.held && why != "") {
				t.Errorf("judgeStep = %v %q, want %v %q", held, why, tc.held, tc.why)
			}
		})
	}
}

func TestHighestHeld(t *testing.T) {
	t.Parallel()
	step := func(rate float64, held bool) SweepStep { return SweepStep{Rate: rate, Held: held} }
	for _, tc := range []struct {
		steps []SweepStep
		want  float64
	}{
		{nil, 0},
		{[]SweepStep{step(1000, false)}, 0},
		{[]SweepStep{step(1000, true), step(2000, true), step(5000, false)}, 2000},
		// The highest held, also above one that was not (a noisy step).
		{[]SweepStep{step(1000, true), step(2000, false), step(5000, true), step(10000, false)}, 5000},
		// In the order run, not sorted.
		{[]SweepStep{step(5000, true), step(1000, true)}, 5000},
	} {
		if got := highestHeld(tc.steps); got != tc.want {
			t.Errorf("highestHeld(%+v) = %g, want %g", tc.steps, got, tc.want)
		}
	}
}

func TestSweepOutput(t *testing.T) {
	t.Parallel()
	s := &SweepReport{Target: "timerd", Addr: "x:1", HeldP99: 10, Start: time.Unix(0, 0).UTC()}
	for _, st := range []struct {
		rate float64
		rep  *Report
	}{{1000, fireReport(2, 0, 0)}, {2000, fireReport(40, 0, 0)}} {
		held, why := judgeStep(st.rep, 10*time.Millisecond)
		s.Steps = append(s.Steps, SweepStep{Rate: st.rate, Held: held, Why: why, Report: st.rep})
	}
	s.Steps[1].Report.Floor.Starved = true
	s.Highest = highestHeld(s.Steps)
	var tab bytes.Buffer
	if err := WriteSweepTable(&tab, s); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"floor p99 ms", "starved", "YES", "highest rate held (lateness p99 < 10 ms, nothing early, none lost): 1k/s"} {
		if !strings.Contains(tab.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, tab.String())
		}
	}
	if got := stepLine(s.Steps[1]); !strings.Contains(got, "not held (lateness p99 40 ms") || !strings.Contains(got, "floor p99 1 ms (MACHINE STARVED)") {
		t.Errorf("step line = %q", got)
	}
	if err := s.Err(); err != nil {
		t.Errorf("Err of a sweep with a rate not held = %v, want nil", err)
	}
	s.Steps[1].Report.Checks[0].Got = 1
	if err := s.Err(); err == nil || !strings.Contains(err.Error(), "early deliveries") {
		t.Errorf("Err with an early delivery = %v", err)
	}
}

// TestSweepAfterFunc sweeps the in-process peer: a step per rate, each
// with its floor, a line per step on the progress writer, and the files.
func TestSweepAfterFunc(t *testing.T) {
	a := NewAfterFunc()
	defer a.Close()
	var prog bytes.Buffer
	cfg := Config{Rates: []float64{200, 500}, Rate: 200, Duration: 300 * time.Millisecond, Lead: 100 * time.Millisecond,
		Drain: 5 * time.Second, Tick: 50 * time.Millisecond, HeldP99: time.Hour}
	s, err := Sweep(context.Background(), a, cfg, Progress{W: &prog})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Steps) != 2 || s.Steps[0].Rate != 200 || s.Steps[1].Rate != 500 || s.Interrupted {
		t.Fatalf("steps %+v", s.Steps)
	}
	for _, st := range s.Steps {
		if !st.Held || st.Report.Floor == nil || st.Report.Scenario != "fire" {
			t.Errorf("step %g/s: held %v (%s), floor %v", st.Rate, st.Held, st.Why, st.Report.Floor)
		}
	}
	if s.Highest != 500 {
		t.Errorf("Highest = %g, want 500", s.Highest)
	}
	for _, want := range []string{"sweep 1/2: fire at 200/s for 300ms", "sweep 1/2: 200/s held: lateness p50", "sweep 2/2: 500/s held", "floor p99"} {
		if !strings.Contains(prog.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, prog.String())
		}
	}
	dir := t.TempDir()
	var out bytes.Buffer
	if err := (Output{Dir: dir, JSON: true}).WriteSweep(&out, s); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"highest_held": 500`) {
		t.Errorf("JSON lacks the verdict:\n%.500s", out.String())
	}
	for _, f := range []string{sweepJSONFile, sweepMDFile, "rate-200/report.json", "rate-500/report.md"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	// A run takes one rate.
	if _, err := Run(context.Background(), "fire", a, cfg, Progress{}); err == nil || !strings.Contains(err.Error(), "Rates") {
		t.Errorf("Run with two rates = %v", err)
	}
}
