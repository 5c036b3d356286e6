package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/timerd/timerd/client"
	"github.com/timerd/timerd/internal/logline"
	"github.com/timerd/timerd/internal/redistest"
)

// delivery is one line of timerctl subscribe.
type delivery struct {
	DeliveryID    string    `json:"delivery_id"`
	Namespace     string    `json:"namespace"`
	ID            string    `json:"id"`
	Topic         string    `json:"topic"`
	PayloadBase64 string    `json:"payload_base64"`
	DueTime       time.Time `json:"due_time"`
	FiredTime     time.Time `json:"fired_time"`
	Attempt       uint32    `json:"attempt"`
	Shard         uint32    `json:"shard"`
	Epoch         uint64    `json:"epoch"`
}

// received is a delivery with the time its line reached the test.
type received struct {
	delivery
	at time.Time
}

// startSubscribe starts cmd, a timerctl subscribe (or another command
// whose output the test reads as it comes), as a child of the test, in
// childEnv() unless cmd.Env is set, and returns its stdout and its stderr
// as it is written.
func startSubscribe(t *testing.T, cmd *exec.Cmd) (*exec.Cmd, io.Reader, *lockedBuffer) {
	t.Helper()
	if cmd.Env == nil {
		cmd.Env = childEnv()
	}
	cmd.SysProcAttr = childAttr()
	stderr := new(lockedBuffer)
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, stdout, stderr
}

// subscribe runs timerctl subscribe against addr and returns every
// delivery it printed, each with the time its line was read.
func subscribe(t *testing.T, addr string, args ...string) ([]received, outcome) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	args = append([]string{"--addr", addr, "subscribe"}, args...)
	cmd, stdout, stderr := startSubscribe(t, exec.CommandContext(ctx, bin.timerctl, args...))
	var recs []received
	var lines strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		at := time.Now()
		lines.WriteString(sc.Text() + "\n")
		var d delivery
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			t.Errorf("subscribe printed a line that is not a delivery: %q: %v", sc.Text(), err)
			continue
		}
		recs = append(recs, received{d, at})
	}
	err := cmd.Wait()
	o := outcome{append([]string{"timerctl"}, args...), lines.String(), stderr.String(), 0}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("timerctl subscribe did not end within %v\n%v", commandTimeout, o)
	case errors.As(err, &ee):
		o.code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return recs, o
}

// TestScheduleFireGet schedules a timer with timerctl, receives it with
// timerctl subscribe once it is due, and finds it gone afterwards.
func TestScheduleFireGet(t *testing.T) {
	t.Parallel()
	n := startNode(t, t.TempDir())

	before := time.Now()
	o := mustTimerctl(t, n.grpcAddr, "--json", "schedule", "e2e-a", "--topic", "fire", "--in", "1s", "--payload", "hello")
	var sched struct {
		ID      string    `json:"id"`
		DueTime time.Time `json:"due_time"`
	}
	if err := json.Unmarshal([]byte(o.stdout), &sched); err != nil {
		t.Fatalf("schedule --json printed %q: %v", o.stdout, err)
	}
	if sched.ID != "e2e-a" || sched.DueTime.Before(before.Add(time.Second-time.Millisecond)) {
		t.Fatalf("schedule --json = %+v, want id e2e-a due at least 1s after %v", sched, before)
	}

	recs, o := subscribe(t, n.grpcAddr, "--topic", "fire", "--count", "1", "--json", "--max-wait", "30s")
	if o.code != 0 || len(recs) != 1 {
		t.Fatalf("want one delivery and exit code 0: %v", o)
	}
	d := recs[0]
	if d.ID != "e2e-a" || d.Topic != "fire" || d.Namespace != "default" || d.PayloadBase64 != base64.StdEncoding.EncodeToString([]byte("hello")) || d.Attempt != 1 || d.DeliveryID == "" {
		t.Errorf("delivery = %+v", d.delivery)
	}
	if !d.DueTime.Equal(sched.DueTime) {
		t.Errorf("delivery due %v, scheduled due %v", d.DueTime, sched.DueTime)
	}
	if d.FiredTime.Before(d.DueTime) {
		t.Errorf("fired at %v, before its due time %v", d.FiredTime, d.DueTime)
	}
	if d.at.Before(d.DueTime) {
		t.Errorf("received at %v, before its due time %v", d.at, d.DueTime)
	}

	// Delivered and acknowledged: gone.
	o = timerctl(t, n.grpcAddr, "get", "e2e-a")
	if o.code != 1 || !strings.Contains(o.stderr, "NotFound") || !strings.Contains(o.stderr, "not found") {
		t.Errorf("get after the acknowledged delivery: want exit code 1 and NotFound on stderr: %v", o)
	}
	n.stop(syscall.SIGTERM)
}

