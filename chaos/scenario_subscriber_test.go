package chaos

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// The subscriber-faults scenario: a subscriber process killed with SIGKILL
// while it holds deliveries it never acked, and, for the whole run, a
// subscriber too slow to ack and one that reads nothing, beside healthy
// subscribers that ack at once.
//
// What it proves: every delivery the dead process held comes again, with
// the same delivery id and a higher attempt, on another stream; the nodes'
// memory stays bounded while deliveries pile up behind the slow and the
// stuck streams (the credit is the backpressure); and no node stalls: the
// healthy subscribers keep receiving and Schedule keeps being answered.
const (
	// The killed process holds at most killedCredit deliveries, never
	// acked; its ack timeout is long, so that only its death gives them
	// back.
	killedCredit     = 500
	killedAckTimeout = time.Minute
	// It is killed killAfterMin to killAfterMax into the run.
	killAfterMin = 4 * time.Second
	killAfterMax = 7 * time.Second
	// The slow subscriber takes up to slowCredit deliveries and acks the
	// oldest it holds every slowAckEvery; what it holds past
	// slowAckTimeout goes to another stream.
	slowCredit     = 1000
	slowAckEvery   = 100 * time.Millisecond
	slowAckTimeout = 2 * time.Second
	// The stuck subscriber asks for stuckCredit deliveries and never reads
	// its stream, so the server's sends block on HTTP/2 flow control.
	stuckCredit = 10_000
	// probeEvery is how often a Schedule of one timer probes a node (in
	// turn), each within probeTimeout.
	probeEvery   = 250 * time.Millisecond
	probeTimeout = 10 * time.Second
	// maxNodeRSS bounds a node's resident memory: a bound against a leak
	// or an unbounded queue, far above what a node needs here.
	maxNodeRSS = 512 << 20
)

// subscriberLoad is the load of the scenario: 50,000 timers due over 20s,
// so that many come due while the slow and stuck streams hold credit.
var subscriberLoad = loadConfig{
	timers:      50_000,
	firstDue:    time.Second,
	spread:      20 * time.Second,
	minBatch:    200,
	maxBatch:    500,
	leadMin:     500 * time.Millisecond,
	leadMax:     4 * time.Second,
	retryFor:    20 * time.Second,
	callTimeout: 3 * time.Second,
	concurrency: 16,
}

// Deliveries received by a subscriber process and by the slow subscriber
// are recorded under these node indexes, below the healthy streams'
// 0..n-1.
const (
	fromProcess = -1
	fromSlow    = -2
)

// TestSubscriberFaults runs the subscriber-faults scenario.
func TestSubscriberFaults(t *testing.T) {
	runScenario(t, "TestSubscriberFaults", subscriberFaults)
}

