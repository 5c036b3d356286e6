package server

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// BenchmarkNodeHerdFairness is the shard's BenchmarkHerdFairness on a
// whole node, over gRPC: namespace b has 1,000 timers a second due over
// 3 s, and its p99 lateness (received minus due) is measured alone, and
// while namespace a has 500,000 timers due at one instant in the middle
// of them, spread over all the node's shards as b's are: first with a
// delivery rate for a of -herd-pace timers/s in the namespace limits
// file (the -paced figures), then with none (the -herd figures). Each
// run is a new node. Each namespace has a subscriber of its own, as two
// services would: a child process of this test binary with one
// Subscribe stream that acks what it gets. b-fired is the node's part
// of b's lateness (fired minus due), and the -late figures leave out
// b's timers due in the herd's first 100 ms to show the rest of the
// drain apart. Its peer is a third child process on the same machine:
// one time.AfterFunc per b timer, due when b's is (probe-p99 is its
// lateness, fired minus due), so each run also shows what the machine
// does to the timers of a process that holds no herd and sends nothing.
// Run it with -benchtime 1x.
func BenchmarkNodeHerdFairness(b *testing.B) {
	if spec := os.Getenv(herdSubscriberEnv); spec != "" {
		herdSubscriber(b, spec)
		return
	}
	const (
		herd   = 500_000
		rate   = 1000
		window = 3 * time.Second
	)
	for range b.N {
		alone := nodeHerdRun(b, 0, rate, window, 0)
		paced := nodeHerdRun(b, herd, rate, window, *herdPace)
		with := nodeHerdRun(b, herd, rate, window, 0)
		b.ReportMetric(ms(pct(alone.late, 50)), "b-p50-alone-ms")
		b.ReportMetric(ms(pct(alone.late, 99)), "b-p99-alone-ms")
		b.ReportMetric(ms(pct(with.late, 50)), "b-p50-herd-ms")
		b.ReportMetric(ms(pct(with.late, 99)), "b-p99-herd-ms")
		b.ReportMetric(ms(pct(with.after, 99)), "b-p99-herd-late-ms")
		b.ReportMetric(ms(pct(alone.fired, 99)), "b-fired-p99-alone-ms")
		b.ReportMetric(ms(pct(with.fired, 99)), "b-fired-p99-herd-ms")
		b.ReportMetric(ms(with.drain), "herd-drain-ms")
		b.ReportMetric(ms(pct(paced.late, 99)), "b-p99-paced-ms")
		b.ReportMetric(ms(pct(paced.after, 99)), "b-p99-paced-late-ms")
		b.ReportMetric(ms(pct(paced.fired, 99)), "b-fired-p99-paced-ms")
		b.ReportMetric(ms(paced.drain), "herd-drain-paced-ms")
		b.ReportMetric(ms(pct(alone.probe, 99)), "probe-p99-alone-ms")
		b.ReportMetric(ms(pct(paced.probe, 99)), "probe-p99-paced-ms")
		b.ReportMetric(ms(pct(with.probe, 99)), "probe-p99-herd-ms")
	}
}

// herdPace is the delivery rate of namespace a in BenchmarkNodeHerdFairness's
// paced run.
var herdPace = flag.Float64("herd-pace", 50_000, "BenchmarkNodeHerdFairness: the herd's delivery `rate` in its paced run (timers/s)")

// herdSubscriberEnv, when set, makes BenchmarkNodeHerdFairness a
// subscriber (see herdSubscriber) rather than the benchmark.
const herdSubscriberEnv = "TIMERD_BENCH_HERD_SUBSCRIBER"

// herdSubscription is what the benchmark asks of a subscriber process.
type herdSubscription struct {
	Addr, Namespace, Topic string
	Want                   int // deliveries to receive before reporting
	// Probe, when set, makes the process the benchmark's peer rather
	// than a subscriber: it opens no stream and runs runHerdProbe.
	Probe *herdProbe
}

// herdProbe asks for N timers of Go's time.AfterFunc, the first due at
// First (unix ns) and one every Every after it: b's due times.
type herdProbe struct {
	First int64
	Every time.Duration
	N     int
}

// herdReceived is what a subscriber process reports on its last line.
type herdReceived struct {
	Due, Fired, Received []int64 // unix ns of each delivery; Due and Fired for namespace b only
	Last                 int64   // unix ns: the last delivery received
}

