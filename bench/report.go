package bench

import "time"

// Report is the outcome of one run of one scenario against one target: what
// was asked (Params), what was measured (Metrics, Dists, Series) and what
// must hold whatever the speed (Checks). It is what the table, the JSON,
// the Markdown report and the plots are written from, and what Compare
// reads back, so it holds plain values only.
type Report struct {
	// Scenario is the scenario's name: schedule, fire, mixed or burst.
	Scenario string `json:"scenario"`
	// Target names the system driven: "timerd" or a peer ("redis-raw",
	// "asynq").
	Target string `json:"target"`
	// Addr is the address the target was reached at.
	Addr string `json:"addr"`
	// Start is when the run began (wall clock).
	Start time.Time `json:"start"`
	// Elapsed is the length of the run, load and drain, in seconds.
	Elapsed float64 `json:"elapsed_s"`
	// Interrupted reports a run cut short (Ctrl-C, or a failing target):
	// every figure covers only what happened before.
	Interrupted bool `json:"interrupted"`
	// Error is why the run stopped early, empty when it did not.
	Error string `json:"error,omitempty"`
	// Host describes the machine the bench ran on.
	Host Host `json:"host"`
	// Params are the run's settings, in the order they are shown.
	Params []Param `json:"params"`
	// Metrics are the headline figures, in the order they are shown.
	Metrics []Metric `json:"metrics"`
	// Dists are latency distributions (per-RPC latency, lateness).
	Dists []Dist `json:"distributions"`
	// Series are rates over the run, one point per sampling tick.
	Series []Series `json:"series"`
	// Checks are the correctness counters: each has the value it must have.
	Checks []Check `json:"checks"`
	// Floor is what the machine allowed during the run, measured in the
	// bench's process at the same time; nil in reports written before it
	// was measured.
	Floor *Floor `json:"floor,omitempty"`
}

// Host describes where a run was measured.
type Host struct {
	Hostname  string `json:"hostname"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	CPUs      int    `json:"cpus"`
	GoVersion string `json:"go_version"`
}

// Param is one setting of a run, as text.
type Param struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Metric is one headline figure, such as "scheduled" 312000 "timers/s".
type Metric struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// Dist summarises one latency distribution. Every value is in Unit.
type Dist struct {
	// Name says what was timed: "lateness", "Schedule RPC, batch=100".
	Name string `json:"name"`
	// Unit of every value: "ms".
	Unit string `json:"unit"`
	// Count is the number of values recorded.
	Count int64   `json:"count"`
	Min   float64 `json:"min"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
	// Curve is the percentile curve: X is the percentile (0 to 100, dense
	// towards 100), Y the value at it. It is what the percentile plot draws.
	Curve []Point `json:"curve"`
}

// Series is a rate over the run: X is seconds since the start, Y the rate
// in Unit over the tick that ends at X.
type Series struct {
	Name   string  `json:"name"`
	Unit   string  `json:"unit"`
	Points []Point `json:"points"`
}

// Point is one point of a curve or series.
type Point struct {
	X float64 `json:"x"`
	Y float64 `json:"y"`
}

// Check is a counter that must equal Want whatever the load: early
// deliveries, timers never delivered, cancelled timers that fired.
type Check struct {
	Name string `json:"name"`
	Got  int64  `json:"got"`
	Want int64  `json:"want"`
	// Note explains the check in a few words.
	Note string `json:"note,omitempty"`
}

// OK reports whether the check holds.
func (c Check) OK() bool { return c.Got == c.Want }

// Failed returns the checks of r that do not hold.
func (r *Report) Failed() []Check {
	var bad []Check
	for _, c := range r.Checks {
		if !c.OK() {
			bad = append(bad, c)
		}
	}
	return bad
}
