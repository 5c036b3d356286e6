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
	// quietProbes is how long the probes run before the faults and the
	// load, for their baseline.
	quietProbes = 2 * time.Second
	// maxNodeRSS bounds a node's resident memory: a bound against a leak
	// or an unbounded queue, far above what a node needs here.
	maxNodeRSS = 512 << 20
	// heldBound bounds the wait, after the kill, for every delivery the
	// killed process held to come again.
	heldBound = 30 * time.Second
)

func init() {
	register(scenario{
		name: "subscriber-faults",
		about: "a subscriber process killed with SIGKILL holding unacked deliveries, a subscriber too slow to ack and one that reads " +
			"nothing, beside healthy ones, while 50,000 timers come due: every held delivery comes again on another stream with its " +
			"delivery id and a higher attempt, the nodes' memory stays bounded and no node stalls",
		run: subscriberFaults,
	})
}

func subscriberFaults(t *testing.T, r *run) {
	c := startCluster(r, clusterOptions{})
	subscribe(r, c, subscribeConfig{})
	// The probes' baseline, before any fault and any load: what a
	// Schedule takes on this machine now.
	quiet := &prober{r: r, prefix: "quiet", start: time.Now()}
	quietCtx, stopQuiet := context.WithTimeout(r.ctx, quietProbes)
	quiet.run(quietCtx, c)
	stopQuiet()
	killAfter := killAfterMin + time.Duration(r.rng.Int64N(int64(killAfterMax-killAfterMin)+1))
	killedNode, slowNode, stuckNode := r.rng.IntN(c.size()), r.rng.IntN(c.size()), r.rng.IntN(c.size())
	killed := startSubscriberProcess(r, c, killedNode, killedCredit, killedAckTimeout)
	// Each wait is deferred before its stop, so that a run that ends
	// early stops its goroutines before it waits for them.
	var streams sync.WaitGroup
	defer streams.Wait()
	slowCtx, stopSlow := context.WithCancel(r.ctx)
	defer stopSlow()
	slow := &slowSubscriber{l: r.ledger, node: slowNode}
	streams.Go(func() { slow.run(slowCtx, pb.NewTimerServiceClient(c.conn(slowNode))) })
	streams.Go(func() { stuck(slowCtx, pb.NewTimerServiceClient(c.conn(stuckNode))) })

	// 50,000 timers due over 20s, so that many come due while the slow
	// and stuck streams hold credit.
	w := newWorkload(r, c, workloadConfig{Timers: 50_000, Spread: 20 * time.Second, MinBatch: 200, LeadMax: 4 * time.Second, Concurrency: 16})
	start := w.begin()
	// The memory is watched until the end, the probes while the
	// workload runs: a probe's timer comes due a second after it.
	var watchers sync.WaitGroup
	defer watchers.Wait()
	watchCtx, stopWatch := context.WithCancel(r.ctx)
	defer stopWatch()
	probeCtx, stopProbes := context.WithCancel(r.ctx)
	defer stopProbes()
	mem := &rssWatch{}
	pr := &prober{r: r, prefix: "probe", start: start}
	watchers.Go(func() { mem.run(watchCtx, c) })
	watchers.Go(func() { pr.run(probeCtx, c) })
	r.logf("the subscriber process on %s to be killed at +%v; slow subscriber on %s, stuck on %s",
		c.node(killedNode).name, killAfter.Round(time.Millisecond), c.node(slowNode).name, c.node(stuckNode).name)

	if !sleepUntil(r.ctx, start.Add(killAfter)) {
		t.Fatal("run timed out before the kill")
	}
	kill := time.Now()
	killed.kill9()
	held := killed.deliveries()
	r.logf("killed the subscriber process with SIGKILL, holding %d unacked deliveries", len(held))
	if !w.wait() {
		t.Fatalf("the batches did not all end within the run's bound")
	}
	stopProbes()
	for deadline := kill.Add(heldBound); time.Now().Before(deadline) && len(heldNotRedelivered(held, r.ledger.deliveries())) > 0; {
		sleepUntil(r.ctx, time.Now().Add(200*time.Millisecond))
	}
	r.drain(w.lastDue(), 40*time.Second)
	stopWatch()
	watchers.Wait()
	stopSlow()
	streams.Wait()

	v := r.judge()
	got := r.ledger.deliveries()
	notAgain := heldNotRedelivered(held, got)
	for _, d := range notAgain[:min(len(notAgain), maxExamples)] {
		v.problem("%s (shard %d, delivery %s, attempt %d, fired %s) held by the killed subscriber on %s, never delivered again with a higher attempt; %s",
			d.id, d.shard, d.deliveryID, d.attempt, d.fired.Format(time.StampMilli), c.node(killedNode).name, otherDeliveries(d, held, got, kill))
	}
	if len(notAgain) > maxExamples {
		v.problem("and %d more held deliveries never delivered again with a higher attempt", len(notAgain)-maxExamples)
	}
	if len(held) == 0 {
		v.problem("the killed subscriber held no delivery: the kill tested nothing")
	}
	peak, peakNode := mem.peak()
	if peak > maxNodeRSS {
		v.problem("%s reached %d MiB of resident memory, above the %d MiB bound", peakNode, peak>>20, maxNodeRSS>>20)
	}
	probes, retries, stalled := pr.result()
	quietProbes, _, quietStalled := quiet.result()
	for _, p := range slices.Concat(quietStalled, stalled) {
		v.problem("%s", p)
	}
	// A first attempt on a healthy stream shows a stall of the dispatch;
	// what went to the slow streams first is late by their ack timeouts
	// and the redelivery backoff.
	notHealthy := make(map[string]bool)
	for _, d := range slices.Concat(held, slow.deliveries()) {
		notHealthy[d.deliveryID] = true
	}
	healthy := firstAttemptLateness(got, func(d delivery) bool { return !notHealthy[d.deliveryID] })
	again := redeliveryDelays(held, got, kill)
	v.figure("held_by_killed", len(held))
	v.figure("redelivered_after_kill_p50", pctOf(again, 50))
	v.figure("redelivered_after_kill_max", pctOf(again, 100))
	v.figure("slow_received", len(slow.deliveries()))
	v.figure("slow_acked", slow.ackedCount())
	v.figure("peak_node_rss_mib", int(peak>>20))
	v.figure("healthy_first_attempt_lateness_p99", pctOf(healthy, 99))
	v.figure("healthy_first_attempt_lateness_max", pctOf(healthy, 100))
	v.figure("schedule_probes", len(probes))
	v.figure("schedule_probe_retries", retries)
	v.figure("schedule_probe_p99", pctOf(probes, 99))
	v.figure("schedule_probe_max", pctOf(probes, 100))
	v.figure("schedule_probe_quiet_p99", pctOf(quietProbes, 99))
	c.check(v)
	w.check(v)
}