// TestSubscribeStopsOnSignal checks that timerctl subscribe without
// --count runs until SIGTERM, then exits 0 having acknowledged what it
// printed.
func TestSubscribeStopsOnSignal(t *testing.T) {
	t.Parallel()
	n := startNode(t, t.TempDir())
	cmd, stdout, stderr := startSubscribe(t, exec.Command(bin.timerctl, "--addr", n.grpcAddr, "subscribe", "--topic", "signal"))
	exited := make(chan error, 1)
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for range lines {
		}
		<-exited
	})

	mustTimerctl(t, n.grpcAddr, "schedule", "sig-1", "--topic", "signal", "--in", "0s", "--payload", "x")
	select {
	case line, ok := <-lines:
		var d delivery
		if !ok || json.Unmarshal([]byte(line), &d) != nil || d.ID != "sig-1" {
			t.Fatalf("subscribe printed %q (open: %v); stderr:\n%s", line, ok, stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no delivery printed within 20s; stderr:\n%s", stderr)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(stopTimeout)
	for open := true; open; {
		select {
		case line, ok := <-lines:
			if ok {
				t.Errorf("unexpected line after the only delivery: %q", line)
			}
			open = ok
		case <-deadline:
			t.Fatalf("timerctl subscribe did not exit within %v of SIGTERM", stopTimeout)
		}
	}
	err := <-exited // follows the end of its output
	if err != nil {
		t.Errorf("timerctl subscribe after SIGTERM: %v, want exit code 0; stderr:\n%s", err, stderr)
	}
	exited <- err // for the cleanup
	o := timerctl(t, n.grpcAddr, "get", "sig-1")
	if o.code != 1 || !strings.Contains(o.stderr, "NotFound") {
		t.Errorf("get after the acknowledged delivery: want NotFound: %v", o)
	}
}

// TestRestart checks that acknowledged timers survive a stop of the node,
// graceful or kill -9, including timers that were delivered but not
// acknowledged, and that after the restart every one fires, none before
// its due time.
func TestRestart(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		sig  syscall.Signal
	}{{"SIGTERM", syscall.SIGTERM}, {"SIGKILL", syscall.SIGKILL}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			testRestart(t, tt.sig)
		})
	}
}

