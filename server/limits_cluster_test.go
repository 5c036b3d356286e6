package server_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/clustertest"
	"github.com/timerd/timerd/server"
)

// TestClusterNamespaceLimits: on three nodes, each node admits its share
// of a namespace's limits (the fraction of the shards it serves), so the
// cluster as a whole admits at most the limit plus one per member,
// whichever node the requests go to; the refused items say when to retry.
// A namespace the limits file names is counted the same way against its
// own limit.
func TestClusterNamespaceLimits(t *testing.T) {
	const (
		members    = 3
		maxPending = 300
		rate       = 200
	)
	ctx := context.Background()
	var c *clustertest.Cluster
	schedule := func(node int, ns, prefix string, n int) (ok, refused int) {
		t.Helper()
		tc := pb.NewTimerServiceClient(dialNode(t, c.Node(node).GRPCAddr()))
		var specs []*pb.TimerSpec
		for i := range n {
			specs = append(specs, &pb.TimerSpec{Id: fmt.Sprint(prefix, i), Topic: "t", When: &pb.TimerSpec_Delay{Delay: durationpb.New(time.Hour)}})
		}
		resp, err := tc.Schedule(ctx, &pb.ScheduleRequest{Namespace: ns, Timers: specs})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetResults() {
			switch codes.Code(r.GetCode()) {
			case codes.OK:
				ok++
			case codes.ResourceExhausted:
				if r.GetRetryDelay().AsDuration() <= 0 {
					t.Fatalf("refused item %s has no retry delay: %q", r.GetId(), r.GetMessage())
				}
				refused++
			default:
				t.Fatalf("item %s: code %d %q", r.GetId(), r.GetCode(), r.GetMessage())
			}
		}
		return ok, refused
	}

	// The schedule rate: one burst (one second's worth) through one node.
	c = clustertest.Start(t, members, func(cfg *server.Config) { cfg.Limits.ScheduleRate = rate })
	began := time.Now()
	ok, refused := schedule(0, "rated", "r", 3*rate)
	elapsed := time.Since(began)
	t.Logf("rate %d/s: %d of %d admitted at once through one node of %d, %d refused (%v)", rate, ok, 3*rate, members, refused, elapsed)
	// The buckets refill while the call runs.
	if most := rate + members + int(rate*elapsed.Seconds()) + 1; ok > most || ok < rate/2 {
		t.Fatalf("%d admitted at once, want between %d and %d", ok, rate/2, most)
	}

	// Pending timers: batches through every node in turn.
	c = clustertest.Start(t, members, func(cfg *server.Config) { cfg.Limits.MaxPending = maxPending })
	total := 0
	for round := range 6 {
		ok, _ := schedule(round%members, "held", fmt.Sprintf("p%d-", round), 100)
		total += ok
	}
	t.Logf("max pending %d: %d timers admitted of 600 sent through all %d nodes", maxPending, total, members)
	if total > maxPending+members || total < maxPending/2 {
		t.Fatalf("%d timers admitted, want between %d and %d", total, maxPending/2, maxPending+members)
	}
	// What the nodes hold is what they admitted.
	held := 0
	for i := range members {
		tc := pb.NewTimerServiceClient(dialNode(t, c.Node(i).GRPCAddr()))
		for round := range 6 {
			if round%members != i {
				continue
			}
			for k := range 100 {
				if _, err := tc.Get(ctx, &pb.GetRequest{Namespace: "held", Id: fmt.Sprintf("p%d-%d", round, k)}); err == nil {
					held++
				}
			}
		}
	}
	if held != total {
		t.Fatalf("the cluster holds %d timers of the namespace, %d were admitted", held, total)
	}

	// The limits file: every node takes its share of a namespace's own
	// limit as it does of the flags'.
	const smallPending = 60
	path := filepath.Join(t.TempDir(), "ns-limits.json")
	if err := os.WriteFile(path, fmt.Appendf(nil, `{"namespaces": {"small": {"max_pending": %d}, "unlimited": {"max_pending": 0}}}`, smallPending), 0o600); err != nil {
		t.Fatal(err)
	}
	c = clustertest.Start(t, members, func(cfg *server.Config) {
		cfg.Limits.MaxPending = maxPending
		cfg.NamespaceLimitsFile = path
	})
	for _, tc := range []struct {
		ns       string
		min, max int
	}{
		{"small", smallPending / 2, smallPending + members},
		{"unlimited", 600, 600},
		{"flags", maxPending / 2, maxPending + members},
	} {
		total := 0
		for round := range 6 {
			ok, _ := schedule(round%members, tc.ns, fmt.Sprintf("p%d-", round), 100)
			total += ok
		}
		t.Logf("namespace %s: %d timers admitted of 600 sent through all %d nodes", tc.ns, total, members)
		if total < tc.min || total > tc.max {
			t.Fatalf("namespace %s: %d timers admitted, want between %d and %d", tc.ns, total, tc.min, tc.max)
		}
	}
}
