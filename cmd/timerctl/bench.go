package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/timerd/timerd/bench"
	"github.com/timerd/timerd/client"
)

// benchCommand is the entry of the command table for the bench suite.
var benchCommand = &command{
	name:    "bench",
	args:    "SCENARIO [--peer redis-raw|asynq] [flags] | bench compare FILE...",
	summary: "measure a node or cluster: schedule, fire, mixed, burst, failover or recovery",
	help: `Bench drives the timerd at --addr through the Go client and reports what it
measured: a progress line while it runs (on stderr), then a summary table
(or with --json the report as JSON), and with --out DIR a Markdown report,
a self-contained HTML report and SVG plots (lateness percentiles and
throughput over time) in DIR.

--addr names one node, whose cluster's members bench finds and reaches
too, or the members themselves as a comma-separated list. Calls go to the
first (the next when it is down); timers are received on every member.

Scenarios:
  schedule  durable schedules/s and per-call latency, for each --batch size
            (a comma-separated list) with --concurrency calls in flight;
            the timers are due in --delay and cancelled afterwards (--keep
            leaves them)
  fire      timers due at a steady --rate for --duration, each scheduled
            --lead ahead, received by a subscription: delivered and acked/s
            and lateness (received - due) percentiles; early deliveries
            must be 0. A list of rates (--rate 10000,20000,50000) sweeps
            them, a run per rate, and reports the highest rate held:
            lateness p99 under --held-p99 (10ms), nothing early, none lost
  mixed     the order-timeout pattern: timers created at --rate, due
            --delay later; halfway, --cancel of them are cancelled and
            --reschedule moved --delay/2 later; the rest fire
  burst     --count timers all due at one instant: time to drain and the
            spread of lateness
  failover  --count timers (100000) due evenly over --spread (60s); at
            --kill-after (20s) past the first due time, runs --kill-cmd
            (sh -c, such as 'kill -9 PID') to kill a node, then reports how
            soon after the kill the first and the last of the killed node's
            overdue timers fired on another node, the lateness of its timers
            beside the others', and lost (acknowledged, never delivered),
            early and duplicate deliveries; bounded by --duration
  recovery  loads --count timers (1000000) due in --delay (1h), schedules a
            probe timer due --lead (1s) after the restart begins, runs
            --restart-cmd (sh -c) to restart the node or nodes, and reports
            the time from its start until the shard map shows every shard
            serving again, and until the probe fires; then it looks up a
            sample of the loaded timers, which must all be there

A run is bounded by --duration and --count, and Ctrl-C stops it with the
results so far (marked interrupted). Every run removes the timers it leaves
behind. Progress is a bar on a terminal, plain lines every 5s otherwise.

Every run also measures its floor at the same time: --floor-rate (1000)
time.AfterFunc timers/s in timerctl's own process, the Go scheduler's
latency, GC pauses, timerctl's CPU time and the host's load, busy share
and steal. The report shows it beside the target's figures, and marks a
run whose floor p99 lateness is above --starved-p99 (5ms) MACHINE STARVED:
its lateness then says more about the machine than about the target.

--peer measures an alternative the same way: on --redis, redis-raw (the
same records written with pipelined HSETs, the limit for schedule) or
asynq (Redis-backed delayed tasks; schedule and fire); or afterfunc, Go's
time.AfterFunc in timerctl's own process (fire and burst), the floor of
lateness that this machine's scheduling alone allows. redis-raw and asynq
live in a module of their own: their runner, timerd-benchpeer, must be
beside timerctl or on PATH (make build puts both in bin/).

'timerctl bench compare FILE...' reads reports written by --json or --out
(report.json) and prints them side by side, with the ratio of each figure
to the first file's; --markdown prints Markdown tables. With --spread,
reports that get the same label (the same directory name, as the suite's
repetitions r1/LABEL-SCENARIO, r2/LABEL-SCENARIO do) share a column: each
cell is the figure's median, its ratio, and [min–max] over them.

Exits 1 when a check fails (early, lost, stray or cancelled-but-fired
deliveries, loaded timers missing after a restart) or the target failed; 0 otherwise, also when interrupted. A
sweep exits 1 only for early or stray deliveries or a failed target: a
rate not held is what it measures.`,
	flags: func(fs *flag.FlagSet) runner {
		c := new(benchCmd)
		c.cfg.AddFlags(fs)
		fs.StringVar(&c.peer, "peer", "", "measure a peer instead of timerd: redis-raw or asynq (on --redis), or afterfunc (Go's time.AfterFunc in this process)")
		fs.StringVar(&c.redis, "redis", "", "Redis `URL` of the peer (redis://127.0.0.1:6379/0)")
		fs.StringVar(&c.out, "out", "", "write report.md, report.html, report.json and SVG plots to `DIR`")
		fs.IntVar(&c.maxInFlight, "max-in-flight", 0, "subscriber credits: deliveries in flight on the stream (default 1000)")
		fs.IntVar(&c.workers, "workers", 0, "subscriber handler goroutines (default 16)")
		fs.BoolVar(&c.markdown, "markdown", false, "compare: print a Markdown table")
		// --spread is two flags: compare's switch, and failover's span.
		f := fs.Lookup("spread")
		f.Value = &spreadFlag{span: f.Value, compare: &c.spread}
		f.Usage = "compare: reports with the same label are repetitions; show each figure's median [min–max]. failover: --spread DURATION, the span over which the timers fall due, evenly (default 60s)"
		return c
	},
}

