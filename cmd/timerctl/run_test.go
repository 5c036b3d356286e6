package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/client"
	"github.com/timerd/timerd/internal/servertest"
	"github.com/timerd/timerd/server"
)

// startServer starts an in-process node on loopback with the embedded
// store in a temporary directory, changed by change, and stops it when
// the test ends.
func startServer(t *testing.T, change func(*server.Config)) *server.Server {
	t.Helper()
	cfg := server.LocalConfig(t.TempDir())
	if change != nil {
		change(&cfg)
	}
	return servertest.Start(t, cfg)
}

// result is the outcome of one timerctl command line.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit code %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// ctl runs timerctl against the node at addr.
func ctl(t *testing.T, addr string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(append([]string{"--addr", addr}, args...), &out, &errOut)
	return result{out.String(), errOut.String(), code}
}

// mustCtl runs timerctl and fails the test unless it exits 0.
func mustCtl(t *testing.T, addr string, args ...string) result {
	t.Helper()
	r := ctl(t, addr, args...)
	if r.code != exitOK {
		t.Fatalf("timerctl %s: %v", strings.Join(args, " "), r)
	}
	return r
}

// wantFail checks that a command line exits 1 with stderr mentioning
// every one of wants.
func wantFail(t *testing.T, r result, wants ...string) {
	t.Helper()
	if r.code != exitFailed {
		t.Errorf("want exit code 1, got %v", r)
	}
	for _, w := range wants {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr does not mention %q: %v", w, r)
		}
	}
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
	return v
}

func TestRunTimerLifecycle(t *testing.T) {
	t.Parallel()
	addr := startServer(t, nil).GRPCAddr()

	// schedule, human and JSON.
	r := mustCtl(t, addr, "schedule", "a", "--topic", "orders", "--in", "1h", "--payload", "hello")
	if !strings.HasPrefix(r.stdout, "scheduled a: due ") || !containsAny(r.stdout, "(in 59m59s)\n", "(in 1h0m0s)\n") {
		t.Errorf("schedule output: %v", r)
	}
	r = mustCtl(t, addr, "--json", "schedule", "b", "--topic", "orders", "--at", "2030-01-02T15:04:05Z", "--every", "1m")
	if got := decode[dueView](t, r.stdout); got != (dueView{ID: "b", DueTime: "2030-01-02T15:04:05Z"}) {
		t.Errorf("schedule --json = %+v", got)
	}
	// The same spec again is fine; another spec is ALREADY_EXISTS.
	mustCtl(t, addr, "schedule", "b", "--topic", "orders", "--at", "2030-01-02T15:04:05Z", "--every", "1m")
	wantFail(t, ctl(t, addr, "schedule", "b", "--topic", "other", "--at", "2030-01-02T15:04:05Z"), "AlreadyExists", `id "b"`)
	// Bad input is the server's INVALID_ARGUMENT.
	wantFail(t, ctl(t, addr, "schedule", "c", "--topic", "no spaces", "--in", "1s"), "timerctl schedule: InvalidArgument")

	// get, human and JSON.
	r = mustCtl(t, addr, "get", "a")
	for _, want := range []string{"id         a\n", "topic      orders\n", "state      pending\n", "attempts   0\n", "payload    hello\n", "interval   none (one-shot)\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("get output lacks %q:\n%s", want, r.stdout)
		}
	}
	r = mustCtl(t, addr, "get", "b", "--json")
	tv := decode[map[string]any](t, r.stdout)
	for k, want := range map[string]any{"namespace": "default", "id": "b", "topic": "orders", "state": "pending",
		"due_time": "2030-01-02T15:04:05Z", "interval": "1m0s", "payload_base64": "", "attempts": 0.0} {
		if tv[k] != want {
			t.Errorf("get --json: %s = %v, want %v (%s)", k, tv[k], want, r.stdout)
		}
	}
	if _, ok := tv["shard"]; !ok || tv["created_time"] == "" {
		t.Errorf("get --json lacks shard or created_time: %s", r.stdout)
	}

	// reschedule, human and JSON.
	r = mustCtl(t, addr, "reschedule", "a", "--in", "2h")
	if !strings.HasPrefix(r.stdout, "rescheduled a: due ") || !containsAny(r.stdout, "(in 1h59m59s)\n", "(in 2h0m0s)\n") {
		t.Errorf("reschedule output: %v", r)
	}
	r = mustCtl(t, addr, "reschedule", "a", "--at", "2031-05-06T07:08:09.5Z", "--json")
	if got := decode[dueView](t, r.stdout); got != (dueView{ID: "a", DueTime: "2031-05-06T07:08:09.5Z"}) {
		t.Errorf("reschedule --json = %+v", got)
	}
	if got := decode[timerView](t, mustCtl(t, addr, "--json", "get", "a").stdout); got.DueTime != "2031-05-06T07:08:09.5Z" {
		t.Errorf("due after reschedule = %s", got.DueTime)
	}
	wantFail(t, ctl(t, addr, "reschedule", "nope", "--in", "1s"), "NotFound")

	// Namespaces keep timers apart.
	mustCtl(t, addr, "--namespace", "tenant-1", "schedule", "a", "--topic", "t", "--in", "1h")
	if got := decode[timerView](t, mustCtl(t, addr, "get", "a", "--namespace", "tenant-1", "--json").stdout); got.Namespace != "tenant-1" || got.Topic != "t" {
		t.Errorf("get in tenant-1 = %+v", got)
	}

	// cancel: a batch with a failed item still cancels the others.
	r = ctl(t, addr, "cancel", "a", "missing", "b")
	wantFail(t, r, "timerctl cancel: missing: NotFound")
	if r.stdout != "cancelled a\ncancelled b\n" {
		t.Errorf("cancel output: %v", r)
	}
	r = ctl(t, addr, "cancel", "--json", "a", "--namespace", "tenant-1", "a")
	if r.code != exitFailed {
		t.Errorf("cancel of a cancelled id: %v", r)
	}
	got := decode[resultsView](t, r.stdout)
	if len(got.Results) != 2 || got.Results[0].Code != "OK" || got.Results[1].Code != "NotFound" || got.Results[1].Error == "" {
		t.Errorf("cancel --json = %+v", got)
	}

	// get of a cancelled timer: NOT_FOUND with the server's message.
	r = ctl(t, addr, "get", "a")
	wantFail(t, r, "timerctl get: NotFound:", `"a"`)
	if r.stdout != "" {
		t.Errorf("stdout of a failed get: %q", r.stdout)
	}
}

