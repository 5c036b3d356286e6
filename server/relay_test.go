package server_test

import (
	"context"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/client"
	"github.com/timerd/timerd/internal/clustertest"
	"github.com/timerd/timerd/internal/netfault"
	"github.com/timerd/timerd/server"
)

// subscriberKind is a way a consumer subscribes to a cluster: the
// subscribers of the relay tests run every scenario both ways.
type subscriberKind struct {
	name string
	// start subscribes to topic through node 0 and returns what it
	// receives.
	start func(t testing.TB, c *clustertest.Cluster, topic string) *clustertest.Collector
	// relays is whether the nodes relay to it.
	relays bool
}

var subscriberKinds = []subscriberKind{
	// A plain gRPC client that knows one address: node 0 relays every
	// other node's deliveries to it.
	{"one-address", func(_ testing.TB, c *clustertest.Cluster, topic string) *clustertest.Collector {
		return c.CollectVia("default", topic, c.Node(0).GRPCAddr())
	}, true},
	// The Go client: a direct stream to every member, no relay.
	{"go-client", goClientSubscriber, false},
}

// goClientSubscriber subscribes to topic with the Go client, seeded with
// node 0, and records what it receives until the test ends.
func goClientSubscriber(t testing.TB, c *clustertest.Cluster, topic string) *clustertest.Collector {
	col := c.Recorder("default", topic)
	cl, err := client.New(context.Background(), c.Node(0).GRPCAddr(), client.WithRefreshInterval(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		err := cl.Subscribe(ctx, "default", topic, func(_ context.Context, d *client.Delivery) error {
			col.Record(clustertest.Delivery{ID: d.ID, Due: d.Due, Received: time.Now(), Attempt: d.Attempt, Epoch: d.Epoch, Shard: d.Shard})
			return nil
		}, client.WithMaxInFlight(1000), client.WithAckTimeout(5*time.Second), client.WithReconnectBackoff(20*time.Millisecond, 500*time.Millisecond))
		if err != nil {
			t.Errorf("Subscribe: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		_ = cl.Close()
	})
	return col
}

// TestRelaySubscribers: a subscriber connected through one node of three
// receives every timer scheduled through another node, whatever shard
// it is on, none early and none missing, also when a node other than
// its own is killed midway, or a fourth one joins. A plain gRPC
// subscriber gets the other nodes' deliveries relayed by its node; the
// Go client's direct streams open no relay.
func TestRelaySubscribers(t *testing.T) {
	n := 30_000
	if testing.Short() || raceEnabled {
		n = 10_000
	}
	scenarios := []struct {
		name string
		n    int
		// during runs while the timers fire.
		during func(t *testing.T, c *clustertest.Cluster)
	}{
		{"steady", n, nil},
		{"kill", n / 3, func(t *testing.T, c *clustertest.Cluster) { c.Kill(2) }},
		{"join", n / 3, func(t *testing.T, c *clustertest.Cluster) { c.Add() }},
	}
	for _, kind := range subscriberKinds {
		for _, sc := range scenarios {
			t.Run(kind.name+"/"+sc.name, func(t *testing.T) {
				c := clustertest.Start(t, 3, patientAttempts)
				topic := "relay-" + sc.name
				col := kind.start(t, c, topic)
				s := newScheduler(t, c.Node(1).GRPCAddr(), topic)
				s.schedule("t", sc.n, time.Now().Add(time.Second), 4*time.Second)
				if sc.during != nil {
					time.Sleep(1500 * time.Millisecond)
					sc.during(t, c)
					c.WaitStable()
				}
				due := s.acknowledged()
				col.Wait(due, 90*time.Second)
				// A starved machine can run a timer out of attempts: say so
				// beside a loss.
				t.Logf("dead letters: %d", deadLetters(t, c.Node(0).GRPCAddr(), topic))
				v := check(t, col, due, time.Second)
				if v.Duplicates > 0 {
					t.Logf("%d duplicates", v.Duplicates)
				}
				relayed := c.MetricSum("timerd_relayed_deliveries_total")
				t.Logf("relayed deliveries %v, relayed acks %v, given back %v", relayed,
					c.MetricSum("timerd_relayed_acks_total"), c.MetricSum("timerd_relayed_releases_total"))
				switch {
				case kind.relays && relayed == 0:
					t.Error("no delivery came on a relay, yet most shards live on other nodes")
				case !kind.relays && relayed != 0:
					t.Errorf("%v deliveries relayed to direct streams", relayed)
				}
			})
		}
	}
}

// TestRelayBreaks: when the relays of the subscriber's node break (its
// connections to its peers are cut, twice, while timers fire), every
// timer still arrives, none early: the owners take back what the relays
// held and deliver it again on the relays opened anew.
func TestRelayBreaks(t *testing.T) {
	c := clustertest.Start(t, 3, patientAttempts)
	col := c.CollectVia("default", "cut", c.Node(0).GRPCAddr())
	s := newScheduler(t, c.Node(1).GRPCAddr(), "cut")
	s.schedule("t", 10_000, time.Now().Add(time.Second), 4*time.Second)
	opened := func() float64 { return c.MetricSum("timerd_relays_opened_total") }
	first := opened()
	for range 2 {
		time.Sleep(1500 * time.Millisecond)
		c.Node(0).CutPeers()
	}
	v := check(t, col, s.acknowledged(), 60*time.Second)
	t.Logf("%d duplicates after two cuts; relays opened %v times, %v before the cuts", v.Duplicates, opened(), first)
	if opened() < first+4 { // each cut breaks the relays to both peers
		t.Errorf("relays opened %v times after two cuts, %v before: the cuts broke none", opened(), first)
	}
}

// TestRelaySlowSubscriber: a one-address subscriber on node 0 that takes
// deliveries and never acks them, nor reads after its first, does not
// hold up the timers of the other nodes' shards: a subscriber of the same
// topic on node 1 receives every timer, and none becomes a dead letter.
func TestRelaySlowSubscriber(t *testing.T) {
	c := clustertest.Start(t, 3, patientAttempts)
	stalled := openStalled(t, c.Node(0).GRPCAddr(), "slow")
	col := c.CollectVia("default", "slow", c.Node(1).GRPCAddr())
	s := newScheduler(t, c.Node(2).GRPCAddr(), "slow")
	s.schedule("t", 5_000, time.Now().Add(time.Second), 3*time.Second)
	due := s.acknowledged()
	col.Wait(due, 90*time.Second)
	if dead := deadLetters(t, c.Node(0).GRPCAddr(), "slow"); dead > 0 {
		t.Errorf("%d dead letters", dead)
	}
	v := check(t, col, due, time.Second)
	t.Logf("%d duplicates; the stalled subscriber read %d", v.Duplicates, stalled())
}

// openStalled opens a one-address Subscribe stream on the node at addr
// that reads one delivery, then neither reads nor acks. It returns how
// many it read.
func openStalled(t *testing.T, addr, topic string) func() int {
	t.Helper()
	tc := pb.NewTimerServiceClient(dialNode(t, addr))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := tc.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sub := &pb.Subscription{Topic: topic, MaxInFlight: 200, AckTimeout: durationpb.New(2 * time.Second)}
	if err := st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	read := 0
	go func() { // ends with ctx, at the end of the test
		if _, err := st.Recv(); err == nil {
			mu.Lock()
			read++
			mu.Unlock()
		}
		<-ctx.Done()
	}()
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return read
	}
}

// deadLetters counts the dead letters of topic through the node at addr
// (up to 1,000), or -1 when the node cannot say now.
func deadLetters(t *testing.T, addr, topic string) int {
	t.Helper()
	tc := pb.NewTimerServiceClient(dialNode(t, addr))
	resp, err := tc.ListDeadLetters(context.Background(), &pb.ListDeadLettersRequest{Topic: topic, PageSize: 1000})
	if err != nil {
		t.Logf("listing the dead letters: %v", err)
		return -1
	}
	return len(resp.GetDeadLetters())
}

// patientAttempts gives a timer 10 attempts instead of LocalConfig's 3:
// on a machine starved enough for acks to come after their ack timeout a
// few times, the relay tests judge delivery, not the attempt budget.
func patientAttempts(c *server.Config) { c.Shard.MaxAttempts = 10 }

// TestRelayStopsWithSubscribers: relays open when a one-address
// subscriber comes and close when the last one leaves; the Go client's
// streams and a stream that sets local open none; and a node that
// closes leaves no relay goroutine behind.
func TestRelayStopsWithSubscribers(t *testing.T) {
	c := clustertest.Start(t, 3, patientAttempts)
	open := func() float64 { return c.MetricSum("timerd_relays_open") }
	waitFor := func(what string, want float64) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); open() != want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v relays open, want %v", what, open(), want)
			}
		}
	}
	tc := pb.NewTimerServiceClient(dialNode(t, c.Node(0).GRPCAddr()))
	subscribe := func(ctx context.Context, sub *pb.Subscription) pb.TimerService_SubscribeClient {
		t.Helper()
		st, err := tc.Subscribe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
			t.Fatal(err)
		}
		return st
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	local := subscribe(ctx, &pb.Subscription{Topic: "a", Local: true})
	goClientSubscriber(t, c, "a")
	time.Sleep(300 * time.Millisecond) // relays would have opened by now
	waitFor("direct streams only", 0)

	ctx1, cancel1 := context.WithCancel(ctx)
	subscribe(ctx1, &pb.Subscription{Topic: "a"})
	ctx2, cancel2 := context.WithCancel(ctx)
	subscribe(ctx2, &pb.Subscription{Topic: "a"})
	waitFor("two one-address subscribers of a topic", 2) // one per peer
	cancel1()
	time.Sleep(300 * time.Millisecond)
	waitFor("one left", 2)
	cancel2()
	waitFor("none left", 0)

	// Release with unsent is for relays only.
	if err := local.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Release{Release: &pb.Release{DeliveryIds: []string{"x"}, Unsent: true}}}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := local.Recv()
		if err == io.EOF || err != nil && status.Code(err) != codes.InvalidArgument {
			t.Fatalf("a client's unsent release: %v, want INVALID_ARGUMENT", err)
		}
		if err != nil {
			t.Logf("a client's unsent release: %v", err)
			break
		}
	}

	// Relays on a closing node end with it (its Close waits for their
	// goroutines), and so do their streams on the peers: only the Go
	// client's streams to nodes 1 and 2 are left.
	subscribe(ctx, &pb.Subscription{Topic: "b"})
	waitFor("a subscriber of b", 2)
	c.Leave(0)
	subs := func() float64 { return c.MetricSum("timerd_subscribers") }
	for deadline := time.Now().Add(15 * time.Second); subs() != 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%v streams on nodes 1 and 2 after node 0 closed, want the Go client's 2", subs())
		}
	}
}