// herdSubscriber receives and acks the deliveries that spec (a JSON
// herdSubscription) names, prints "subscribed" once its stream is open,
// and prints a herdReceived once it has them all.
func herdSubscriber(b *testing.B, spec string) {
	var sub herdSubscription
	if err := json.Unmarshal([]byte(spec), &sub); err != nil {
		b.Fatal(err)
	}
	if sub.Probe != nil {
		runHerdProbe(b, *sub.Probe)
		return
	}
	conn, err := grpc.NewClient(sub.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var (
		mu   sync.Mutex
		got  herdReceived
		n    int
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	defer wg.Wait()
	defer cancel()
	detail := sub.Namespace == "b"
	subscribeAcking(b, ctx, pb.NewTimerServiceClient(conn), &wg, &pb.Subscription{Namespace: sub.Namespace, Topic: sub.Topic, MaxInFlight: 10_000}, func(d *pb.Delivery, at time.Time) {
		mu.Lock()
		defer mu.Unlock()
		n++
		got.Last = at.UnixNano()
		if detail {
			got.Due = append(got.Due, d.GetDueTime().AsTime().UnixNano())
			got.Fired = append(got.Fired, d.GetFiredTime().AsTime().UnixNano())
			got.Received = append(got.Received, got.Last)
		}
		if n == sub.Want {
			close(done)
		}
	})
	fmt.Println("subscribed")
	<-done
	time.Sleep(100 * time.Millisecond) // the last acks
	printReceived(b, &mu, &got)
}

// runHerdProbe arms the timers p asks for, prints "subscribed", and once
// they have all fired prints a herdReceived of their due and fired
// times (in Due and Received).
func runHerdProbe(b *testing.B, p herdProbe) {
	var (
		mu   sync.Mutex
		got  = herdReceived{Due: make([]int64, 0, p.N), Received: make([]int64, 0, p.N)}
		done = make(chan struct{})
	)
	for i := range p.N {
		due := time.Unix(0, p.First).Add(time.Duration(i) * p.Every)
		time.AfterFunc(time.Until(due), func() {
			fired := time.Now()
			mu.Lock()
			defer mu.Unlock()
			got.Due = append(got.Due, due.UnixNano())
			got.Received = append(got.Received, fired.UnixNano())
			if len(got.Due) == p.N {
				close(done)
			}
		})
	}
	fmt.Println("subscribed")
	<-done
	printReceived(b, &mu, &got)
}

// printReceived prints got, which mu guards, as the process's report.
func printReceived(b *testing.B, mu *sync.Mutex, got *herdReceived) {
	mu.Lock()
	defer mu.Unlock()
	out, err := json.Marshal(got)
	if err != nil {
		b.Fatal(err)
	}
	fmt.Printf("received %s\n", out)
}

// startHerdSubscriber runs a subscriber process for sub and returns once
// its stream is open; wait returns what it received.
func startHerdSubscriber(b *testing.B, ctx context.Context, sub herdSubscription) (wait func() herdReceived) {
	b.Helper()
	who := "subscriber of " + sub.Namespace
	if sub.Probe != nil {
		who = "probe"
	}
	spec, err := json.Marshal(sub)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$", "-test.bench=^BenchmarkNodeHerdFairness$", "-test.benchtime=1x", "-test.count=1")
	cmd.Env = append(os.Environ(), herdSubscriberEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	lines.Buffer(nil, 64<<20)
	for lines.Scan() && lines.Text() != "subscribed" {
	}
	return func() herdReceived {
		var got herdReceived
		for lines.Scan() {
			if rest, ok := strings.CutPrefix(lines.Text(), "received "); ok {
				if err := json.Unmarshal([]byte(rest), &got); err != nil {
					b.Fatal(err)
				}
			}
		}
		if err := cmd.Wait(); err != nil {
			b.Fatalf("%s: %v", who, err)
		}
		return got
	}
}

type nodeHerdResult struct {
	late  []time.Duration // b's, received minus due, sorted
	after []time.Duration // late of b's timers not due in the herd's first 100 ms
	fired []time.Duration // b's, fired minus due (the node's part of late), sorted
	drain time.Duration   // from the herd's due time to its last delivery received
	probe []time.Duration // the peer's time.AfterFunc timers, fired minus due, sorted
}

// nodeHerdRun runs b's rate over window, and a's herd of timers due at
// once in its middle, delivered at pace timers/s (0: no limit).
func nodeHerdRun(b *testing.B, herd, rate int, window time.Duration, pace float64) nodeHerdResult {
	b.Helper()
	runtime.GC() // the last run's garbage is not this one's
	srv, c := benchServer(b, func(cfg *Config) {
		if pace > 0 {
			cfg.NamespaceLimitsFile = limitsFile(b, b.TempDir(), fmt.Sprintf(`{"namespaces": {"a": {"deliver_rate": %g}}}`, pace))
		}
	})
	// The node stops with the run, not with the benchmark: a node left
	// running compacts its store, which the next run would pay for.
	defer func() { _ = srv.Close(context.Background()) }()
	// Far enough ahead for the subscribers to start and the herd to be
	// scheduled first.
	at := time.Now().Add(5*time.Second + time.Duration(herd)*40*time.Microsecond).Truncate(time.Millisecond)
	nB := int(window.Seconds() * float64(rate))
	bFirst := at.Add(-window / 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Until(at)+window+2*time.Minute)
	defer cancel()
	var waitA func() herdReceived
	if herd > 0 {
		waitA = startHerdSubscriber(b, ctx, herdSubscription{Addr: srv.GRPCAddr(), Namespace: "a", Topic: "herd", Want: herd})
	}
	waitB := startHerdSubscriber(b, ctx, herdSubscription{Addr: srv.GRPCAddr(), Namespace: "b", Topic: "steady", Want: nB})
	waitProbe := startHerdSubscriber(b, ctx, herdSubscription{Probe: &herdProbe{First: bFirst.UnixNano(), Every: time.Second / time.Duration(rate), N: nB}})

	var specs []*pb.TimerSpec
	for i := range nB {
		specs = append(specs, &pb.TimerSpec{Namespace: "b", Id: fmt.Sprint("b", i), Topic: "steady",
			When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(bFirst.Add(time.Duration(i) * time.Second / time.Duration(rate)))}})
	}
	for i := range herd {
		specs = append(specs, &pb.TimerSpec{Namespace: "a", Id: fmt.Sprint("a", i), Topic: "herd", Payload: benchPayload,
			When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(at)}})
	}
	var next atomic.Int64
	var sched sync.WaitGroup
	for range 8 {
		sched.Go(func() {
			for {
				end := int(next.Add(1000))
				start := end - 1000
				if start >= len(specs) {
					return
				}
				resp, err := c.Schedule(ctx, &pb.ScheduleRequest{Timers: specs[start:min(end, len(specs))]})
				if err != nil {
					b.Error(err)
					return
				}
				for _, r := range resp.GetResults() {
					if r.GetCode() != 0 {
						b.Errorf("item %s: %s", r.GetId(), r.GetMessage())
						return
					}
				}
			}
		})
	}
	sched.Wait()
	if left := time.Until(bFirst); left < 0 {
		b.Fatalf("scheduling took %v too long: b's first timers were due before it ended", -left)
	}
	gotB := waitB()
	var r nodeHerdResult
	for i, due := range gotB.Due {
		late := time.Duration(gotB.Received[i] - due)
		r.late = append(r.late, late)
		r.fired = append(r.fired, time.Duration(gotB.Fired[i]-due))
		if d := time.Duration(due - at.UnixNano()); herd == 0 || d < 0 || d >= 100*time.Millisecond {
			r.after = append(r.after, late)
		}
	}
	gotProbe := waitProbe()
	for i, due := range gotProbe.Due {
		r.probe = append(r.probe, time.Duration(gotProbe.Received[i]-due))
	}
	slices.Sort(r.late)
	slices.Sort(r.after)
	slices.Sort(r.fired)
	slices.Sort(r.probe)
	if len(r.probe) != nB {
		b.Fatalf("%d of %d probe timers fired", len(r.probe), nB)
	}
	if len(r.late) != nB {
		b.Fatalf("%d of %d b timers arrived", len(r.late), nB)
	}
	if r.late[0] < 0 {
		b.Fatalf("a timer of b arrived %v early", -r.late[0])
	}
	if herd > 0 {
		r.drain = time.Duration(waitA().Last - at.UnixNano())
	}
	b.Logf("herd %d (pace %g/s): b p50 %v p99 %v max %v, p99 after the herd's first 100 ms %v (fired p50 %v p99 %v); herd drained in %v; peer time.AfterFunc p50 %v p99 %v max %v",
		herd, pace, pct(r.late, 50), pct(r.late, 99), r.late[len(r.late)-1], pct(r.after, 99), pct(r.fired, 50), pct(r.fired, 99), r.drain,
		pct(r.probe, 50), pct(r.probe, 99), r.probe[len(r.probe)-1])
	return r
}

// subscribeAcking opens a Subscribe stream for sub that calls got with
// each delivery and the time it arrived, and acks in batches of up to
// 256, or what came in a millisecond; it ends with ctx, and wg waits
// for its goroutines.
func subscribeAcking(b *testing.B, ctx context.Context, c pb.TimerServiceClient, wg *sync.WaitGroup, sub *pb.Subscription, got func(*pb.Delivery, time.Time)) {
	b.Helper()
	st, err := c.Subscribe(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
		b.Fatal(err)
	}
	ids := make(chan string, 10_000)
	wg.Go(func() { // receives
		defer close(ids)
		for {
			m, err := st.Recv()
			if err != nil {
				return
			}
			got(m.GetDelivery(), time.Now())
			ids <- m.GetDelivery().GetDeliveryId()
		}
	})
	wg.Go(func() { // acks
		linger := time.NewTicker(time.Millisecond)
		defer linger.Stop()
		batch := make([]string, 0, 256)
		flush := func() {
			if len(batch) > 0 {
				_ = st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: &pb.Ack{DeliveryIds: batch}}})
				batch = make([]string, 0, 256)
			}
		}
		for {
			select {
			case id, ok := <-ids:
				if !ok {
					return
				}
				if batch = append(batch, id); len(batch) == cap(batch) {
					flush()
				}
			case <-linger.C:
				flush()
			}
		}
	})
}
