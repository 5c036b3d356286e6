package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/bench"
	"github.com/timerd/timerd/internal/clustertest"
	"github.com/timerd/timerd/server"
)

func TestBenchUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench"}, "missing scenario (one of schedule, fire, mixed, burst, failover, recovery, or compare)"},
		{[]string{"bench", "nope"}, `unknown scenario "nope" (want one of schedule, fire, mixed, burst, failover, recovery)`},
		{[]string{"bench", "failover"}, "failover needs --kill-cmd"},
		{[]string{"bench", "recovery"}, "recovery needs --restart-cmd"},
		{[]string{"bench", "failover", "--kill-cmd", "true", "--peer", "afterfunc"}, "failover measures a timerd cluster; it takes no --peer"},
		{[]string{"bench", "failover", "--kill-cmd", "true", "--spread", "10s", "--kill-after", "10s"}, "KillAfter: must be less than Spread (10s)"},
		{[]string{"bench", "failover", "--kill-cmd", "true", "--spread=-1s"}, "Spread: must not be negative"},
		{[]string{"bench", "failover", "--kill-cmd", "true", "--spread", "soon"}, `--spread takes a duration such as 60s, not "soon"`},
		{[]string{"bench", "failover", "--kill-cmd", "true", "--spread"}, "--spread needs a duration here, such as --spread 60s"},
		{[]string{"bench", "failover", "--kill-cmd", "true", "--spread", "10s", "--kill-after", "20s"}, "KillAfter: must be less than Spread (10s), so that timers fall due after the kill, got 20s"},
		{[]string{"bench", "failover", "--kill-cmd", "true", "--spread=10s", "--kill-after", "20s"}, "KillAfter: must be less than Spread (10s)"},
		{[]string{"bench", "fire", "extra"}, `unexpected argument "extra"`},
		{[]string{"bench", "compare"}, "compare needs at least one report file"},
		{[]string{"bench", "schedule", "--peer", "redis-raw"}, "--peer redis-raw needs --redis URL"},
		{[]string{"bench", "fire", "--peer", "asynq"}, "--peer asynq needs --redis URL"},
		{[]string{"bench", "schedule", "--peer", "memcached", "--redis", "redis://127.0.0.1:6379/0"}, `unknown --peer "memcached" (want redis-raw, asynq or afterfunc)`},
		{[]string{"bench", "fire", "--peer", "afterfunc", "--redis", "redis://127.0.0.1:6379/0"}, `--redis is for the peers on Redis, not afterfunc`},
		{[]string{"bench", "schedule", "--redis", "redis://127.0.0.1:6379/0"}, "--redis is for a --peer"},
		{[]string{"bench", "schedule", "--batch", "1,x,100"}, `batch size "x" is not a number`},
		{[]string{"bench", "schedule", "--batch", "10,0"}, "Batches: a batch size must be 1 to 100000, got 0"},
		{[]string{"bench", "fire", "--rate", "-5"}, "Rate: must be a finite number, not negative, got -5"},
		{[]string{"bench", "fire", "--rate", "NaN"}, "Rate: must be a finite number"},
		{[]string{"bench", "fire", "--duration", "-1s"}, "Duration: must be positive"},
		{[]string{"bench", "fire", "--concurrency", "5000"}, "Concurrency: must be 1 to 4096"},
		{[]string{"bench", "mixed", "--cancel", "0.9", "--reschedule", "0.5"}, "Cancel and Reschedule must be shares"},
		{[]string{"bench", "burst", "--count", "-1"}, "Count: must not be negative"},
		{[]string{"bench", "fire", "--workers", "-1"}, "--max-in-flight and --workers must not be negative"},
		{[]string{"bench", "fire", "--no-such-flag"}, "no-such-flag"},
		{[]string{"bench", "schedule", "--rate", "100,200"}, "--rate takes a list of rates (a sweep) only for fire"},
		{[]string{"bench", "fire", "--rate", "100,x"}, `rate "x" is not a number`},
		{[]string{"bench", "fire", "--rate", "100,0"}, "Rates: a sweep's rate must be a finite number above 0, got 0"},
		{[]string{"bench", "fire", "--rate", "100,200", "--held-p99", "-1ms"}, "HeldP99: must be positive"},
		{[]string{"bench", "fire", "--starved-p99", "-1ms"}, "StarvedP99: must be positive"},
		{[]string{"bench", "fire", "--floor-rate", "200000"}, "FloorRate: must be above 0 and at most 100000"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			// Nothing is dialled: the address is never reached.
			r := ctl(t, "127.0.0.1:1", tc.args...)
			if r.code != exitUsage {
				t.Fatalf("want exit code 2: %v", r)
			}
			if !strings.Contains(r.stderr, "timerctl bench: ") || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr does not say %q: %v", tc.want, r)
			}
			if !strings.Contains(r.stderr, "Run 'timerctl bench --help' for usage.") {
				t.Errorf("stderr does not point at the help: %v", r)
			}
			if r.stdout != "" {
				t.Errorf("stdout of a usage error: %q", r.stdout)
			}
		})
	}
}

