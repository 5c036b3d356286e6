// Command timerd-benchpeer runs the bench suite against the peers that
// need dependencies timerctl must not link (asynq; redis-raw, which
// encodes timerd's records with its store package and so takes go-redis
// and Pebble), with the same scenarios, flags and reports as "timerctl
// bench". timerctl runs it for "timerctl bench SCENARIO --peer asynq" and
// "--peer redis-raw"; it can also be run on its own:
//
//	timerd-benchpeer SCENARIO --peer asynq|redis-raw --redis redis://127.0.0.1:6379/0 [bench flags] [--json]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/timerd/timerd/bench"
	asynqpeer "github.com/timerd/timerd/bench/peers/asynq"
	"github.com/timerd/timerd/bench/peers/redisraw"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main with its arguments and output; it returns the exit code:
// 0, 1 when the run failed or a check did not hold, 2 for a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("timerd-benchpeer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg                  bench.Config
		peer, redisURL, out  string
		asJSON               bool
		maxInFlight, workers int
		poll                 = fs.Duration("asynq-poll", 0, "asynq's delayed-task check interval (0: asynq's default, 5s)")
	)
	cfg.AddFlags(fs)
	fs.StringVar(&peer, "peer", "asynq", "the peer to measure: asynq or redis-raw")
	fs.StringVar(&redisURL, "redis", "", "Redis `URL` of the peer (required)")
	fs.StringVar(&out, "out", "", "write the report and plots to `DIR`")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	fs.IntVar(&maxInFlight, "max-in-flight", 0, "ignored: neither peer has credits")
	fs.IntVar(&workers, "workers", 0, "asynq server concurrency (default 16); ignored by redis-raw")

	// The scenario may come before or after the flags.
	var scenario string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		scenario, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if scenario == "" && fs.NArg() > 0 {
		scenario = fs.Arg(0)
	}
	switch {
	case scenario == "":
		fmt.Fprintln(stderr, "timerd-benchpeer: missing scenario")
		return 2
	case peer != "asynq" && peer != "redis-raw":
		fmt.Fprintf(stderr, "timerd-benchpeer: unknown --peer %q (this runner has asynq and redis-raw)\n", peer)
		return 2
	case redisURL == "":
		fmt.Fprintf(stderr, "timerd-benchpeer: --peer %s needs --redis URL\n", peer)
		return 2
	}
	var t bench.Target
	var err error
	if peer == "redis-raw" {
		t, err = redisraw.New(ctx, redisURL)
	} else {
		t, err = asynqpeer.New(ctx, redisURL, asynqpeer.Options{Workers: workers, DelayedTaskCheckInterval: *poll})
	}
	if err != nil {
		fmt.Fprintf(stderr, "timerd-benchpeer: %v\n", err)
		return 1
	}
	defer t.Close()
	output := bench.Output{JSON: asJSON, Dir: out, Log: stderr}
	if len(cfg.Rates) > 1 && scenario == "fire" { // a sweep, as timerctl runs it
		s, err := bench.Sweep(ctx, t, cfg, bench.ProgressTo(stderr))
		if err != nil {
			fmt.Fprintf(stderr, "timerd-benchpeer: %v\n", err)
			return 2
		}
		if err := output.WriteSweep(stdout, s); err != nil {
			fmt.Fprintf(stderr, "timerd-benchpeer: %v\n", err)
			return 1
		}
		return 0
	}
	rep, err := bench.Run(ctx, scenario, t, cfg, bench.ProgressTo(stderr))
	switch {
	case errors.Is(err, bench.ErrConfig), errors.Is(err, bench.ErrScenario), errors.Is(err, bench.ErrUnsupported):
		fmt.Fprintf(stderr, "timerd-benchpeer: %v\n", err)
		return 2
	case err != nil:
		fmt.Fprintf(stderr, "timerd-benchpeer: %v\n", err)
		return 1
	}
	if err := output.Write(stdout, rep); err != nil {
		fmt.Fprintf(stderr, "timerd-benchpeer: %v\n", err)
		return 1
	}
	return 0
}