func subscriberFaults(t *testing.T, e *scenarioEnv) {
	ctx := e.ctx
	batches := planLoad(e.rng, subscriberLoad, len(e.conns))
	killAfter := killAfterMin + time.Duration(e.rng.Int64N(int64(killAfterMax-killAfterMin)+1))
	killedNode, slowNode, stuckNode := e.rng.IntN(len(e.conns)), e.rng.IntN(len(e.conns)), e.rng.IntN(len(e.conns))

	healthy := subscribe(namespace, topic, maxInFlight, ackTimeout, e.conns)
	t.Cleanup(healthy.stop)
	killed := startSubscriberProcess(t, e.nodes[killedNode].grpcAddr, namespace, topic, killedCredit, killedAckTimeout, fromProcess)
	slowCtx, stopSlow := context.WithCancel(ctx)
	defer stopSlow()
	slow := &slowSubscriber{}
	var streams sync.WaitGroup
	streams.Go(func() { slow.run(slowCtx, pb.NewTimerServiceClient(e.conns[slowNode])) })
	streams.Go(func() { stuck(slowCtx, pb.NewTimerServiceClient(e.conns[stuckNode])) })
	defer streams.Wait()

	runStart := time.Now().Add(200 * time.Millisecond).Truncate(time.Millisecond)
	ld := newLoader(subscriberLoad, e.seed, namespace, topic, e.conns, runStart)
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		ld.run(ctx, batches)
	}()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	mem := &rssWatch{}
	pr := newProber(runStart)
	var watchers sync.WaitGroup
	watchers.Go(func() { mem.run(watchCtx, e.nodes) })
	watchers.Go(func() { pr.run(watchCtx, e.conns) })
	t.Logf("run started: %s timers in %d batches due over %v; the subscriber process on %s to be killed at +%v; slow subscriber on %s, stuck on %s",
		itoa(subscriberLoad.timers), len(batches), subscriberLoad.spread, e.nodes[killedNode].name, killAfter,
		e.nodes[slowNode].name, e.nodes[stuckNode].name)

	if !sleepUntil(ctx, runStart.Add(killAfter)) {
		t.Fatal("run timed out before the kill")
	}
	killTime := time.Now()
	killed.kill9()
	held := killed.deliveries()
	t.Logf("killed the subscriber process with SIGKILL at +%v, holding %d unacked deliveries",
		killTime.Sub(runStart).Round(time.Millisecond), len(held))

	select {
	case <-loaded:
	case <-ctx.Done():
		t.Fatalf("the batches did not all end within %v", runTimeout)
	}
	ld.res.mu.Lock()
	acked := ld.res.acked
	ld.res.mu.Unlock()
	deadline := runStart.Add(subscriberLoad.firstDue + subscriberLoad.spread)
	deadline = later(deadline, time.Now()).Add(drainFor)
	all := func() []delivery {
		return slices.Concat(healthy.deliveries(), slow.deliveries(), held)
	}
	for time.Now().Before(deadline) && (missing(acked, all()) > 0 || len(heldNotRedelivered(held, killTime, all())) > 0) {
		time.Sleep(200 * time.Millisecond)
	}
	stopWatch()
	watchers.Wait()
	stopSlow()
	time.Sleep(settleFor)
	healthy.stop()
	streams.Wait()

	got := all()
	res := ld.res
	pr.mu.Lock()
	attempted, ackedAll := mergeTimes(res.attempted, pr.attempted), mergeTimes(res.acked, pr.acked)
	pr.mu.Unlock()
	v := judge(attempted, ackedAll, res.indeterminate, got)
	v.Seed = e.seed
	v.Killed = "subscriber-process"
	v.KillAtMS = killTime.Sub(runStart).Milliseconds()
	v.Problems = append(v.Problems, e.exitedUnasked()...)

	// The killed process's deliveries, each again elsewhere with the same
	// delivery id and a higher attempt.
	notAgain := heldNotRedelivered(held, killTime, got)
	for _, d := range notAgain[:min(len(notAgain), maxExamples)] {
		v.Problems = append(v.Problems, fmt.Sprintf("%s (delivery %s, attempt %d) held by the killed subscriber, never delivered again with a higher attempt",
			d.id, d.deliveryID, d.attempt))
	}
	if len(held) == 0 {
		v.Problems = append(v.Problems, "the killed subscriber held no delivery: the kill tested nothing")
	}
	// Memory and stalls.
	peak, peakNode := mem.peak()
	if peak > maxNodeRSS {
		v.Problems = append(v.Problems, fmt.Sprintf("%s reached %d MiB of resident memory, above the %d MiB bound", peakNode, peak>>20, maxNodeRSS>>20))
	}
	probes, stalled := pr.result()
	v.Problems = append(v.Problems, stalled...)
	v.Pass = v.Pass && len(v.Problems) == 0

	// A first attempt on a healthy stream shows a stall of the dispatch;
	// what went to the slow streams first is late by their ack timeouts
	// and the redelivery backoff.
	lateHealthy := firstLateness(got, ackedAll, func(d delivery) bool { return d.node >= 0 && d.attempt == 1 })
	redeliveredAfter := redeliveryDelays(held, killTime, got)
	figures := []string{
		fmt.Sprintf("held by the killed subscriber %d", len(held)),
		fmt.Sprintf("redelivered after the kill p50 %s max %s", pct(redeliveredAfter, 50), pct(redeliveredAfter, 100)),
		fmt.Sprintf("slow subscriber received %s acked %s", itoa(len(slow.deliveries())), itoa(slow.ackedCount())),
		fmt.Sprintf("peak node RSS %d MiB (%s)", peak>>20, peakNode),
		fmt.Sprintf("first attempts on healthy streams lateness p50 %s p99 %s max %s", pct(lateHealthy, 50), pct(lateHealthy, 99), pct(lateHealthy, 100)),
		fmt.Sprintf("schedule probes %d answered p99 %s max %s", len(probes), pct(probes, 99), pct(probes, 100)),
	}
	reportScenario(t, "subscriber-faults", v, figures)
}

// heldNotRedelivered returns the deliveries of held that no other stream
// received after kill with the same delivery id and a higher attempt.
func heldNotRedelivered(held []delivery, kill time.Time, got []delivery) []delivery {
	again := redeliveries(kill, got)
	var out []delivery
	for _, d := range held {
		if a, ok := again[d.deliveryID]; !ok || a.attempt <= d.attempt {
			out = append(out, d)
		}
	}
	return out
}

