package server_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
	var missing []string
	for i := range members {
		tc := pb.NewTimerServiceClient(dialNode(t, c.Node(i).GRPCAddr()))
		for round := range 6 {
			if round%members != i {
				continue
			}
			for k := range 100 {
				if id := fmt.Sprintf("p%d-%d", round, k); found(t, tc, "held", id) {
					held++
				} else {
					missing = append(missing, id)
				}
			}
		}
	}
	if held != total {
		t.Fatalf("the cluster holds %d timers of the namespace, %d were admitted (not found: %v)", held, total, missing)
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

// found reports whether the cluster holds timer id of ns, asking through
// tc. A shard that is moving answers UNAVAILABLE (on a loaded machine the
// membership may flap), which is asked again, for at most 30s; any other
// error fails the test.
func found(t *testing.T, tc pb.TimerServiceClient, ns, id string) bool {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := tc.Get(context.Background(), &pb.GetRequest{Namespace: ns, Id: id})
		switch code := status.Code(err); {
		case code == codes.OK:
			return true
		case code == codes.NotFound:
			return false
		case code != codes.Unavailable || time.Now().After(deadline):
			t.Fatalf("Get %s/%s: %v", ns, id, err)
		}
		t.Logf("Get %s/%s: %v; asking again", ns, id, err)
		time.Sleep(100 * time.Millisecond)
	}
}
