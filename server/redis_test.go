package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/redistest"
)

// logRecorder is a slog.Handler that keeps every record, for tests that
// wait for or check what the server logged.
type logRecorder struct {
	mu   sync.Mutex
	recs []loggedRecord
}

type loggedRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	rec := loggedRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, rec)
	return nil
}

// find returns the records whose message contains msg.
func (h *logRecorder) find(msg string) []loggedRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []loggedRecord
	for _, r := range h.recs {
		if strings.Contains(r.msg, msg) {
			out = append(out, r)
		}
	}
	return out
}

// TestRedisPersistenceChecked: in Redis mode the server reads Redis's
// persistence settings (CONFIG GET, or INFO where CONFIG is refused),
// logs what durable then means, and refuses a Redis without an AOF unless
// AllowVolatileRedis.
func TestRedisPersistenceChecked(t *testing.T) {
	noConfig := []string{"--rename-command", "CONFIG", ""}
	tests := []struct {
		name     string
		args     []string // redis-server's, after redistest's defaults (AOF, everysec)
		allow    bool
		startErr string // "" when Start must succeed
		logged   string // what the log must say then
	}{
		{name: "aof everysec", logged: "about once a second"},
		{name: "aof always", args: []string{"--appendfsync", "always"}, logged: "before it answers"},
		{name: "no aof", args: []string{"--appendonly", "no"}, startErr: "appendonly no"},
		{name: "no aof allowed", args: []string{"--appendonly", "no"}, allow: true, logged: "without an append-only file"},
		{name: "config refused, aof", args: noConfig, logged: "fsync policy is not always or everysec (or not known)"},
		{name: "config refused, no aof", args: append([]string{"--appendonly", "no"}, noConfig...), startErr: "INFO persistence"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rs := redistest.Start(t, redistest.Args(tt.args...))
			logs := &logRecorder{}
			cfg := LocalConfig(t.TempDir())
			cfg.RedisURL = "redis://" + rs.Addr()
			cfg.AllowVolatileRedis = tt.allow
			cfg.Logger = slog.New(logs)
			srv, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = srv.Start(ctx)
			t.Cleanup(func() {
				if err := srv.Close(context.Background()); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			if tt.startErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.startErr) || !strings.Contains(err.Error(), "--allow-volatile-redis") {
					t.Fatalf("Start = %v, want a refusal saying %q and naming --allow-volatile-redis", err, tt.startErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			if len(logs.find(tt.logged)) == 0 {
				t.Fatalf("the log does not say %q", tt.logged)
			}
		})
	}
}

// TestSameNodeNameWaitsForLeases runs two servers with one node name on
// one Redis, as two processes started with the same --node-name would:
// the second takes no shard while the first holds them, is not ready
// meanwhile, and takes them over once the first closes; no timer is
// delivered by both.
func TestSameNodeNameWaitsForLeases(t *testing.T) {
	rs := redistest.Start(t)
	redisNode := func(c *Config) {
		c.RedisURL = "redis://" + rs.Addr()
		c.NodeName = "same"
	}
	a := start(t, "", redisNode)

	logs := &logRecorder{}
	cfgB := LocalConfig(t.TempDir())
	redisNode(&cfgB)
	cfgB.Logger = slog.New(logs)
	b, err := New(cfgB)
	if err != nil {
		t.Fatal(err)
	}
	if a.srv.Owner() == b.Owner() || !strings.HasPrefix(b.Owner(), "same/") {
		t.Fatalf("owners %q and %q: want two incarnations of %q", a.srv.Owner(), b.Owner(), "same")
	}
	started := make(chan error, 1)
	startReturned := make(chan struct{})
	go func() {
		defer close(startReturned)
		started <- b.Start(context.Background())
	}()
	t.Cleanup(func() {
		if err := b.Close(context.Background()); err != nil {
			t.Errorf("Close B: %v", err)
		}
		<-startReturned
	})

	// Wait until B has found every shard's lease held, or has started
	// (which it must not while A holds them all).
	shards := int(cfgB.Shards)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		held := map[string]bool{}
		for _, r := range logs.find("lease held by another owner") {
			held[r.attrs["shard"]] = true
			if !strings.Contains(r.attrs["err"], a.srv.Owner()) {
				t.Fatalf("B's log %q does not name the holder %q", r.attrs["err"], a.srv.Owner())
			}
		}
		if len(held) == shards {
			break
		}
		select {
		case err := <-started:
			t.Fatalf("B started (%v) while A, of the same node name, holds every shard", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("B found %d of %d shard leases held", len(held), shards)
		}
	}
	// The logs above happen after B's listeners are set, so its
	// addresses may be read now.
	if b.Ready() {
		t.Fatal("B is ready while A holds every shard")
	}
	if code, body := httpGet(t, "http://"+b.HTTPAddr()+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "0 of 4") {
		t.Fatalf("B's /readyz = %d %q, want 503 saying 0 of 4 shards", code, body)
	}
	connB, err := grpc.NewClient(b.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer connB.Close()
	envB := &env{t: t, srv: b, cfg: cfgB, conn: connB, timers: pb.NewTimerServiceClient(connB), cluster: pb.NewClusterServiceClient(connB)}

	sub := &pb.Subscription{Topic: "t", AckTimeout: durationpb.New(time.Minute)}
	subA, subB := a.subscribe(sub), envB.subscribe(sub)
	a.waitSubscribers("t", 1)
	envB.waitSubscribers("t", 1)

	delivered := map[string]string{} // timer id -> the node that delivered it
	collect := func(want int) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for len(delivered) < want {
			var d *pb.Delivery
			var by string
			var s *stream
			select {
			case d = <-subA.got:
				by, s = "A", subA
			case d = <-subB.got:
				by, s = "B", subB
			case <-timeout:
				t.Fatalf("%d of %d timers delivered", len(delivered), want)
			}
			if prev, ok := delivered[d.Id]; ok {
				t.Fatalf("timer %s delivered by %s and again by %s", d.Id, prev, by)
			}
			delivered[d.Id] = by
			s.ack(d)
		}
	}
	const n = 40
	var specs []*pb.TimerSpec
	for i := range n {
		specs = append(specs, spec(fmt.Sprintf("a%d", i), "t", 0))
	}
	a.schedule(specs...)
	collect(n)
	for id, by := range delivered {
		if by != "A" {
			t.Fatalf("timer %s delivered by %s while A holds every shard", id, by)
		}
	}
	// Every ack reached A before it closes, so that nothing is in flight
	// for B to deliver again.
	for deadline := time.Now().Add(20 * time.Second); inFlight(a.srv) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("A's acks did not land")
		}
	}
	a.stop()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("B's Start after A closed: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("B did not start after A closed")
	}
	if !b.Ready() {
		t.Fatal("B is not ready after Start")
	}
	specs = specs[:0]
	for i := range n {
		specs = append(specs, spec(fmt.Sprintf("b%d", i), "t", 0))
	}
	envB.schedule(specs...)
	collect(2 * n)
	for id, by := range delivered {
		if strings.HasPrefix(id, "b") && by != "B" {
			t.Fatalf("timer %s delivered by %s, want B", id, by)
		}
	}
	// B got A's shards and nothing A had delivered came again.
	subB.none(200 * time.Millisecond)
}

// httpGet returns the status code and body of a GET of url.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// inFlight counts the deliveries awaiting an ack on srv's shards.
func inFlight(srv *Server) int {
	n := 0
	for _, st := range srv.shardStats() {
		n += st.stats.InFlight
	}
	return n
}