type benchCmd struct {
	cfg         bench.Config
	peer, redis string
	out         string
	maxInFlight int
	workers     int
	markdown    bool
	spread      bool
}

// spreadFlag is --spread: compare's switch (--spread) and failover's
// span (--spread 60s). Given without a value it is the switch; the parser
// then leaves a span after it as an argument, which check takes back.
type spreadFlag struct {
	span    flag.Value
	compare *bool
}

func (f *spreadFlag) String() string {
	if f.span == nil {
		return ""
	}
	return f.span.String()
}

func (f *spreadFlag) IsBoolFlag() bool { return true }

func (f *spreadFlag) Set(s string) error {
	if b, err := strconv.ParseBool(s); err == nil {
		*f.compare = b
		return nil
	}
	return f.span.Set(s)
}

func (c *benchCmd) check(fs *flag.FlagSet, args []string) error {
	if len(args) == 0 {
		return usagef("missing scenario (one of %s, or compare)", strings.Join(bench.Scenarios, ", "))
	}
	if args[0] == "compare" {
		if len(args) < 2 {
			return usagef("compare needs at least one report file")
		}
		return nil
	}
	if c.spread && len(args) == 1 {
		return usagef("--spread needs a duration here, such as --spread 60s; without one it is compare's")
	}
	if c.spread {
		// "--spread 60s": the span was parsed as an argument.
		d, err := time.ParseDuration(args[1])
		if err != nil {
			return usagef("--spread takes a duration such as 60s, not %q", args[1])
		}
		if err := fs.Set("spread", d.String()); err != nil {
			return usagef("--spread: %v", err)
		}
		c.spread = false
		args = args[:1:1]
	}
	if !slices.Contains(bench.Scenarios, args[0]) {
		return usagef("unknown scenario %q (want one of %s)", args[0], strings.Join(bench.Scenarios, ", "))
	}
	if len(args) > 1 {
		return usagef("unexpected argument %q", args[1])
	}
	switch c.peer {
	case "":
		if c.redis != "" {
			return usagef("--redis is for a --peer")
		}
	case "redis-raw", "asynq":
		if c.redis == "" {
			return usagef("--peer %s needs --redis URL", c.peer)
		}
	case "afterfunc":
		if c.redis != "" {
			return usagef("--redis is for the peers on Redis, not afterfunc")
		}
	default:
		return usagef("unknown --peer %q (want redis-raw, asynq or afterfunc)", c.peer)
	}
	switch args[0] {
	case "failover", "recovery":
		if c.peer != "" {
			return usagef("%s measures a timerd cluster; it takes no --peer", args[0])
		}
		if args[0] == "failover" && c.cfg.Kill.Do == nil {
			return usagef("failover needs --kill-cmd, the shell command that kills a node")
		}
		if args[0] == "recovery" && c.cfg.Restart.Do == nil {
			return usagef("recovery needs --restart-cmd, the shell command that restarts the cluster's nodes")
		}
	}
	if len(c.cfg.Rates) > 1 && args[0] != "fire" {
		return usagef("--rate takes a list of rates (a sweep) only for fire")
	}
	if c.maxInFlight < 0 || c.workers < 0 {
		return usagef("--max-in-flight and --workers must not be negative")
	}
	if err := c.cfg.WithDefaults(args[0]).Validate(); err != nil {
		return usagef("%v", err)
	}
	return nil
}