// heldNotRedelivered returns the deliveries of held that no other
// delivery of got repeats: the same delivery id with a higher attempt.
func heldNotRedelivered(held, got []delivery) []delivery {
	again := redelivered(held, got)
	var out []delivery
	for _, d := range held {
		if _, ok := again[d.deliveryID]; !ok {
			out = append(out, d)
		}
	}
	return out
}

// otherDeliveries describes the deliveries of d's timer in got other
// than held's, relative to kill.
func otherDeliveries(d delivery, held, got []delivery, kill time.Time) string {
	own := make(map[string]bool)
	for _, h := range held {
		own[h.deliveryID+"/"+h.received.String()] = true
	}
	var parts []string
	for _, o := range got {
		if o.id != d.id || own[o.deliveryID+"/"+o.received.String()] {
			continue
		}
		parts = append(parts, fmt.Sprintf("attempt %d of delivery %s fired %+.3fs received %+.3fs after the kill on node %d (shard %d epoch %d)",
			o.attempt, o.deliveryID, o.fired.Sub(kill).Seconds(), o.received.Sub(kill).Seconds(), o.node, o.shard, o.epoch))
	}
	if len(parts) == 0 {
		return "no other delivery of it"
	}
	return "other deliveries: " + strings.Join(parts, "; ")
}

// redelivered returns, by delivery id, the first delivery received of
// got, other than held's own, that repeats one of held with a higher
// attempt.
func redelivered(held, got []delivery) map[string]delivery {
	type key struct {
		deliveryID string
		attempt    uint32
		received   time.Time
	}
	own := make(map[key]bool, len(held))
	attempt := make(map[string]uint32, len(held))
	for _, d := range held {
		own[key{d.deliveryID, d.attempt, d.received}] = true
		attempt[d.deliveryID] = d.attempt
	}
	again := make(map[string]delivery)
	for _, d := range got {
		a, ok := attempt[d.deliveryID]
		if !ok || own[key{d.deliveryID, d.attempt, d.received}] || d.attempt <= a {
			continue
		}
		if first, ok := again[d.deliveryID]; !ok || d.received.Before(first.received) {
			again[d.deliveryID] = d
		}
	}
	return again
}

// redeliveryDelays returns how long after kill each delivery of held was
// first received again.
func redeliveryDelays(held, got []delivery, kill time.Time) []time.Duration {
	var out []time.Duration
	for _, d := range redelivered(held, got) {
		out = append(out, d.received.Sub(kill))
	}
	return out
}