func TestBenchHelp(t *testing.T) {
	t.Parallel()
	r := ctl(t, "127.0.0.1:1", "bench", "--help")
	if r.code != exitOK {
		t.Fatalf("bench --help: %v", r)
	}
	for _, want := range []string{"Scenarios:", "schedule", "fire", "mixed", "burst", "failover", "recovery", "--peer", "--batch", "--rate", "--out", "compare",
		"timerd-benchpeer", "--kill-cmd", "--restart-cmd", "--spread", "--kill-after", "comma-separated list"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("bench --help lacks %q:\n%s", want, r.stdout)
		}
	}
}

// readReport reads the report JSON in file.
func readReport(t *testing.T, file string) *bench.Report {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := bench.ReadJSON(f)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return rep
}

// checkReport checks a report timerctl wrote of a finished, clean run.
func checkReport(t *testing.T, rep *bench.Report, scenario string) {
	t.Helper()
	if rep.Scenario != scenario || rep.Target != "timerd" || rep.Interrupted || rep.Err() != nil {
		t.Errorf("report: scenario %q target %q interrupted %v err %v", rep.Scenario, rep.Target, rep.Interrupted, rep.Err())
	}
	if len(rep.Metrics) == 0 || len(rep.Dists) == 0 || len(rep.Series) == 0 || len(rep.Params) == 0 {
		t.Errorf("report lacks figures: %+v", rep)
	}
}

// checkDir checks that --out wrote every file of the report into dir.
func checkDir(t *testing.T, dir string) {
	t.Helper()
	for _, f := range []string{"report.md", "report.html", "report.json", "latency.svg", "throughput.svg"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Size() == 0 {
			t.Errorf("--out: %s: %v", f, err)
		}
	}
}