func (c *benchCmd) run(ctx context.Context, a *app, args []string) error {
	if args[0] == "compare" {
		return compareReports(a.stdout, args[1:], c.markdown, c.spread)
	}
	scenario := args[0]
	if c.peer == "redis-raw" || c.peer == "asynq" {
		return c.runPeer(ctx, a)
	}
	var t bench.Target
	switch c.peer {
	case "afterfunc":
		t = bench.NewAfterFunc()
	default:
		// Failover and recovery take nodes down on purpose: the client's
		// warnings of streams ended and subscribed again would be noise.
		level := slog.LevelWarn
		if scenario == "failover" || scenario == "recovery" {
			level = slog.LevelError
		}
		logger := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: level}))
		ns := a.namespace
		if ns == "" {
			ns = "bench"
		}
		sec, err := a.sec.options(a.addr)
		if err != nil {
			return err
		}
		cctx, cancel := a.callCtx(ctx)
		td, err := bench.DialTimerd(cctx, strings.Split(a.addr, ","),
			bench.TimerdOptions{Namespace: ns, MaxInFlight: c.maxInFlight, Workers: c.workers}, append(sec, client.WithLogger(logger))...)
		cancel()
		if err != nil {
			return err
		}
		t = td
	}
	defer t.Close()
	out := bench.Output{JSON: a.json, Dir: c.out, Log: a.stderr}
	if len(c.cfg.Rates) > 1 {
		s, err := bench.Sweep(ctx, t, c.cfg, bench.ProgressTo(a.stderr))
		if err != nil {
			return err
		}
		return out.WriteSweep(a.stdout, s)
	}
	rep, err := bench.Run(ctx, scenario, t, c.cfg, bench.ProgressTo(a.stderr))
	if err != nil {
		return err
	}
	return out.Write(a.stdout, rep)
}

// compareReports prints the reports in files side by side, each labelled
// by its target and file name; with spread, reports of one label are
// repetitions that share a column.
func compareReports(w io.Writer, files []string, markdown, spread bool) error {
	var reps []*bench.Report
	var labels []string
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return err
		}
		rep, err := bench.ReadJSON(fh)
		fh.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		reps = append(reps, rep)
		labels = append(labels, reportLabel(f, rep))
	}
	if spread {
		return bench.CompareSpread(w, labels, reps, markdown)
	}
	if markdown {
		return bench.CompareMarkdown(w, labels, reps)
	}
	return bench.Compare(w, labels, reps)
}

// reportLabel names the report in file f for a comparison: the directory
// --out wrote it to (or the file's name), less a trailing "-SCENARIO",
// with the target's name when the label does not already hold it.
func reportLabel(f string, rep *bench.Report) string {
	name := filepath.Base(f)
	if name == "report.json" {
		name = filepath.Base(filepath.Dir(f))
	}
	name = strings.TrimSuffix(strings.TrimSuffix(name, ".json"), "-"+rep.Scenario)
	if !strings.Contains(name, rep.Target) {
		name = rep.Target + " (" + name + ")"
	}
	return name
}

// peerBinary is the runner of the peers that live in their own module
// (bench/peers): redis-raw and asynq.
const peerBinary = "timerd-benchpeer"

// runPeer runs the bench of a peer kept out of timerd's module: it looks
// for timerd-benchpeer beside this executable, then on PATH, and hands it
// the same arguments.
func (c *benchCmd) runPeer(ctx context.Context, a *app) error {
	path := ""
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), peerBinary); fileExists(p) {
			path = p
		}
	}
	if path == "" {
		p, err := exec.LookPath(peerBinary)
		if err != nil {
			return fmt.Errorf("--peer %s runs %s, which is neither beside timerctl nor on PATH: build it with 'make build' (or 'cd bench/peers && go build -o ../../bin/%s .')", c.peer, peerBinary, peerBinary)
		}
		path = p
	}
	cmd := exec.CommandContext(ctx, path, a.cmdArgs...)
	if a.json {
		cmd.Args = append(cmd.Args, "--json")
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, a.stdout, a.stderr
	// Ctrl-C reaches the child too (same process group); let it print its
	// partial results rather than kill it.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return &exitCodeError{code: exit.ExitCode()}
		}
		return err
	}
	return nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}