// redeliveries returns, by delivery id, the highest-attempt delivery
// received on a stream other than the killed process's after kill.
func redeliveries(kill time.Time, got []delivery) map[string]delivery {
	again := make(map[string]delivery)
	for _, d := range got {
		if d.node == fromProcess || d.received.Before(kill) {
			continue
		}
		if a, ok := again[d.deliveryID]; !ok || d.attempt > a.attempt {
			again[d.deliveryID] = d
		}
	}
	return again
}

// redeliveryDelays returns, for each delivery held, how long after kill
// it was first received again with a higher attempt.
func redeliveryDelays(held []delivery, kill time.Time, got []delivery) []time.Duration {
	first := make(map[string]time.Time)
	for _, d := range got {
		if d.node == fromProcess || d.received.Before(kill) {
			continue
		}
		if t, ok := first[d.deliveryID]; !ok || d.received.Before(t) {
			first[d.deliveryID] = d.received
		}
	}
	var out []time.Duration
	for _, d := range held {
		if t, ok := first[d.deliveryID]; ok {
			out = append(out, t.Sub(kill))
		}
	}
	return out
}

// slowSubscriber holds a stream with slowCredit deliveries and acks the
// oldest it holds only every slowAckEvery.
type slowSubscriber struct {
	mu    sync.Mutex
	got   []delivery
	held  []string // delivery ids received and not yet acked, oldest first
	acked int
}

// run keeps one slow stream open until ctx ends, opening it again when it
// ends.
func (s *slowSubscriber) run(ctx context.Context, tc pb.TimerServiceClient) {
	for ctx.Err() == nil {
		s.stream(ctx, tc)
		sleepUntil(ctx, time.Now().Add(reconnectDelay))
	}
}

func (s *slowSubscriber) stream(ctx context.Context, tc pb.TimerServiceClient) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := tc.Subscribe(ctx)
	if err != nil {
		return
	}
	sub := &pb.Subscription{Namespace: namespace, Topic: topic, MaxInFlight: slowCredit, AckTimeout: durationpb.New(slowAckTimeout)}
	if err := st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
		return
	}
	// The acker is the only sender after the subscription, as a gRPC
	// stream allows one.
	var acker sync.WaitGroup
	defer acker.Wait()
	defer cancel()
	acker.Go(func() {
		tick := time.NewTicker(slowAckEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			s.mu.Lock()
			var id string
			if len(s.held) > 0 {
				id, s.held = s.held[0], s.held[1:]
				s.acked++
			}
			s.mu.Unlock()
			if id == "" {
				continue
			}
			if err := st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: &pb.Ack{DeliveryIds: []string{id}}}}); err != nil {
				return
			}
		}
	})
	for {
		m, err := st.Recv()
		if err != nil {
			return
		}
		d := m.GetDelivery()
		s.mu.Lock()
		s.got = append(s.got, received(d, fromSlow))
		s.held = append(s.held, d.GetDeliveryId())
		s.mu.Unlock()
	}
}

func (s *slowSubscriber) deliveries() []delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]delivery(nil), s.got...)
}

func (s *slowSubscriber) ackedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// stuck opens a stream asking for stuckCredit deliveries and never reads
// it, until ctx ends; when the server ends it (its sends blocked for the
// ack timeout), the client does not notice, as a hung consumer would not.
func stuck(ctx context.Context, tc pb.TimerServiceClient) {
	st, err := tc.Subscribe(ctx)
	if err != nil {
		return
	}
	sub := &pb.Subscription{Namespace: namespace, Topic: topic, MaxInFlight: stuckCredit, AckTimeout: durationpb.New(slowAckTimeout)}
	if err := st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
		return
	}
	<-ctx.Done()
}

// received is d as a delivery received now on the stream of node.
func received(d *pb.Delivery, node int) delivery {
	return delivery{
		id: d.GetId(), deliveryID: d.GetDeliveryId(), due: d.GetDueTime().AsTime(), fired: d.GetFiredTime().AsTime(),
		received: time.Now(), attempt: d.GetAttempt(), shard: d.GetShard(), epoch: d.GetEpoch(), node: node,
		payloadOK: string(d.GetPayload()) == d.GetId(),
	}
}

// rssWatch samples the resident memory of every node.
type rssWatch struct {
	mu       sync.Mutex
	max      int64 // bytes
	maxOwner string
}