func TestRunPayloads(t *testing.T) {
	t.Parallel()
	addr := startServer(t, nil).GRPCAddr()
	bin := []byte{0, 1, 2, 0xff}
	file := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(file, bin, 0o600); err != nil {
		t.Fatal(err)
	}
	mustCtl(t, addr, "schedule", "file", "--topic", "p", "--in", "1h", "--payload-file", file)
	r := mustCtl(t, addr, "get", "file")
	if !strings.Contains(r.stdout, "payload (base64)  AAEC/w==\n") {
		t.Errorf("binary payload in get:\n%s", r.stdout)
	}
	if got := decode[timerView](t, mustCtl(t, addr, "get", "file", "--json").stdout); got.PayloadBase64 != "AAEC/w==" {
		t.Errorf("binary payload in get --json: %+v", got)
	}

	// Standard input, through the app's stdin.
	a := &app{stdin: strings.NewReader("line 1\nline 2\n")}
	if _, stderr, code := runApp(t, a, "--addr", addr, "schedule", "stdin", "--topic", "p", "--in", "1h", "--payload-file", "-"); code != exitOK {
		t.Fatalf("schedule from stdin: %d %s", code, stderr)
	}
	got := decode[timerView](t, mustCtl(t, addr, "get", "stdin", "--json").stdout)
	if got.PayloadBase64 != "bGluZSAxCmxpbmUgMgo=" {
		t.Errorf("stdin payload: %+v", got)
	}
	// Not printable: base64 in the table too.
	if r := mustCtl(t, addr, "get", "stdin"); !strings.Contains(r.stdout, "payload (base64)  bGluZSAxCmxpbmUgMgo=") {
		t.Errorf("multi-line payload in get:\n%s", r.stdout)
	}
}

