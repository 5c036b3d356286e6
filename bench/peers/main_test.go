package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/timerd/timerd/bench"
	"github.com/timerd/timerd/internal/redistest"
)

// TestRunRedisRaw runs the runner as timerctl does for --peer redis-raw:
// a schedule report as JSON on stdout, nothing left in Redis, and the
// scenarios that fire refused as usage errors.
func TestRunRedisRaw(t *testing.T) {
	rs := redistest.Start(t)
	url := "redis://" + rs.Addr() + "/0"
	ctx := context.Background()
	runner := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(ctx, args, &out, &errOut)
		return code, out.String(), errOut.String()
	}

	code, stdout, stderr := runner("schedule", "--peer", "redis-raw", "--redis", url,
		"--duration", "300ms", "--count", "1000", "--batch", "100", "--tick", "50ms", "--json")
	if code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", code, stderr)
	}
	rep, err := bench.ReadJSON(strings.NewReader(stdout))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Target != "redis-raw" || rep.Addr != rs.Addr() || rep.Scenario != "schedule" || rep.Err() != nil {
		t.Errorf("redis-raw report: %+v", rep)
	}
	if keys, err := rs.Client(t).Keys(ctx, "*").Result(); err != nil || len(keys) != 0 {
		t.Errorf("keys left in Redis: %v, %v", keys, err)
	}

	for _, tc := range []struct {
		args     []string
		code     int
		inStderr string
	}{
		{[]string{"fire", "--peer", "redis-raw", "--redis", url}, 2, "not supported"},
		{[]string{"schedule", "--peer", "redis-raw", "--redis", "redis://127.0.0.1:1/0", "--duration", "100ms"}, 1, "redis-raw: ping"},
		{[]string{"schedule", "--peer", "redis-raw"}, 2, "--peer redis-raw needs --redis URL"},
		{[]string{"schedule", "--peer", "memcached", "--redis", url}, 2, `unknown --peer "memcached"`},
	} {
		code, _, stderr := runner(tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.inStderr) {
			t.Errorf("%s: exit code %d, stderr %q; want %d and %q", strings.Join(tc.args, " "), code, stderr, tc.code, tc.inStderr)
		}
	}
}