func TestBenchRun(t *testing.T) {
	t.Parallel()
	addr := startServer(t, nil).GRPCAddr()
	tmp := t.TempDir()
	short := []string{"--tick", "50ms"}

	// fire, as JSON and into a directory.
	fireDir := filepath.Join(tmp, "fire")
	r := mustCtl(t, addr, append([]string{"--json", "bench", "fire", "--rate", "200", "--duration", "500ms", "--lead", "300ms",
		"--drain", "20s", "--out", fireDir}, short...)...)
	rep, err := bench.ReadJSON(strings.NewReader(r.stdout))
	if err != nil {
		t.Fatalf("fire --json: %v\n%s", err, r.stdout)
	}
	checkReport(t, rep, "fire")
	if len(rep.Checks) != 3 {
		t.Errorf("fire checks: %+v", rep.Checks)
	}
	for _, m := range rep.Metrics {
		if m.Name == "delivered" && m.Value != 100 {
			t.Errorf("delivered %g of 100 timers", m.Value)
		}
	}
	if !strings.Contains(r.stderr, "report written to "+filepath.Join(fireDir, "report.md")) {
		t.Errorf("stderr does not name the report: %v", r)
	}
	checkDir(t, fireDir)
	if got := readReport(t, filepath.Join(fireDir, "report.json")); got.Scenario != "fire" || len(got.Metrics) != len(rep.Metrics) {
		t.Errorf("report.json differs from the JSON printed: %+v", got)
	}

	// schedule, twice: as JSON on stdout, and as a table with --out.
	sched := append([]string{"bench", "schedule", "--duration", "300ms", "--count", "2000", "--batch", "10,100", "--concurrency", "4"}, short...)
	r = mustCtl(t, addr, append(sched, "--json")...)
	aFile := filepath.Join(tmp, "a.json")
	if err := os.WriteFile(aFile, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	checkReport(t, readReport(t, aFile), "schedule")
	schedDir := filepath.Join(tmp, "sched-b")
	r = mustCtl(t, addr, append(sched, "--out", schedDir)...)
	for _, want := range []string{"scheduled, batch=10", "scheduled, batch=100", "Schedule call, batch=100", "timers/s"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("schedule table lacks %q:\n%s", want, r.stdout)
		}
	}
	checkDir(t, schedDir)
	checkReport(t, readReport(t, filepath.Join(schedDir, "report.json")), "schedule")

	// compare: the schedule reports side by side with ratios, the fire
	// report in a group of its own.
	r = mustCtl(t, addr, "bench", "compare", aFile, filepath.Join(schedDir, "report.json"), filepath.Join(fireDir, "report.json"))
	for _, want := range []string{"scenario schedule", "scenario fire", "timerd (a)", "timerd (sched-b)", "scheduled, batch=10", "x)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("compare output lacks %q:\n%s", want, r.stdout)
		}
	}
	// The second schedule column has a ratio on every row the first has.
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(line, "scheduled, batch=") && !strings.HasSuffix(strings.TrimSpace(line), "x)") {
			t.Errorf("compare row without a ratio: %q", line)
		}
	}

	// compare --spread: two repetitions of one label share a column, with
	// their median and [min–max].
	rep1, rep2 := filepath.Join(tmp, "r1", "x-schedule"), filepath.Join(tmp, "r2", "x-schedule")
	for _, d := range []string{rep1, rep2} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "report.json"), []byte(mustRead(t, aFile)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r = mustCtl(t, addr, "bench", "compare", "--spread", filepath.Join(rep1, "report.json"), filepath.Join(rep2, "report.json"))
	if !strings.Contains(r.stdout, "timerd (x)") || !strings.Contains(r.stdout, "[") {
		t.Errorf("compare --spread output lacks the shared column and its [min–max]:\n%s", r.stdout)
	}

	// compare --markdown: the same figures as Markdown tables.
	r = mustCtl(t, addr, "bench", "compare", "--markdown", aFile, filepath.Join(schedDir, "report.json"))
	for _, want := range []string{"### schedule", "| scheduled, batch=10 | timers/s |", "x) |"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("compare --markdown output lacks %q:\n%s", want, r.stdout)
		}
	}

	// compare of files that are not reports.
	bad := filepath.Join(tmp, "bad.json")
	if err := os.WriteFile(bad, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantFail(t, ctl(t, addr, "bench", "compare", aFile, bad), "timerctl bench:", "bad.json", "reading report JSON")
	wantFail(t, ctl(t, addr, "bench", "compare", filepath.Join(tmp, "missing.json")), "timerctl bench:", "missing.json")
}

func TestBenchUnreachable(t *testing.T) {
	t.Parallel()
	r := ctl(t, "127.0.0.1:1", "--timeout", "2s", "bench", "fire", "--duration", "100ms")
	wantFail(t, r, "timerctl bench: nothing answers at 127.0.0.1:1: is timerd running there? (connection refused)")
}