func TestRunSubscribe(t *testing.T) {
	t.Parallel()
	addr := startServer(t, nil).GRPCAddr()
	file := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(file, []byte{0xfe, 0xff}, 0o600); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	mustCtl(t, addr, "schedule", "s1", "--topic", "sub", "--in", "0s", "--payload", "one")
	mustCtl(t, addr, "schedule", "s2", "--topic", "sub", "--in", "200ms", "--payload-file", file)
	mustCtl(t, addr, "schedule", "other", "--topic", "elsewhere", "--in", "0s")

	for round, args := range [][]string{
		{"subscribe", "--topic", "sub", "--count", "2", "--max-wait", "20s"},
		// --json changes nothing: deliveries are JSON lines anyway.
		{"--json", "subscribe", "--topic", "sub", "--count", "2", "--max-wait", "20s", "--ack-timeout", "5s", "--max-in-flight", "10"},
	} {
		text, bin := "s1", "s2"
		if round == 1 {
			text, bin = "s3", "s4"
			mustCtl(t, addr, "schedule", text, "--topic", "sub", "--in", "0s", "--payload", "one")
			mustCtl(t, addr, "schedule", bin, "--topic", "sub", "--in", "200ms", "--payload-file", file)
		}
		r := mustCtl(t, addr, args...)
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if len(lines) != 2 {
			t.Fatalf("%q: want 2 lines: %v", args, r)
		}
		byID := make(map[string]map[string]any)
		for _, l := range lines {
			d := decode[map[string]any](t, l)
			byID[d["id"].(string)] = d
			for _, k := range []string{"delivery_id", "namespace", "topic", "due_time", "fired_time", "attempt", "shard", "epoch"} {
				if _, ok := d[k]; !ok {
					t.Errorf("delivery lacks %q: %s", k, l)
				}
			}
			dueT, err1 := time.Parse(time.RFC3339Nano, d["due_time"].(string))
			fired, err2 := time.Parse(time.RFC3339Nano, d["fired_time"].(string))
			if err := errors.Join(err1, err2); err != nil {
				t.Fatal(err)
			}
			if fired.Before(dueT) || dueT.Before(before.Add(-time.Second)) {
				t.Errorf("due %v, fired %v: %s", dueT, fired, l)
			}
			// At least once: a timer may have gone to the stream of the
			// previous round while it was closing, and come back.
			if a, _ := d["attempt"].(float64); d["namespace"] != "default" || d["topic"] != "sub" || a < 1 {
				t.Errorf("delivery: %s", l)
			}
		}
		if byID[text]["payload_base64"] != "b25l" || byID[text]["payload"] != nil {
			t.Errorf("text payload: %v", byID[text])
		}
		if byID[bin]["payload_base64"] != "/v8=" || byID[bin]["payload"] != nil {
			t.Errorf("binary payload: %v", byID[bin])
		}
	}
	// The other topic's timer is untouched.
	if got := decode[timerView](t, mustCtl(t, addr, "get", "other", "--json").stdout); got.State != "pending" {
		t.Errorf("timer of another topic: %+v", got)
	}

	// --max-wait ends a subscription: a failure when --count was not met.
	r := ctl(t, addr, "subscribe", "--topic", "empty", "--count", "1", "--max-wait", "300ms")
	wantFail(t, r, "received 0 of 1 deliveries within --max-wait 300ms")
	r = mustCtl(t, addr, "subscribe", "--topic", "empty", "--max-wait", "300ms")
	if r.stdout != "" {
		t.Errorf("subscribe with nothing due printed %q", r.stdout)
	}
	// A bad topic is refused by the server; a wrong address is reported at
	// once.
	wantFail(t, ctl(t, addr, "subscribe", "--topic", "bad topic"), "InvalidArgument")
	wantFail(t, ctl(t, "127.0.0.1:1", "subscribe", "--topic", "t", "--timeout", "3s"), "timerctl subscribe: nothing answers at 127.0.0.1:1")
}