func testRestart(t *testing.T, sig syscall.Signal) {
	const (
		topic  = "restart"
		nLater = 50 // due after the restart
		nNow   = 5  // due at once, delivered before the stop, never acked
	)
	dir := t.TempDir()
	n := startNode(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.New(ctx, n.grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Stored due time of every timer, by id.
	due := make(map[string]time.Time)
	later := time.Now().Add(2500 * time.Millisecond)
	var timers []client.Timer
	for i := range nLater {
		timers = append(timers, client.Timer{ID: fmt.Sprintf("later-%02d", i), Topic: topic,
			Due: later.Add(time.Duration(i) * 10 * time.Millisecond), Payload: []byte{byte(i)}})
	}
	for i := range nNow {
		timers = append(timers, client.Timer{ID: fmt.Sprintf("now-%d", i), Topic: topic, Payload: []byte("now")})
	}
	res, err := c.ScheduleBatch(ctx, timers)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("schedule %s: %v", r.ID, r.Err)
		}
		due[r.ID] = r.Due
	}

	// Receive the timers due now and leave them unacknowledged.
	subCtx, stopSub := context.WithCancel(ctx)
	var mu sync.Mutex
	inFlight := make(map[string]bool)
	subDone := make(chan error, 1)
	go func() {
		subDone <- c.Subscribe(subCtx, "", topic, func(_ context.Context, d *client.Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			if time.Now().Before(d.Due) || d.Fired.Before(d.Due) {
				t.Errorf("%s delivered early: due %v, fired %v", d.ID, d.Due, d.Fired)
			}
			inFlight[d.ID] = true
			return errors.New("left unacknowledged on purpose")
		})
	}()
	waitFor(t, 10*time.Second, "the timers due now to be delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for i := range nNow {
			if !inFlight[fmt.Sprintf("now-%d", i)] {
				return false
			}
		}
		return true
	})
	if st := timerState(t, n.grpcAddr, "now-0"); st != "in-flight" {
		t.Errorf("now-0 is %s before the stop, want in-flight", st)
	}

	n.stop(sig)
	stopSub()
	if err := <-subDone; err != nil {
		t.Errorf("subscription before the stop: %v", err)
	}

	n2 := startNode(t, dir)
	recs, o := subscribe(t, n2.grpcAddr, "--topic", topic, "--count", fmt.Sprint(nLater+nNow), "--max-wait", "30s")
	if o.code != 0 {
		t.Errorf("subscribe after the restart: %v", o)
	}
	seen := make(map[string]int)
	for _, r := range recs {
		seen[r.ID]++
		want, ok := due[r.ID]
		switch {
		case !ok:
			t.Errorf("unexpected delivery %+v", r.delivery)
			continue
		case !r.DueTime.Equal(want):
			t.Errorf("%s: due %v, scheduled due %v", r.ID, r.DueTime, want)
		case r.FiredTime.Before(r.DueTime):
			t.Errorf("%s fired early: due %v, fired %v", r.ID, r.DueTime, r.FiredTime)
		case r.at.Before(r.DueTime):
			t.Errorf("%s received early: due %v, received %v", r.ID, r.DueTime, r.at)
		}
	}
	var lost []string
	for id := range due {
		if seen[id] == 0 {
			lost = append(lost, id)
		}
	}
	if len(lost) > 0 {
		t.Errorf("%d of %d acknowledged timers never fired after the restart (%v): %v", len(lost), len(due), sig, lost)
	}
	n2.stop(syscall.SIGTERM)
}

// timerState returns the state timerctl get reports for id.
func timerState(t *testing.T, addr, id string) string {
	t.Helper()
	o := mustTimerctl(t, addr, "get", id, "--json")
	var v struct{ State string }
	if err := json.Unmarshal([]byte(o.stdout), &v); err != nil {
		t.Fatalf("get --json printed %q: %v", o.stdout, err)
	}
	return v.State
}