// TestRelayAckTimeoutFollowsSubscribers: a one-address subscriber that
// joins a topic whose relays are open already, asking a longer ack
// timeout than theirs (and too little credit to reopen them), keeps the
// deliveries relayed to it for its own ack timeout: the owner does not
// take them back after the relay's shorter one and send them again to the
// topic's other subscriber while this one still holds them.
func TestRelayAckTimeoutFollowsSubscribers(t *testing.T) {
	c := clustertest.Start(t, 2, patientAttempts)
	const topic = "patient"
	quick := c.CollectVia("default", topic, c.Node(0).GRPCAddr()) // credit 1000, ack timeout 5s, acks at once
	deadline := time.Now().Add(30 * time.Second)
	for c.MetricSum("timerd_relays_opened_total") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("node 0 opened no relay to node 1 within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The patient subscriber: 400 more credit (the relay's stays within a
	// factor of two), a minute's ack timeout, and no ack ever.
	tc := pb.NewTimerServiceClient(dialNode(t, c.Node(0).GRPCAddr()))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := tc.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sub := &pb.Subscription{Topic: topic, MaxInFlight: 400, AckTimeout: durationpb.New(time.Minute)}
	if err := st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	held := make(map[string]*pb.Delivery) // by timer id, guarded by mu
	go func() {                           // ends with ctx, at the end of the test
		for {
			m, err := st.Recv()
			if err != nil {
				return
			}
			mu.Lock()
			held[m.GetDelivery().GetId()] = m.GetDelivery()
			mu.Unlock()
		}
	}()
	s := newScheduler(t, c.Node(1).GRPCAddr(), topic)
	s.schedule("t", 2000, time.Now().Add(500*time.Millisecond), time.Second)
	due := s.acknowledged()
	received := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for id := range due {
			if _, ok := held[id]; ok || len(quick.Got(id)) > 0 {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(60 * time.Second); received() < len(due) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	// Past the relay's ack timeout (5s) and a redelivery's backoff, well
	// within the patient subscriber's minute.
	time.Sleep(8 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	again := 0
	for id, d := range held {
		for _, q := range quick.Got(id) {
			if q.Attempt > d.GetAttempt() {
				again++
				if again <= 5 {
					t.Errorf("%s, held unacked by the patient subscriber (attempt %d, shard %d), sent again to the other one (attempt %d) after %v",
						id, d.GetAttempt(), d.GetShard(), q.Attempt, q.Received.Sub(d.GetFiredTime().AsTime()).Round(time.Millisecond))
				}
				break
			}
		}
	}
	t.Logf("the patient subscriber holds %d deliveries; %d of them were sent again elsewhere", len(held), again)
	if len(held) == 0 {
		t.Error("the patient subscriber received nothing: the test tested nothing")
	}
}

// TestRelayOfDeadPeer: a node whose relay to an owner is held open but
// silent (a partition, or a paused process: its TCP connections stay up
// and nothing closes them) and which the owner's membership declares
// dead is handed no delivery from then on: the owner ends that relay
// stream, takes back what it held, and sends every timer due later to a
// subscriber that can take it, at its first attempt, not one ack
// timeout later.
func TestRelayOfDeadPeer(t *testing.T) {
	// Node 0 advertises a proxy in front of its gRPC port, so that node
	// 1's relay to it runs through the proxy, which can hold it.
	port, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr := port.Addr().String()
	port.Close()
	proxy, err := netfault.Listen(grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	c := clustertest.Start(t, 2, patientAttempts, func(cfg *server.Config) {
		if cfg.NodeName == "node-0" {
			cfg.GRPCAddr, cfg.AdvertiseAddr = grpcAddr, proxy.Addr()
		}
	})
	t.Cleanup(func() { proxy.Close() })
	local := c.Recorder("default", "held")
	local.Follow(c.Node(0).GRPCAddr())
	relayed := c.CollectVia("default", "held", c.Node(1).GRPCAddr())
	defer relayed.Close()
	for deadline := time.Now().Add(15 * time.Second); c.MetricSum("timerd_relays_open") < 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("node 1 opened no relay to node 0")
		}
	}
	s := newScheduler(t, c.Node(0).GRPCAddr(), "held")
	// Due around the cut, for the log: these may be in flight on the
	// held relay when it is cut.
	s.schedule("around", 2_000, time.Now().Add(500*time.Millisecond), 3*time.Second)
	time.Sleep(time.Second)
	proxy.Pause()
	c.Kill(1)
	cut := time.Now()
	c.WaitStable() // node 0 has declared node 1 dead and serves every shard
	declared := time.Since(cut)

	// Due once node 0 knows node 1 is dead: none may go to its relay.
	s.schedule("after", 2_000, time.Now().Add(500*time.Millisecond), 2*time.Second)
	due := make(map[string]time.Time)
	for id, at := range s.acknowledged() {
		if strings.HasPrefix(id, "after-") {
			due[id] = at
		}
	}
	local.Wait(due, 60*time.Second)
	// Check counts the timers due around the cut as unexpected.
	if v := local.Check(due); v.Lost > 0 || v.Early > 0 {
		t.Fatalf("verdict: %v", v)
	}
	retried := 0
	var late []time.Duration
	for id, at := range due {
		got := local.Got(id)
		late = append(late, got[0].Received.Sub(at))
		if got[0].Attempt > 1 {
			retried++
		}
	}
	// The timers due around the cut that reached node 0's subscriber:
	// those handed to the held relay came back when node 0 ended it.
	var around []time.Duration
	for id, at := range s.acknowledged() {
		if got := local.Got(id); strings.HasPrefix(id, "around-") && len(got) > 0 && got[0].Received.After(cut) {
			around = append(around, got[0].Received.Sub(at))
		}
	}
	slices.Sort(late)
	slices.Sort(around)
	t.Logf("node 1 declared dead %v after the cut; %v relays of a departed peer ended", declared.Round(time.Millisecond),
		c.MetricSum("timerd_peer_relays_ended_total"))
	t.Logf("due after: lateness p50 %v, p99 %v, max %v over %d timers, %d at attempt > 1",
		late[len(late)/2], late[len(late)*99/100], late[len(late)-1], len(late), retried)
	if len(around) > 0 {
		t.Logf("due around the cut, received by node 0's subscriber after it: %d, lateness p50 %v, max %v",
			len(around), around[len(around)/2], around[len(around)-1])
	}
	if retried > 0 {
		t.Errorf("%d of the timers due after node 1 was declared dead first went to its held relay (attempt > 1)", retried)
	}
	if c.MetricSum("timerd_peer_relays_ended_total") < 1 {
		t.Errorf("node 0 ended no relay stream of node 1 after declaring it dead")
	}
}