// TestRunSubscribeAcksBeforeExit checks that the ack of the last delivery
// subscribe --count prints reaches the server before timerctl exits: with
// one attempt allowed, a delivery handed back unacknowledged would become
// a dead letter instead of being gone.
func TestRunSubscribeAcksBeforeExit(t *testing.T) {
	t.Parallel()
	addr := startServer(t, func(c *server.Config) { c.Shard.MaxAttempts = 1 }).GRPCAddr()
	for i := range 10 {
		id := "ack-" + string(rune('a'+i))
		mustCtl(t, addr, "schedule", id, "--topic", "acks", "--in", "0s")
		mustCtl(t, addr, "subscribe", "--topic", "acks", "--count", "1", "--max-wait", "20s")
		if r := ctl(t, addr, "get", id); r.code != exitFailed {
			t.Errorf("round %d: timer %s is still there after its delivery was printed and acknowledged:\n%s", i, id, r.stdout)
		}
	}
}

func TestRunDeadLetters(t *testing.T) {
	t.Parallel()
	srv := startServer(t, func(c *server.Config) { c.Shard.MaxAttempts = 1 })
	addr := srv.GRPCAddr()

	r := mustCtl(t, addr, "dead-letters", "list")
	if r.stdout != "no dead letters\n" {
		t.Errorf("empty list: %v", r)
	}
	for _, id := range []string{"d1", "d2"} {
		mustCtl(t, addr, "schedule", id, "--topic", "dl", "--in", "0s", "--payload", "p-"+id)
	}
	deadLetter(t, addr, "dl", "d1", "d2")

	r = mustCtl(t, addr, "dead-letters", "list")
	if !strings.HasPrefix(r.stdout, "ID  TOPIC  ATTEMPTS  DUE") || !strings.Contains(r.stdout, "\nd1  dl     1  ") || !strings.Contains(r.stdout, "\nd2  dl     1  ") {
		t.Errorf("list: %v", r)
	}
	list := decode[deadLettersView](t, mustCtl(t, addr, "dead-letters", "list", "--json", "--topic", "dl").stdout)
	if len(list.DeadLetters) != 2 || list.More {
		t.Fatalf("list --json: %+v", list)
	}
	for _, dl := range list.DeadLetters {
		if dl.State != "dead" || dl.Attempts != 1 || dl.Reason == "" || dl.LastAttemptTime == "" || dl.PayloadBase64 != base64.StdEncoding.EncodeToString([]byte("p-"+dl.ID)) {
			t.Errorf("dead letter: %+v", dl)
		}
	}
	r = mustCtl(t, addr, "dead-letters", "list", "--limit", "1")
	if strings.Count(r.stdout, "\n") != 2 || !strings.Contains(r.stderr, "only the first 1 are shown") {
		t.Errorf("list --limit 1: %v", r)
	}
	if l := decode[deadLettersView](t, mustCtl(t, addr, "dead-letters", "list", "--limit", "1", "--json").stdout); len(l.DeadLetters) != 1 || !l.More {
		t.Errorf("list --limit 1 --json: %+v", l)
	}
	if l := decode[deadLettersView](t, mustCtl(t, addr, "dead-letters", "list", "--topic", "nothing", "--json").stdout); len(l.DeadLetters) != 0 || l.DeadLetters == nil {
		t.Errorf("list of another topic: %+v", l)
	}
	// Reschedule refuses a dead letter.
	wantFail(t, ctl(t, addr, "reschedule", "d1", "--in", "1s"), "FailedPrecondition")

	// Replay by id: one replayed, one unknown.
	r = ctl(t, addr, "dead-letters", "replay", "d1", "nope", "--in", "1h")
	wantFail(t, r, "timerctl dead-letters replay: nope: NotFound")
	if !strings.HasPrefix(r.stdout, "replayed d1: due ") || !strings.HasSuffix(r.stdout, "replayed 1 dead letter(s)\n") {
		t.Errorf("replay d1: %v", r)
	}
	// Replaying it again: it is no longer dead.
	r = ctl(t, addr, "dead-letters", "replay", "d1", "--json")
	if r.code != exitFailed {
		t.Errorf("replay of a pending timer: %v", r)
	}
	if got := decode[replayView](t, r.stdout); got.Replayed != 0 || len(got.Results) != 1 || got.Results[0].Code != "FailedPrecondition" {
		t.Errorf("replay --json of a pending timer: %+v", got)
	}
	// Replay the rest (d2) of the topic.
	if got := decode[replayView](t, mustCtl(t, addr, "dead-letters", "replay", "--topic", "dl", "--json", "--in", "1h").stdout); got.Replayed != 1 || len(got.Results) != 0 {
		t.Errorf("replay --topic --json: %+v", got)
	}
	for _, id := range []string{"d1", "d2"} {
		if got := decode[timerView](t, mustCtl(t, addr, "get", id, "--json").stdout); got.State != "pending" || got.Attempts != 0 {
			t.Errorf("%s after replay: %+v", id, got)
		}
	}
	if r := mustCtl(t, addr, "dead-letters", "list"); r.stdout != "no dead letters\n" {
		t.Errorf("list after replay: %v", r)
	}
}

