package server

import (
	"context"
	"fmt"
	"slices"
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
// 3 s, and its p99 lateness (received minus due) is measured alone and
// while namespace a has 500,000 timers due at one instant in the middle
// of them, spread over all the node's shards as b's are. Each has a
// Subscribe stream, on a connection of its own, that acks what it gets;
// the client runs in the same process, so the herd's receiving and
// acking share the node's CPU. b-fired is the shards' part of b's
// lateness (fired minus due). Run it with -benchtime 1x.
func BenchmarkNodeHerdFairness(b *testing.B) {
	const (
		herd   = 500_000
		rate   = 1000
		window = 3 * time.Second
	)
	for range b.N {
		alone := nodeHerdRun(b, 0, rate, window)
		with := nodeHerdRun(b, herd, rate, window)
		b.ReportMetric(ms(pct(alone.late, 50)), "b-p50-alone-ms")
		b.ReportMetric(ms(pct(alone.late, 99)), "b-p99-alone-ms")
		b.ReportMetric(ms(pct(with.late, 50)), "b-p50-herd-ms")
		b.ReportMetric(ms(pct(with.late, 99)), "b-p99-herd-ms")
		b.ReportMetric(ms(pct(alone.fired, 99)), "b-fired-p99-alone-ms")
		b.ReportMetric(ms(pct(with.fired, 99)), "b-fired-p99-herd-ms")
		b.ReportMetric(ms(with.drain), "herd-drain-ms")
	}
}

type nodeHerdResult struct {
	late  []time.Duration // b's, received minus due, sorted
	fired []time.Duration // b's, fired minus due (the shard's part of late), sorted
	drain time.Duration   // from the herd's due time to its last delivery received
}

func nodeHerdRun(b *testing.B, herd, rate int, window time.Duration) nodeHerdResult {
	b.Helper()
	srv, c := benchServer(b)
	// b's subscriber has a connection of its own, as another service
	// would: on one connection its deliveries would queue behind a's.
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	cb := pb.NewTimerServiceClient(conn)
	ctx, cancel := context.WithCancel(context.Background())
	var (
		mu    sync.Mutex
		late  []time.Duration
		fired []time.Duration
		lastA time.Time
		gotA  atomic.Int64
		wg    sync.WaitGroup
	)
	defer wg.Wait()
	defer cancel()
	subscribeAcking(b, ctx, c, &wg, &pb.Subscription{Namespace: "a", Topic: "herd", MaxInFlight: 10_000}, func(d *pb.Delivery, at time.Time) {
		gotA.Add(1)
		mu.Lock()
		lastA = at
		mu.Unlock()
	})
	subscribeAcking(b, ctx, cb, &wg, &pb.Subscription{Namespace: "b", Topic: "steady", MaxInFlight: 10_000}, func(d *pb.Delivery, at time.Time) {
		mu.Lock()
		late = append(late, at.Sub(d.GetDueTime().AsTime()))
		fired = append(fired, d.GetFiredTime().AsTime().Sub(d.GetDueTime().AsTime()))
		mu.Unlock()
	})

	// Far enough ahead for the herd to be scheduled first.
	at := time.Now().Add(3*time.Second + time.Duration(herd)*40*time.Microsecond).Truncate(time.Millisecond)
	nB := int(window.Seconds() * float64(rate))
	bFirst := at.Add(-window / 3)
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
	deadline := time.Now().Add(time.Minute + time.Until(at) + window)
	for {
		mu.Lock()
		nb := len(late)
		mu.Unlock()
		if nb >= nB && gotA.Load() >= int64(herd) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d b timers and %d of %d a timers arrived", nb, nB, gotA.Load(), herd)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	r := nodeHerdResult{late: slices.Sorted(slices.Values(late))}
	if r.late[0] < 0 {
		b.Fatalf("a timer of b arrived %v early", -r.late[0])
	}
	if herd > 0 {
		r.drain = lastA.Sub(at)
	}
	r.fired = slices.Sorted(slices.Values(fired))
	b.Logf("herd %d: b p50 %v p99 %v max %v (fired p50 %v p99 %v); herd drained in %v", herd, pct(r.late, 50), pct(r.late, 99), r.late[len(r.late)-1], pct(r.fired, 50), pct(r.fired, 99), r.drain)
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