// run samples every 250ms until ctx ends.
func (w *rssWatch) run(ctx context.Context, nodes []*node) {
	for sleepUntil(ctx, time.Now().Add(250*time.Millisecond)) {
		for _, n := range nodes {
			rss, err := residentBytes(n.cmd.Process.Pid)
			if err != nil {
				continue // exited, or no /proc
			}
			w.mu.Lock()
			if rss > w.max {
				w.max, w.maxOwner = rss, n.name
			}
			w.mu.Unlock()
		}
	}
}

func (w *rssWatch) peak() (int64, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.max, w.maxOwner
}

// residentBytes reads VmRSS, the resident memory of process pid, from
// /proc.
func residentBytes(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: VmRSS %q: %w", pid, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// prober schedules one timer on a node (each in turn) every probeEvery,
// timing how long the answer takes: a node whose Schedule stalls behind
// its subscribers shows here.
type prober struct {
	start time.Time

	mu        sync.Mutex
	attempted map[string]time.Time
	acked     map[string]time.Time
	took      []time.Duration
	stalled   []string
}

func newProber(start time.Time) *prober {
	return &prober{start: start, attempted: make(map[string]time.Time), acked: make(map[string]time.Time)}
}

// run probes until ctx ends.
func (p *prober) run(ctx context.Context, conns []*grpc.ClientConn) {
	for i := 0; sleepUntil(ctx, time.Now().Add(probeEvery)); i++ {
		id := fmt.Sprintf("probe%05d", i)
		due := time.Now().Add(time.Second).Truncate(time.Millisecond)
		p.mu.Lock()
		p.attempted[id] = due
		p.mu.Unlock()
		cctx, cancel := context.WithTimeout(ctx, probeTimeout)
		began := time.Now()
		resp, err := pb.NewTimerServiceClient(conns[i%len(conns)]).Schedule(cctx, &pb.ScheduleRequest{Namespace: namespace,
			Timers: []*pb.TimerSpec{{Id: id, Topic: topic, Payload: []byte(id), When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(due)}}}})
		took := time.Since(began)
		cancel()
		if ctx.Err() != nil {
			return
		}
		code := status.Code(err)
		if err == nil {
			code = codes.Code(resp.GetResults()[0].GetCode())
		}
		p.mu.Lock()
		if code == codes.OK {
			p.acked[id] = due
			p.took = append(p.took, took)
		} else {
			p.stalled = append(p.stalled, fmt.Sprintf("a Schedule probe of node %d at +%v answered %v after %v",
				i%len(conns), began.Sub(p.start).Round(time.Millisecond), code, took.Round(time.Millisecond)))
		}
		p.mu.Unlock()
	}
}

// result returns how long each answered probe took and the probes that
// failed.
func (p *prober) result() ([]time.Duration, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.took, p.stalled
}

// TestHeldNotRedelivered checks, on made-up deliveries, which deliveries a
// killed subscriber held count as never delivered again.
func TestHeldNotRedelivered(t *testing.T) {
	kill := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s float64) time.Time { return kill.Add(time.Duration(s * float64(time.Second))) }
	held := []delivery{
		{id: "a", deliveryID: "da", attempt: 1, node: fromProcess, received: at(-1)},
		{id: "b", deliveryID: "db", attempt: 2, node: fromProcess, received: at(-1)},
	}
	tests := []struct {
		name  string
		again []delivery
		want  []string // ids not delivered again
	}{
		{"both again with a higher attempt", []delivery{
			{id: "a", deliveryID: "da", attempt: 2, node: 0, received: at(0.1)},
			{id: "b", deliveryID: "db", attempt: 3, node: fromSlow, received: at(0.2)},
		}, nil},
		{"the same attempt again", []delivery{
			{id: "a", deliveryID: "da", attempt: 1, node: 1, received: at(0.1)},
			{id: "b", deliveryID: "db", attempt: 3, node: 0, received: at(0.2)},
		}, []string{"a"}},
		{"another delivery id", []delivery{
			{id: "a", deliveryID: "da2", attempt: 2, node: 1, received: at(0.1)},
			{id: "b", deliveryID: "db", attempt: 3, node: 0, received: at(0.2)},
		}, []string{"a"}},
		{"before the kill, or to the killed process", []delivery{
			{id: "a", deliveryID: "da", attempt: 2, node: 1, received: at(-0.5)},
			{id: "b", deliveryID: "db", attempt: 3, node: fromProcess, received: at(0.2)},
		}, []string{"a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ids []string
			for _, d := range heldNotRedelivered(held, kill, slices.Concat(held, tt.again)) {
				ids = append(ids, d.id)
			}
			if !slices.Equal(ids, tt.want) {
				t.Errorf("not delivered again: %v, want %v", ids, tt.want)
			}
		})
	}
}