// deadLetter receives the deliveries of ids on topic without acknowledging
// them, then ends the subscription: on a node that allows one attempt,
// they become dead letters.
func deadLetter(t *testing.T, addr, topic string, ids ...string) {
	t.Helper()
	c, err := client.New(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var mu sync.Mutex
	seen := make(map[string]bool)
	err = c.Subscribe(ctx, "", topic, func(_ context.Context, d *client.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		seen[d.ID] = true
		if len(seen) == len(ids) {
			cancel()
		}
		return errors.New("not acknowledged, on purpose")
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		waitFor(t, 10*time.Second, "timer "+id+" to become a dead letter", func() bool {
			r := ctl(t, addr, "get", id, "--json")
			return r.code == exitOK && decode[timerView](t, r.stdout).State == "dead"
		})
	}
}

// waitFor polls cond until it holds or the deadline passes.
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

// TestRunStatus checks status against a node with timers in every state:
// the timer counts it shows are those of the node's shard map.
func TestRunStatus(t *testing.T) {
	t.Parallel()
	srv := startServer(t, func(c *server.Config) { c.Shard.MaxAttempts = 1 })
	addr := srv.GRPCAddr()
	for _, id := range []string{"x", "y", "z"} {
		mustCtl(t, addr, "schedule", id, "--topic", "later", "--in", "1h")
	}
	mustCtl(t, addr, "schedule", "d", "--topic", "dl", "--in", "0s")
	deadLetter(t, addr, "dl", "d")
	mustCtl(t, addr, "schedule", "h", "--topic", "held", "--in", "0s")
	holdInFlight(t, addr, "held")

	// Where each timer lives, and so what every shard should count.
	type counts struct{ timers, inFlight, dead uint64 }
	want := make(map[uint32]counts)
	for id, c := range map[string]counts{"x": {1, 0, 0}, "y": {1, 0, 0}, "z": {1, 0, 0}, "d": {1, 0, 1}, "h": {1, 1, 0}} {
		tv := decode[timerView](t, mustCtl(t, addr, "get", id, "--json").stdout)
		w := want[tv.Shard]
		want[tv.Shard] = counts{w.timers + c.timers, w.inFlight + c.inFlight, w.dead + c.dead}
	}

	r := mustCtl(t, addr, "status", "--shards")
	for _, line := range []string{
		"MEMBER  GRPC ADDRESS",
		"shards: 4 (map version ", ": 4 served where assigned, 0 moving, 0 without an owner\n",
		"SHARD  ASSIGNED  OWNER  EPOCH  STATE    TIMERS  IN FLIGHT  DEAD\n",
	} {
		if !strings.Contains(r.stdout, line) {
			t.Errorf("status lacks %q:\n%s", line, r.stdout)
		}
	}
	for _, section := range []string{"moving:", "without an owner:"} {
		if strings.Contains(r.stdout, section) {
			t.Errorf("status of a settled node lists %q:\n%s", section, r.stdout)
		}
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if fields := strings.Fields(lines[1]); !slices.Equal(fields, []string{"local", addr, "alive", "active", "4", "4", "4", "5", "1", "1"}) {
		t.Errorf("member line %q:\n%s", fields, r.stdout)
	}
	if fields := strings.Fields(lines[len(lines)-1]); !slices.Equal(fields, []string{"total", "5", "1", "1"}) {
		t.Errorf("total line %q:\n%s", fields, r.stdout)
	}

	v := decode[statusView](t, mustCtl(t, addr, "status", "--json").stdout)
	if len(v.Members) != 1 {
		t.Fatalf("members: %+v", v.Members)
	}
	if m := v.Members[0]; m.Name != "local" || m.GRPCAddr != addr || m.State != "alive" || m.NodeState != "active" ||
		m.Assigned != 4 || m.Owned != 4 || m.Serving != 4 || m.Timers != 5 || m.InFlight != 1 || m.Dead != 1 ||
		srv.Owner() != "local/"+m.Incarnation {
		t.Errorf("member: %+v (owner %s)", m, srv.Owner())
	}
	if v.ShardCount != 4 || len(v.Shards) != 4 || v.Settled != 4 || len(v.Moving) != 0 || len(v.Unowned) != 0 {
		t.Errorf("shard map: %+v", v)
	}
	for _, s := range v.Shards {
		if s.Owner != "local" || s.Assigned != "local" || s.State != "serving" || s.Epoch == 0 {
			t.Errorf("shard: %+v", s)
		}
		if got := (counts{s.Timers, s.InFlight, s.Dead}); got != want[s.Shard] {
			t.Errorf("shard %d counts %+v, want %+v", s.Shard, got, want[s.Shard])
		}
	}
}

// holdInFlight subscribes to topic and holds the first delivery it
// receives unacknowledged until the test ends.
func holdInFlight(t *testing.T, addr, topic string) {
	t.Helper()
	c, err := client.New(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan struct{}, 1)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		_ = c.Subscribe(ctx, "", topic, func(ctx context.Context, _ *client.Delivery) error {
			got <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}, client.WithAckTimeout(time.Minute))
	}()
	t.Cleanup(func() {
		cancel()
		<-ended
		_ = c.Close()
	})
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery to hold within 10s")
	}
}

// TestRunJSONErrors: with --json, every command that fails prints one
// JSON error object on stdout, whatever failed: the call, the command
// line or the connection.
func TestRunJSONErrors(t *testing.T) {
	t.Parallel()
	addr := startServer(t, nil).GRPCAddr()
	down := "127.0.0.1:1"
	for _, tc := range []struct {
		name     string
		addr     string
		args     []string
		wantCode int
		want     errorView
	}{
		{"get of an unknown id", addr, []string{"get", "nope", "--json"}, exitFailed,
			errorView{Command: "get", Code: "NotFound", Error: `NotFound: timer not found: namespace "default" id "nope"`}},
		{"reschedule of an unknown id", addr, []string{"--json", "reschedule", "nope", "--in", "1m"}, exitFailed,
			errorView{Command: "reschedule", Code: "NotFound"}},
		{"schedule refused", addr, []string{"--json", "schedule", "a", "--topic", "no spaces", "--in", "1s"}, exitFailed,
			errorView{Command: "schedule", Code: "InvalidArgument"}},
		{"bad duration", addr, []string{"schedule", "a", "--topic", "t", "--in", "10q", "--json"}, exitUsage,
			errorView{Command: "schedule", Code: "Usage", Error: `--in "10q": want a duration such as 30s, 5m, 1h30m or 7d`}},
		{"unknown flag before --json", addr, []string{"get", "a", "--frob", "--json"}, exitUsage,
			errorView{Command: "get", Code: "Usage", Error: "flag provided but not defined: -frob"}},
		{"unknown command", addr, []string{"--json", "frob"}, exitUsage,
			errorView{Command: "", Code: "Usage", Error: `unknown command "frob"`}},
		{"payload file missing", addr, []string{"--json", "schedule", "a", "--topic", "t", "--in", "1s", "--payload-file", "/nonexistent/p"}, exitFailed,
			errorView{Command: "schedule", Code: "Unknown"}},
		{"node down", down, []string{"status", "--json"}, exitFailed,
			errorView{Command: "status", Code: "Unavailable", Error: "nothing answers at 127.0.0.1:1: is timerd running there? (connection refused)"}},
		{"subscribe to a node down", down, []string{"subscribe", "--topic", "t", "--json", "--timeout", "3s"}, exitFailed,
			errorView{Command: "subscribe", Code: "Unavailable"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ctl(t, tc.addr, tc.args...)
			if r.code != tc.wantCode {
				t.Errorf("exit code %d, want %d: %v", r.code, tc.wantCode, r)
			}
			if strings.Count(r.stdout, "\n") != 1 {
				t.Fatalf("stdout is not one JSON line: %v", r)
			}
			got := decode[errorView](t, r.stdout)
			if tc.want.Error == "" {
				tc.want.Error = got.Error
			}
			if got != tc.want || got.Error == "" {
				t.Errorf("JSON error %+v, want %+v", got, tc.want)
			}
			if !strings.Contains(r.stderr, got.Error) {
				t.Errorf("stderr does not say %q too: %v", got.Error, r)
			}
		})
	}
	// A batch reports its items in its own JSON, and nothing else.
	r := ctl(t, addr, "cancel", "nope", "--json")
	if got := decode[resultsView](t, r.stdout); r.code != exitFailed || len(got.Results) != 1 || got.Results[0].Code != "NotFound" {
		t.Errorf("cancel nope --json: %v", r)
	}
}

// TestRunUnreachable: a node that is down is named as such, with the
// cause after it, and not as a raw transport error.
func TestRunUnreachable(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"get", "x"}, {"schedule", "x", "--topic", "t", "--in", "1s"}, {"status"}, {"dead-letters", "list"}} {
		r := ctl(t, "127.0.0.1:1", args...)
		want := "timerctl " + strings.Join(slices.DeleteFunc(slices.Clone(args[:min(2, len(args))]), func(s string) bool { return s == "x" }), " ") +
			": nothing answers at 127.0.0.1:1: is timerd running there? (connection refused)\n"
		if r.code != exitFailed || r.stderr != want {
			t.Errorf("timerctl %q: %v\nwant stderr %q", args, r, want)
		}
	}
}