// slowSubscriber holds a stream on node with slowCredit deliveries and
// acks the oldest it holds only every slowAckEvery; it records what it
// receives in l too.
type slowSubscriber struct {
	l    *ledger
	node int

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
		got := received(d, s.node)
		s.l.deliver(got)
		s.mu.Lock()
		s.got = append(s.got, got)
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
func (w *rssWatch) run(ctx context.Context, c *testCluster) {
	for sleepUntil(ctx, time.Now().Add(250*time.Millisecond)) {
		for _, n := range c.all() {
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
// as a careful client does: an answer the contract calls transient
// (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) is retried after
// probeRetry, for up to probeTimeout in all. Every call goes to the
// ledger. How long each probe took to be answered OK shows a node whose
// Schedule stalls behind its subscribers; one never answered OK within
// probeTimeout is a stall.
type prober struct {
	r      *run
	prefix string // of the probes' timer ids
	start  time.Time

	mu      sync.Mutex
	took    []time.Duration
	retries int
	stalled []string
}

// probeRetry is the pause before a probe's transient answer is retried.
const probeRetry = 100 * time.Millisecond

// run probes until ctx ends.
func (p *prober) run(ctx context.Context, c *testCluster) {
	for i := 0; sleepUntil(ctx, time.Now().Add(probeEvery)); i++ {
		id := fmt.Sprintf("%s%05d", p.prefix, i)
		node := i % c.size()
		tc := pb.NewTimerServiceClient(c.conn(node))
		due := time.Now().Add(time.Second).Truncate(time.Millisecond)
		req := &pb.ScheduleRequest{Namespace: namespace, RequestId: id,
			Timers: []*pb.TimerSpec{{Id: id, Topic: topic, Payload: []byte(id), When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(due)}}}}
		began := time.Now()
		var o op
		var why string
		for attempt := 0; ; attempt++ {
			cctx, cancel := context.WithDeadline(ctx, began.Add(probeTimeout))
			o = op{kind: opSchedule, id: id, due: due, sent: time.Now()}
			resp, err := tc.Schedule(cctx, req)
			o.answered = time.Now()
			cancel()
			o.code, why = status.Code(err), status.Convert(err).Message()
			o.outcome = callOutcome(o.code)
			if err == nil && len(resp.GetResults()) == 1 {
				o.code, why = codes.Code(resp.GetResults()[0].GetCode()), resp.GetResults()[0].GetMessage()
				o.outcome = itemOutcome(o.code)
			}
			p.r.ledger.record(o)
			transient := o.code == codes.Unavailable || o.code == codes.DeadlineExceeded || o.code == codes.ResourceExhausted
			if !transient || ctx.Err() != nil || !sleepUntil(ctx, time.Now().Add(probeRetry)) || time.Since(began) > probeTimeout {
				break
			}
			p.mu.Lock()
			p.retries++
			if p.retries <= 3 {
				p.r.logf("a Schedule probe of %s answered %v (%s): sent again", c.node(node).name, o.code, why)
			}
			p.mu.Unlock()
		}
		if ctx.Err() != nil {
			return // the probe was cut by the end of the run
		}
		p.mu.Lock()
		if o.code == codes.OK {
			p.took = append(p.took, o.answered.Sub(began))
		} else {
			p.stalled = append(p.stalled, fmt.Sprintf("a Schedule probe of %s at +%v not answered OK within %v: last %v (%s)",
				c.node(node).name, began.Sub(p.start).Round(time.Millisecond), o.answered.Sub(began).Round(time.Millisecond), o.code, why))
		}
		p.mu.Unlock()
	}
}

// result returns how long each answered probe took and the probes that
// failed.
func (p *prober) result() (took []time.Duration, retries int, stalled []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.took, p.retries, p.stalled
}

// TestHeldNotRedelivered checks, on made-up deliveries, which deliveries a
// killed subscriber held count as never delivered again.
func TestHeldNotRedelivered(t *testing.T) {
	at := sec
	held := []delivery{
		{id: "a", deliveryID: "da", attempt: 1, received: at(-1)},
		{id: "b", deliveryID: "db", attempt: 2, received: at(-1)},
	}
	tests := []struct {
		name  string
		again []delivery
		want  []string // ids not delivered again
	}{
		{"both again with a higher attempt", []delivery{
			{id: "a", deliveryID: "da", attempt: 2, node: 0, received: at(0.1)},
			{id: "b", deliveryID: "db", attempt: 3, node: 2, received: at(0.2)},
		}, nil},
		{"the same attempt again", []delivery{
			{id: "a", deliveryID: "da", attempt: 1, node: 1, received: at(0.1)},
			{id: "b", deliveryID: "db", attempt: 3, node: 0, received: at(0.2)},
		}, []string{"a"}},
		{"another delivery id", []delivery{
			{id: "a", deliveryID: "da2", attempt: 2, node: 1, received: at(0.1)},
			{id: "b", deliveryID: "db", attempt: 3, node: 0, received: at(0.2)},
		}, []string{"a"}},
		{"nothing again", nil, []string{"a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ids []string
			for _, d := range heldNotRedelivered(held, slices.Concat(held, tt.again)) {
				ids = append(ids, d.id)
			}
			if !slices.Equal(ids, tt.want) {
				t.Errorf("not delivered again: %v, want %v", ids, tt.want)
			}
		})
	}
}