// waitFor polls cond until it holds, or fails the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStartupErrors checks that timerd refuses what it cannot run with,
// with a clear message and a non-zero exit code.
func TestStartupErrors(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := taken.Addr().String()
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	free := []string{"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}

	tests := []struct {
		name     string
		env      []string
		args     []string
		wantCode int // -1: any non-zero code
		want     []string
	}{
		{name: "unknown flag", args: []string{"--no-such-flag"}, wantCode: 2,
			want: []string{"timerd: flag provided but not defined: -no-such-flag\nRun 'timerd --help' for usage.\n"}},
		{name: "bad flag value", args: []string{"--shards", "many"}, wantCode: 2,
			want: []string{"timerd: --shards \"many\": want a whole number, 0 or more\nRun 'timerd --help' for usage.\n"}},
		{name: "bad duration", args: []string{"--max-horizon", "10q"}, wantCode: 2,
			want: []string{"timerd: --max-horizon \"10q\": want a duration such as 30s, 5m, 1h30m or 7d\n"}},
		{name: "argument", args: []string{"serve"}, wantCode: 2, want: []string{`unexpected argument "serve"`}},
		{name: "invalid config", args: []string{"--shards", "0"}, wantCode: 2, want: []string{"Shards must be in"}},
		{name: "bad environment", env: []string{"TIMERD_SHARDS=many"}, wantCode: 2,
			want: []string{"TIMERD_SHARDS"}},
		{name: "gRPC port in use", args: []string{"--grpc-addr", busy, "--http-addr", "127.0.0.1:0", "--data-dir", t.TempDir()},
			wantCode: -1, want: []string{busy, "gRPC address", "address already in use"}},
		{name: "HTTP port in use", args: []string{"--grpc-addr", "127.0.0.1:0", "--http-addr", busy, "--data-dir", t.TempDir()},
			wantCode: -1, want: []string{busy, "HTTP address", "address already in use"}},
		{name: "data dir under a file", args: append(free, "--data-dir", filepath.Join(file, "data")),
			wantCode: -1, want: []string{"data dir", filepath.Join(file, "data"), "not a directory"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := runBinaryEnv(t, tt.env, bin.timerd, tt.args...)
			if (tt.wantCode == -1 && o.code == 0) || (tt.wantCode != -1 && o.code != tt.wantCode) {
				t.Errorf("want exit code %d (-1: non-zero): %v", tt.wantCode, o)
			}
			for _, w := range tt.want {
				if !strings.Contains(o.stderr, w) {
					t.Errorf("stderr does not mention %q: %v", w, o)
				}
			}
			// The error alone: no usage, and no log of a stop of a node
			// that never served.
			if lines := strings.Split(strings.TrimSpace(o.stderr), "\n"); !strings.HasPrefix(lines[0], "timerd: ") || len(lines) > 2 || (len(lines) == 2 && !strings.HasPrefix(lines[1], "Run 'timerd --help'")) {
				t.Errorf("stderr is more than the error: %v", o)
			}
		})
	}
}

// TestDataDirInUse: a second timerd on a data directory in use exits
// with that error, and only that.
func TestDataDirInUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	n := startNode(t, dir)
	o := runBinary(t, bin.timerd, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir", dir)
	if lines := strings.Split(strings.TrimSpace(o.stderr), "\n"); o.code != 1 || len(lines) != 1 || !strings.HasPrefix(lines[0], "timerd: ") || !strings.Contains(lines[0], "in use") {
		t.Errorf("want exit code 1 and one line saying the directory is in use: %v", o)
	}
	n.stop(syscall.SIGTERM)
}

// TestStartupLog: at info, a start logs where it serves and one summary
// of what it loaded, on the embedded store and on Redis; the shards and
// Pebble keep their own lines at debug.
func TestStartupLog(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	for _, tc := range []struct {
		name  string
		extra []string
		// shards is the node's shard count.
		shards string
	}{
		{"embedded", nil, "64"},
		{"redis", []string{"--redis", "redis://" + rs.Addr()}, "64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			n := startNode(t, dir, tc.extra...)
			for i := range 3 {
				mustTimerctl(t, n.grpcAddr, "schedule", fmt.Sprint("log-", i), "--topic", "log", "--in", "1h")
			}
			n.stop(syscall.SIGTERM)
			n = startNode(t, dir, tc.extra...)
			var lines []string
			for l := range strings.Lines(n.logs.String()) {
				lines = append(lines, l)
				if logline.Parse(l)["msg"] == "ready" {
					break
				}
			}
			var got []string
			for _, l := range lines {
				if !strings.Contains(l, "msg=\"Redis ") { // what Redis's persistence makes durable is said once
					got = append(got, logline.Parse(l)["msg"])
				}
			}
			ready := logline.Parse(lines[len(lines)-1])
			if !slices.Equal(got, []string{"serving", "ready"}) {
				t.Errorf("start logged at info:\n%s\nwant serving and ready (and, on Redis, what its persistence makes durable)", strings.Join(lines, ""))
			}
			if ready["shards"] != tc.shards || ready["timers"] != "3" || ready["took"] == "" {
				t.Errorf("ready line %q, want shards=%s timers=3 took=...", lines[len(lines)-1], tc.shards)
			}
			n.stop(syscall.SIGTERM)
		})
	}
}