// TestRunHumanDurations: --in takes days, and a bad duration names the
// format it wants, on one line with the way to help.
func TestRunHumanDurations(t *testing.T) {
	t.Parallel()
	addr := startServer(t, nil).GRPCAddr()
	before := time.Now()
	r := mustCtl(t, addr, "--json", "schedule", "d", "--topic", "t", "--in", "2d")
	due, err := time.Parse(time.RFC3339Nano, decode[dueView](t, r.stdout).DueTime)
	if err != nil || due.Before(before.Add(48*time.Hour)) || due.After(time.Now().Add(48*time.Hour)) {
		t.Errorf("--in 2d: due %v (%v), want 48h from now", due, err)
	}
	r = ctl(t, addr, "schedule", "e", "--topic", "t", "--in", "10q")
	want := "timerctl schedule: --in \"10q\": want a duration such as 30s, 5m, 1h30m or 7d\nRun 'timerctl schedule --help' for usage.\n"
	if r.code != exitUsage || r.stderr != want || r.stdout != "" {
		t.Errorf("--in 10q: %v\nwant stderr %q", r, want)
	}
}

// TestRunVersion: --version prints the build, as a line or as JSON.
func TestRunVersion(t *testing.T) {
	r := ctl(t, "127.0.0.1:1", "--version")
	if r.code != exitOK || !strings.HasPrefix(r.stdout, "timerctl ") || !strings.Contains(r.stdout, runtime.Version()) || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("--version: %v", r)
	}
	r = ctl(t, "127.0.0.1:1", "--version", "--json")
	if b := decode[map[string]any](t, r.stdout); r.code != exitOK || b["version"] == "" || b["go_version"] != runtime.Version() {
		t.Errorf("--version --json: %v", r)
	}
}