// TestBenchPeer runs --peer redis-raw and --peer asynq, whose runner is
// another binary: its absence is reported by name, and when it is there
// it gets the same arguments and its exit code is timerctl's.
func TestBenchPeer(t *testing.T) {
	empty := t.TempDir()
	t.Setenv("PATH", empty)
	for _, peer := range []string{"redis-raw", "asynq"} {
		args := []string{"bench", "schedule", "--peer", peer, "--redis", "redis://127.0.0.1:1/0", "--batch", "5"}
		r := ctl(t, "127.0.0.1:1", args...)
		wantFail(t, r, "timerctl bench:", "--peer "+peer+" runs timerd-benchpeer", "neither beside timerctl nor on PATH", "make build")
	}

	// A stand-in runner on PATH.
	script := "#!/bin/sh\necho \"peer $*\"\nexit 3\n"
	if err := os.WriteFile(filepath.Join(empty, "timerd-benchpeer"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, peer := range []string{"redis-raw", "asynq"} {
		args := []string{"bench", "schedule", "--peer", peer, "--redis", "redis://127.0.0.1:1/0", "--batch", "5"}
		r := ctl(t, "127.0.0.1:1", append([]string{"--json"}, args...)...)
		if r.code != 3 {
			t.Fatalf("want the runner's exit code 3: %v", r)
		}
		if want := "peer schedule --peer " + peer + " --redis redis://127.0.0.1:1/0 --batch 5 --json\n"; r.stdout != want {
			t.Errorf("runner got %q, want %q", r.stdout, want)
		}
	}
}

// TestNoStoreInTimerctl checks that timerctl links neither timerd's store
// nor what it needs (Pebble, go-redis), nor a peer's library: peers that
// need them run in timerd-benchpeer, the runner of the module bench/peers.
func TestNoStoreInTimerctl(t *testing.T) {
	t.Parallel()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list timerctl's dependencies: %v", err)
	}
	out, err := exec.Command(goCmd, "list", "-deps", ".").Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			t.Fatalf("go list -deps: %v\n%s", err, exit.Stderr)
		}
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/timerd/timerd/client") {
		t.Fatalf("go list -deps . does not list the client; is it listing timerctl?\n%s", out)
	}
	var bad []string
	for _, dep := range deps {
		for _, banned := range []string{"github.com/cockroachdb/pebble", "github.com/redis/go-redis", "github.com/timerd/timerd/store", "github.com/hibiken/asynq"} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				bad = append(bad, dep)
			}
		}
	}
	if len(bad) > 0 {
		t.Errorf("timerctl depends on %d packages it must not link:\n%s", len(bad), strings.Join(bad, "\n"))
	}
}

// TestBenchSweep runs a --rate sweep end to end against an in-process
// node: a progress line as each rate starts and ends, a row per rate with
// its floor, the verdict, and the files of --out.
func TestBenchSweep(t *testing.T) {
	t.Parallel()
	addr := startServer(t, nil).GRPCAddr()
	dir := filepath.Join(t.TempDir(), "sweep")
	// A bound of a minute: the test checks the sweep, not this machine.
	r := mustCtl(t, addr, "bench", "fire", "--rate", "200,500", "--duration", "1s", "--lead", "300ms", "--drain", "20s",
		"--tick", "50ms", "--held-p99", "1m", "--out", dir)
	for _, want := range []string{"sweep 1/2: fire at 200/s for 1s", "sweep 1/2: 200/s held: lateness p50", "sweep 2/2: fire at 500/s",
		"sweep 2/2: 500/s held", "; floor p99 ", "sweep written to " + filepath.Join(dir, "sweep.md")} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	for _, want := range []string{"sweep of fire on timerd at " + addr, "floor p99 ms", "highest rate held (lateness p99 < 60k ms, nothing early, none lost): 500/s"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	for _, f := range []string{"sweep.json", "sweep.md", "rate-200/report.json", "rate-500/report.json"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("--out: %s: %v", f, err)
		}
	}
	rep := readReport(t, filepath.Join(dir, "rate-500", "report.json"))
	checkReport(t, rep, "fire")
	if rep.Floor == nil || rep.Floor.Lateness.Count == 0 {
		t.Errorf("the 500/s step has no floor: %+v", rep.Floor)
	}
	for _, m := range rep.Metrics {
		if m.Name == "delivered" && m.Value != 500 {
			t.Errorf("delivered %g of 500 timers at 500/s", m.Value)
		}
	}
}