// TestVersion: both commands print their version, commit and Go version
// on one line and exit 0.
func TestVersion(t *testing.T) {
	t.Parallel()
	for _, b := range []struct{ name, path string }{{"timerd", bin.timerd}, {"timerctl", bin.timerctl}} {
		o := runBinary(t, b.path, "--version")
		if o.code != 0 || !strings.HasPrefix(o.stdout, b.name+" ") || !strings.Contains(o.stdout, "(commit ") ||
			!strings.Contains(o.stdout, runtime.Version()) || strings.Count(o.stdout, "\n") != 1 || o.stderr != "" {
			t.Errorf("%s --version: %v", b.name, o)
		}
	}
}

// TestJSONErrors: timerctl --json prints a JSON error object on stdout
// when the command fails, and the payload in one field, base64.
func TestJSONErrors(t *testing.T) {
	t.Parallel()
	n := startNode(t, t.TempDir())
	o := timerctl(t, n.grpcAddr, "get", "nope", "--json")
	var e struct{ Command, Code, Error string }
	if err := json.Unmarshal([]byte(o.stdout), &e); err != nil || o.code != 1 || e.Command != "get" || e.Code != "NotFound" || e.Error == "" {
		t.Errorf("get nope --json: %+v (%v): %v", e, err, o)
	}
	mustTimerctl(t, n.grpcAddr, "schedule", "p", "--topic", "t", "--in", "1h", "--payload", "cancel unpaid order 42")
	var tv struct {
		PayloadBase64 string `json:"payload_base64"`
	}
	o = mustTimerctl(t, n.grpcAddr, "get", "p", "--json")
	if err := json.Unmarshal([]byte(o.stdout), &tv); err != nil || tv.PayloadBase64 != base64.StdEncoding.EncodeToString([]byte("cancel unpaid order 42")) {
		t.Errorf("get --json payload: %+v (%v): %v", tv, err, o)
	}
	n.stop(syscall.SIGTERM)

	// The node is gone: nothing answers at its address.
	o = timerctl(t, n.grpcAddr, "get", "p")
	if want := "timerctl get: nothing answers at " + n.grpcAddr + ": is timerd running there? (connection refused)\n"; o.code != 1 || o.stderr != want {
		t.Errorf("get from a stopped node: %v\nwant stderr %q", o, want)
	}
}

// TestHelp checks the help of both binaries.
func TestHelp(t *testing.T) {
	t.Parallel()
	o := runBinary(t, bin.timerd, "--help")
	if o.code != 0 {
		t.Errorf("timerd --help: %v", o)
	}
	help := o.stdout
	for _, want := range []string{"Usage: timerd", "TIMERD_", "TIMERD_GRPC_ADDR", "--version",
		"--grpc-addr", "--http-addr", "--data-dir", "--redis", "--shards", "--node-name", "--log-level", "--shutdown-timeout",
		"--max-horizon duration\n", "(default 100y)"} {
		if !strings.Contains(help, want) {
			t.Errorf("timerd --help does not mention %q:\n%s", want, help)
		}
	}
	if strings.Contains(help, "h0m0s") || o.stderr != "" {
		t.Errorf("timerd --help: durations as Go prints them, or stderr: %v", o)
	}

	o = runBinary(t, bin.timerctl, "--help")
	if o.code != 0 || o.stderr != "" {
		t.Errorf("timerctl --help: %v", o)
	}
	for _, want := range []string{"Usage: timerctl", "schedule", "reschedule", "cancel", "get", "subscribe",
		"dead-letters list", "dead-letters replay", "status", "--addr", "--json", "TIMERD_ADDR"} {
		if !strings.Contains(o.stdout, want) {
			t.Errorf("timerctl --help does not mention %q:\n%s", want, o.stdout)
		}
	}
	if o := runBinary(t, bin.timerctl, "schedule", "--help"); o.code != 0 || !strings.Contains(o.stdout, "--payload-file") {
		t.Errorf("timerctl schedule --help: %v", o)
	}
	if o := runBinary(t, bin.timerctl, "schedule", "x", "--no-such-flag"); o.code != 2 ||
		o.stderr != "timerctl schedule: flag provided but not defined: -no-such-flag\nRun 'timerctl schedule --help' for usage.\n" {
		t.Errorf("timerctl with an unknown flag: want exit code 2 and two lines: %v", o)
	}
}