// deliveryDefaults keeps a test cluster's ack timeout and attempts at
// production values (its lease stays short, so failover is quick): a
// loaded machine can outlast the test presets, and a timer that became a
// dead letter would read as lost.
func deliveryDefaults(c *server.Config) {
	c.Shard.AckTimeout, c.Shard.MaxAttempts, c.Shard.BackoffMin = 30*time.Second, 10, time.Second
}

// onSignal runs act once the shell command of a run has created the file
// signal, then creates signal+".done", which the command waits for: a
// command line that reaches into an in-process cluster, as --kill-cmd and
// --restart-cmd reach a real one.
func onSignal(t *testing.T, signal string, act func()) string {
	t.Helper()
	stop := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := os.Stat(signal); err == nil {
				act()
				if err := os.WriteFile(signal+".done", nil, 0o600); err != nil {
					t.Error(err)
				}
				return
			}
		}
	}()
	return "touch " + signal + " && while [ ! -e " + signal + ".done ]; do sleep 0.02; done"
}

// metricOf returns rep's metric name; the test fails when it is absent.
func metricOf(t *testing.T, rep *bench.Report, name string) float64 {
	t.Helper()
	for _, m := range rep.Metrics {
		if m.Name == name {
			return m.Value
		}
	}
	t.Fatalf("no metric %q in %+v", name, rep.Metrics)
	return 0
}

// TestBenchFailover runs failover from the command line against a
// cluster of three given as a list of addresses; --kill-cmd runs through
// sh, and kills node 2.
func TestBenchFailover(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, 3, deliveryDefaults)
	dir := t.TempDir()
	kill := onSignal(t, filepath.Join(dir, "kill"), func() { c.Kill(2) })
	out := filepath.Join(dir, "report")
	r := mustCtl(t, strings.Join(c.Addrs(), ","), "--json", "bench", "failover", "--count", "2000", "--spread", "4s", "--kill-after", "1500ms",
		"--lead", "1s", "--drain", "20s", "--tick", "50ms", "--kill-cmd", kill, "--out", out)
	rep, err := bench.ReadJSON(strings.NewReader(r.stdout))
	if err != nil {
		t.Fatalf("failover --json: %v\n%s", err, r.stdout)
	}
	checkReport(t, rep, "failover")
	checkDir(t, out)
	for _, c := range rep.Checks {
		if c.Got != 0 {
			t.Errorf("check %s = %d", c.Name, c.Got)
		}
	}
	if got := metricOf(t, rep, "delivered"); got != 2000 {
		t.Errorf("delivered %g of 2000", got)
	}
	if metricOf(t, rep, "killed node's shards") == 0 || metricOf(t, rep, "kill → first of its timers fired elsewhere") <= 0 {
		t.Errorf("failover figures: %+v", rep.Metrics)
	}
	var killed string
	for _, p := range rep.Params {
		if p.Name == "killed" {
			killed = p.Value
		}
	}
	if killed != "node-2" {
		t.Errorf("killed = %q, want node-2", killed)
	}
}

// TestBenchRecovery runs recovery from the command line against a cluster
// of two found through one address; --restart-cmd runs through sh, and
// kills and restarts both nodes.
func TestBenchRecovery(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, 2, deliveryDefaults)
	dir := t.TempDir()
	restart := onSignal(t, filepath.Join(dir, "restart"), func() {
		c.Kill(0)
		c.Kill(1)
		c.Restart(0)
		c.Restart(1)
	})
	r := mustCtl(t, c.Addrs()[0], "bench", "recovery", "--count", "3000", "--lead", "500ms", "--duration", "1m", "--tick", "50ms", "--restart-cmd", restart)
	for _, want := range []string{"recovery on timerd at " + c.Addrs()[0] + ",", "restart → every shard serving", "restart → probe fired",
		"loaded timers missing after the restart", "timers loaded"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("recovery table lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "running the restart command: touch ") {
		t.Errorf("stderr does not name the restart command:\n%s", r.stderr)
	}
}

// mustRead returns the content of file.
func mustRead(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
