package shard

// The simulation: several simulated nodes share one embedded store and
// take its shards from each other while a seeded schedule of calls and
// faults runs against them, and an oracle checks what the subscribers
// received against what the callers were told. The shards are the real
// ones (Open, Schedule, Reschedule, Cancel, Ack, Return, Close, Abandon),
// and so are the store (Pebble, fenced by epoch and token) and each
// node's group commit; what the simulation replaces is time and the
// processes around them:
//
//   - Time is a fake clock per node, moved only by the schedule. A node
//     paused (SIGSTOP, a long GC pause) has its clock frozen: its lease
//     keeper renews nothing and its loop fires nothing until it resumes,
//     when its clock jumps to the true time, as a process's monotonic
//     clock does after SIGCONT. The store's leases lapse by the true
//     clock.
//   - Before the clocks move, the simulation takes every shard's mutex,
//     so a step of a shard's loop never straddles a move: a dispatch
//     happens at the instant its step read the clock. After they move, it
//     waits until every goroutine an alarm woke has set its alarm again
//     and every loop has stepped, so a seed replays the same schedule.
//   - A node's crash abandons its shards (no flush, no release) and
//     closes its group commit; it comes back under a new incarnation.
//     Shards without a live holder are opened on a live node, which waits
//     out the dead holder's lease; shards also move whole (Close, then
//     Open elsewhere).
//   - A node's subscriber takes what its shards dispatch; the schedule
//     acks deliveries (and drops some acks), disconnects the subscriber
//     (its attempts are returned) and lets a topic go without one.
//
// The oracle, over a ledger of every call with its outcome (ok, failed:
// nothing was written, indeterminate: it may have been) and every
// delivery with the true time it was made at:
//
//   - lost: a timer acknowledged and not cancelled that was never
//     delivered at the due time it was last given (0);
//   - unexpected: a delivery of a timer never attempted, at a due time
//     never asked for, or of an occurrence an acknowledged Reschedule had
//     superseded (0);
//   - early: a delivery before its due time by the true clock (0);
//   - cancelled-fired: a delivery made after a Cancel of its timer was
//     acknowledged (0);
//   - owner: a dispatch by a shard that did not hold the lease under its
//     epoch at that instant by the store, two shards of one id both able
//     to dispatch (unstopped, lease valid by the true clock) at one
//     instant, an epoch that went back, or an answer about a timer (ok,
//     not found, exists, dead) from a shard that did not hold the lease
//     (0);
//   - stalled: a timer left pending or in flight after the drain (0);
//   - duplicates (deliveries of one occurrence after its first) are
//     counted, with the lateness of first deliveries.
//
// TIMERD_SIM_SEEDS=k runs k seeds (default simDefaultSeeds),
// TIMERD_SIM_SEED=n replays seed n alone; a failing seed prints the
// command that replays it and the trace of its last steps.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/store"
)

// simDefaultSeeds is how many seeds TestSimulation runs without
// TIMERD_SIM_SEEDS: 15-35 s on a 2-core machine, where a seed takes
// 0.07-0.16 s as the load varies; simRaceSeeds under the race detector,
// which makes a seed several times slower.
const (
	simDefaultSeeds = 200
	simRaceSeeds    = 30
)

// Shape of one seed's run.
const (
	simShards    = 4
	simNodes     = 3
	simSteps     = 160              // schedule steps before the drain
	simNamespace = "ns"             // every timer's namespace
	simTopic     = "topic"          // every timer's topic
	simTraceKeep = 60               // trace lines a failure prints
	simHang      = 20 * time.Second // real-time bound on any one wait
)

func TestSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("the simulation runs hundreds of seeds")
	}
	seeds := simSeeds(t)
	dir := simDir(t)
	began := time.Now()
	total := map[string]int{}
	for _, seed := range seeds {
		w := newSimWorld(t, seed, dir)
		w.run()
		v := w.judge()
		w.close()
		for k, n := range w.counts {
			total[k] += n
		}
		if !v.ok() {
			t.Errorf("seed %d: %s\nreplay: TIMERD_SIM_SEED=%d go test -count=1 -run '^TestSimulation$' ./shard/\nlast steps:\n%s",
				seed, v.line(), seed, w.traceTail())
			if len(seeds) > 1 && !testing.Verbose() {
				break // one failing trace is enough to read
			}
			continue
		}
		if len(seeds) == 1 {
			t.Logf("seed %d: %s", seed, v.line())
			if testing.Verbose() {
				t.Logf("trace:\n  %s", strings.Join(w.trace, "\n  "))
			}
		}
	}
	t.Logf("%d seeds in %v", len(seeds), time.Since(began).Round(time.Millisecond))
	names := slices.Sorted(maps.Keys(total))
	var b strings.Builder
	for _, k := range names {
		fmt.Fprintf(&b, " %s=%d", k, total[k])
	}
	t.Logf("over all seeds:%s", b.String())
}

// simSeeds returns the seeds to run: TIMERD_SIM_SEED alone, or
// TIMERD_SIM_SEEDS (default simDefaultSeeds) seeds from a random start.
func simSeeds(t *testing.T) []uint64 {
	if s := os.Getenv("TIMERD_SIM_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TIMERD_SIM_SEED=%q: want an unsigned integer: %v", s, err)
		}
		return []uint64{n}
	}
	k := simDefaultSeeds
	if raceEnabled {
		k = simRaceSeeds
	}
	if s := os.Getenv("TIMERD_SIM_SEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("TIMERD_SIM_SEEDS=%q: want a positive integer", s)
		}
		k = n
	}
	start := rand.Uint64() >> 16 // short enough to type
	out := make([]uint64, k)
	for i := range out {
		out[i] = start + uint64(i)
	}
	return out
}

// simDir returns where the seeds' stores live: under /dev/shm when the
// machine has it, since every commit of the embedded store is an fsync
// and the simulation makes tens of thousands; the store is the same
// code either way.
func simDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		dir, err := os.MkdirTemp("/dev/shm", "timerd-sim-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

// simWorld is one seed's run: the store, the nodes, the schedule's
// random source, the ledger and the trace.
type simWorld struct {
	t    *testing.T
	seed uint64
	rng  *rand.Rand
	st   *store.Embedded
	dir  string // the store's directory
	// world is the true clock: the store's leases lapse by it, and the
	// oracle judges early deliveries by it.
	world *fakeClock
	nodes []*simNode
	// holder is, per shard, the instance the simulation routes calls
	// to: the last one opened. It may have stopped since.
	holder [simShards]*simShard
	// maxEpoch is the greatest epoch opened, per shard.
	maxEpoch [simShards]uint64
	next     int // numbers new timers
	// ids lists the timers scheduled, by shard; retired ones (cancelled)
	// are taken out.
	ids  [simShards][]string
	spec map[string]Spec // the last Spec scheduled per id, for retries

	mu sync.Mutex // guards the ledger and the trace
	// seq orders every event (a call sent, a call answered, a
	// delivery): the ledger's clock of causality.
	seq      uint64
	ops      []simOp
	dels     []simDelivery
	problems []string
	trace    []string
	// counts counts what the schedule did (faults, takeovers, calls by
	// outcome), for the figures of a run.
	counts map[string]int
}

// simNode is one simulated process: a clock, a group commit and a
// subscriber, and the shards it has opened.
type simNode struct {
	name    string
	inc     int // incarnation: 1 + how many times it crashed
	clock   *fakeClock
	com     *store.Committer
	sub     *simSub
	shards  []*simShard // opened, not known to have stopped
	crashed bool
	paused  bool
	// queued holds the calls sent to the node while it was paused.
	queued []func()
}

func (n *simNode) owner() string { return fmt.Sprintf("%s.%d", n.name, n.inc) }

// live reports whether the node runs: not crashed, not paused.
func (n *simNode) live() bool { return !n.crashed && !n.paused }

// simShard is one Open of a shard on a node.
type simShard struct {
	n  *simNode
	sh *Shard
}

// simOpKind is what a call did.
type simOpKind uint8

const (
	simSchedule simOpKind = iota
	simReschedule
	simCancel
)

func (k simOpKind) String() string {
	return [...]string{"schedule", "reschedule", "cancel"}[k]
}

// simOutcome is what a call's caller learned.
type simOutcome uint8

const (
	simOK            simOutcome = iota
	simFailed                   // nothing was written
	simIndeterminate            // it may have been written
)

func (o simOutcome) String() string { return [...]string{"ok", "failed", "indeterminate"}[o] }

// simOp is one call in the ledger.
type simOp struct {
	kind      simOpKind
	id        string
	due       int64 // unix ms; schedule and reschedule
	sent, ans uint64
	outcome   simOutcome
	err       error
	// retry: a Schedule of an id scheduled before, with the same spec
	// and request id. Its success says the first call succeeded, so it
	// sets the timer's due time only when no call before it was
	// acknowledged: the owner that answers it may be one that has lost
	// the shard and answers from its memory (it writes nothing, so no
	// fence stops it), where the timer is as it was.
	retry bool
}

// simDelivery is one dispatch in the ledger.
type simDelivery struct {
	Delivery
	node string
	seq  uint64
	at   time.Time // by the true clock
}

// simSub is a node's subscriber: it takes every delivery while
// connected and keeps the ones not yet acked.
type simSub struct {
	w *simWorld
	n *simNode

	mu    sync.Mutex
	open  bool
	inbox []Delivery // delivered, not yet acked or returned
}

// Dispatch records the delivery in the ledger and checks, at the very
// instant of the dispatch, that the store says this node holds the
// shard's lease under the delivery's epoch.
func (s *simSub) Dispatch(d Delivery) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.open {
		return 0, false
	}
	s.inbox = append(s.inbox, d)
	s.w.delivered(s.n, d)
	return 0, true
}

func newSimWorld(t *testing.T, seed uint64, dir string) *simWorld {
	w := &simWorld{
		t:      t,
		seed:   seed,
		rng:    rand.New(rand.NewPCG(seed, 0x5eed)),
		world:  newFakeClock(),
		spec:   map[string]Spec{},
		counts: map[string]int{},
	}
	cfg := store.DefaultEmbeddedConfig(fmt.Sprintf("%s/%d", dir, seed))
	cfg.Now = w.world.Now
	w.dir = cfg.Dir
	os.RemoveAll(cfg.Dir) // a replay of a seed starts afresh
	st, err := store.OpenEmbedded(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.st = st
	for i := range simNodes {
		n := &simNode{name: fmt.Sprintf("n%d", i), inc: 1}
		w.start(n)
		w.nodes = append(w.nodes, n)
	}
	return w
}

// start starts (or restarts) n: a clock at the true time, a group commit,
// a connected subscriber.
func (w *simWorld) start(n *simNode) {
	n.clock = newFakeClock()
	n.clock.Advance(w.world.Now().Sub(n.clock.Now()))
	com, err := store.NewCommitter(w.st, store.DefaultCommitterConfig())
	if err != nil {
		w.t.Fatal(err)
	}
	n.com = com
	n.sub = &simSub{w: w, n: n, open: true}
	n.crashed, n.paused = false, false
	n.shards, n.queued = nil, nil
}

// close stops every node and the store.
func (w *simWorld) close() {
	for _, n := range w.nodes {
		for _, s := range n.shards {
			s.sh.Abandon()
		}
		n.com.Close()
	}
	w.st.Close()
	os.RemoveAll(w.dir)
}

// run plays the seed's schedule, then heals every fault and lets every
// timer come due.
func (w *simWorld) run() {
	w.supervise()
	w.quiesce()
	for range simSteps {
		w.step()
		w.quiesce()
		if w.rng.IntN(10) < 7 {
			w.supervise() // the ring reacts, most of the time at once
			w.quiesce()
		}
		w.checkOwners()
	}
	w.drain()
}

// step plays one random action of the schedule.
func (w *simWorld) step() {
	switch r := w.rng.IntN(100); {
	case r < 28:
		w.schedule()
	case r < 33:
		w.retry()
	case r < 43:
		w.reschedule()
	case r < 50:
		w.cancel()
	case r < 63:
		w.ack(w.rng.IntN(4) == 0)
	case r < 83:
		w.advance(w.delay())
	case r < 85:
		w.crash()
	case r < 88:
		w.restart()
	case r < 90:
		w.pause()
	case r < 93:
		w.resume()
	case r < 96:
		w.move()
	case r < 98:
		w.disconnect()
	default:
		w.toggleSubscriber()
	}
}

// delay returns a random span of simulated time: mostly short, now and
// then past a lease's TTL.
func (w *simWorld) delay() time.Duration {
	switch w.rng.IntN(4) {
	case 0:
		return time.Duration(w.rng.IntN(50)+1) * time.Millisecond
	case 1, 2:
		return time.Duration(w.rng.IntN(1000)+1) * time.Millisecond
	}
	return time.Duration(w.rng.IntN(4000)+1) * time.Millisecond
}

// dueIn returns a random due time, in unix ms, from the true clock:
// sometimes past, mostly within a few seconds.
func (w *simWorld) dueIn() time.Time {
	now := w.world.Now()
	switch w.rng.IntN(5) {
	case 0:
		return now.Add(-time.Duration(w.rng.IntN(2000)) * time.Millisecond).Truncate(time.Millisecond)
	case 1:
		return now.Add(time.Duration(w.rng.IntN(10000)) * time.Millisecond).Truncate(time.Millisecond)
	}
	return now.Add(time.Duration(w.rng.IntN(3000)) * time.Millisecond).Truncate(time.Millisecond)
}

// route returns the instance a call to shard id goes to, or nil when
// its holder has crashed or is paused (the caller gives up before
// sending) or there is none.
func (w *simWorld) route(id int) *simShard {
	h := w.holder[id]
	if h == nil || !h.n.live() {
		return nil
	}
	return h
}

// send makes call on shard id's holder. A call to a paused holder
// waits in that process half of the time, as a request in its socket
// buffer does, and is made when the process resumes, before its lease
// keeper has looked at the clock; otherwise, and when there is no live
// holder, the client gives up before sending and the call is not made.
// It reports whether the call was made or queued.
func (w *simWorld) send(id int, what string, call func(h *simShard)) bool {
	h := w.holder[id]
	switch {
	case h != nil && h.n.live():
		call(h)
		return true
	case h != nil && h.n.paused && w.rng.IntN(2) == 0:
		w.tracef("%s waits in paused %s", what, h.n.owner())
		h.n.queued = append(h.n.queued, func() { call(h) })
		return true
	}
	w.tracef("%s: shard %d has no live holder; not sent", what, id)
	return false
}

func (w *simWorld) schedule() {
	id := w.rng.IntN(simShards)
	name := fmt.Sprintf("s%d-%d", id, w.next)
	w.next++
	sp := Spec{Namespace: simNamespace, ID: name, Topic: simTopic, Due: w.dueIn(),
		Payload: []byte(name), Req: w.rng.Uint64() | 1}
	w.spec[name] = sp
	if w.send(id, "schedule "+name, func(h *simShard) { w.callSchedule(h, sp) }) {
		w.ids[id] = append(w.ids[id], name)
	}
}

// retry sends a Schedule again, as a client whose first attempt timed
// out does: the same spec and request id.
func (w *simWorld) retry() {
	id := w.rng.IntN(simShards)
	if len(w.ids[id]) == 0 {
		return
	}
	sp := w.spec[w.ids[id][w.rng.IntN(len(w.ids[id]))]]
	w.send(id, "retry schedule "+sp.ID, func(h *simShard) { w.callSchedule(h, sp) })
}

func (w *simWorld) callSchedule(h *simShard, sp Spec) {
	op := w.sent(simSchedule, sp.ID, sp.Due.UnixMilli())
	ctx, cancel := context.WithTimeout(context.Background(), simHang)
	res := h.sh.Schedule(ctx, []Spec{sp})
	cancel()
	w.answered(op, res[0], h)
}

func (w *simWorld) reschedule() {
	id := w.rng.IntN(simShards)
	if len(w.ids[id]) == 0 {
		return
	}
	name := w.ids[id][w.rng.IntN(len(w.ids[id]))]
	mv := Move{ID: name, Due: w.dueIn(), Req: w.rng.Uint64() | 1}
	w.send(id, "reschedule "+name, func(h *simShard) {
		op := w.sent(simReschedule, name, mv.Due.UnixMilli())
		ctx, cancel := context.WithTimeout(context.Background(), simHang)
		res := h.sh.Reschedule(ctx, simNamespace, []Move{mv})
		cancel()
		w.answered(op, res[0], h)
	})
}

func (w *simWorld) cancel() {
	id := w.rng.IntN(simShards)
	if len(w.ids[id]) == 0 {
		return
	}
	i := w.rng.IntN(len(w.ids[id]))
	name := w.ids[id][i]
	sent := w.send(id, "cancel "+name, func(h *simShard) {
		op := w.sent(simCancel, name, 0)
		ctx, cancel := context.WithTimeout(context.Background(), simHang)
		errs := h.sh.Cancel(ctx, simNamespace, []string{name})
		cancel()
		w.answered(op, Result{Err: errs[0]}, h)
	})
	if sent {
		// The id is retired whatever the outcome: it is never
		// scheduled again, so every delivery after an acknowledged
		// cancel is one too many.
		w.ids[id] = slices.Delete(w.ids[id], i, i+1)
	}
}

// ack acks what one node's subscriber holds, through the shard's holder
// (the server forwards an ack to the owner); with lossy, some acks are
// lost on the way.
func (w *simWorld) ack(lossy bool) {
	n := w.nodes[w.rng.IntN(len(w.nodes))]
	if !n.live() {
		return
	}
	n.sub.mu.Lock()
	inbox := n.sub.inbox
	n.sub.inbox = nil
	n.sub.mu.Unlock()
	byShard := map[uint32][]DeliveryID{}
	lost := 0
	for _, d := range inbox {
		if lossy && w.rng.IntN(2) == 0 {
			lost++
			continue
		}
		id, err := ParseDeliveryID(d.ID)
		if err != nil {
			w.t.Fatalf("seed %d: delivery id %q: %v", w.seed, d.ID, err)
		}
		byShard[d.Shard] = append(byShard[d.Shard], id)
	}
	w.tracef("%s acks %d deliveries, loses %d", n.name, len(inbox)-lost, lost)
	w.countN("lost acks", lost)
	for id := range simShards {
		ids := byShard[uint32(id)]
		h := w.route(id)
		if len(ids) == 0 || h == nil {
			continue
		}
		c, err := h.sh.Ack(ids)
		if err != nil || c == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), simHang)
		_ = c.Wait(ctx) // a failed ack is a lost one: redelivered later
		cancel()
	}
}

// disconnect drops a node's subscriber stream: what it holds unacked is
// returned to the shards that sent it, and it connects again.
func (w *simWorld) disconnect() {
	n := w.nodes[w.rng.IntN(len(w.nodes))]
	if !n.live() {
		return
	}
	n.sub.mu.Lock()
	inbox := n.sub.inbox
	n.sub.inbox = nil
	n.sub.mu.Unlock()
	w.tracef("%s's subscriber disconnects with %d unacked", n.name, len(inbox))
	w.countN("returned", len(inbox))
	byShard := map[uint32][]Attempt{}
	for _, d := range inbox {
		id, err := ParseDeliveryID(d.ID)
		if err != nil {
			w.t.Fatalf("seed %d: delivery id %q: %v", w.seed, d.ID, err)
		}
		byShard[d.Shard] = append(byShard[d.Shard], Attempt{ID: id, Number: d.Attempt})
	}
	for _, s := range n.shards {
		if a := byShard[s.sh.ID()]; len(a) > 0 {
			s.sh.Return(a)
		}
	}
}

// toggleSubscriber disconnects a node's subscriber for good, or connects
// it again (and tells the node's shards, whose due timers waited).
func (w *simWorld) toggleSubscriber() {
	n := w.nodes[w.rng.IntN(len(w.nodes))]
	if !n.live() {
		return
	}
	n.sub.mu.Lock()
	n.sub.open = !n.sub.open
	open := n.sub.open
	n.sub.mu.Unlock()
	w.tracef("%s's subscriber open=%v", n.name, open)
	if open {
		for _, s := range n.shards {
			s.sh.Ready(simNamespace, simTopic)
		}
	}
}

// crash kills a node: its shards stop where they are, holding their
// leases until they lapse.
func (w *simWorld) crash() {
	n := w.nodes[w.rng.IntN(len(w.nodes))]
	if n.crashed {
		return
	}
	w.tracef("crash %s", n.owner())
	w.count("crashes")
	for _, s := range n.shards {
		s.sh.Abandon()
	}
	n.com.Close()
	n.crashed, n.shards, n.queued = true, nil, nil
}

// restart starts a crashed node again under a new incarnation.
func (w *simWorld) restart() {
	for _, n := range w.nodes {
		if n.crashed {
			n.inc++
			w.start(n)
			w.tracef("restart %s", n.owner())
			return
		}
	}
}

// pause freezes a node's clock: it renews no lease and fires nothing.
func (w *simWorld) pause() {
	n := w.nodes[w.rng.IntN(len(w.nodes))]
	if !n.live() {
		return
	}
	w.tracef("pause %s", n.owner())
	w.count("pauses")
	n.paused = true
}

// resume lets a paused node's clock jump to the true time.
func (w *simWorld) resume() {
	for _, n := range w.nodes {
		if !n.paused {
			continue
		}
		n.paused = false
		w.tracef("resume %s with %d calls waiting", n.owner(), len(n.queued))
		// The clock jumps first, as a process's does, but its alarms go
		// off only after the waiting calls were made: the lease keeper
		// has not run yet when the first request is served.
		w.locked(func() {
			n.clock.mu.Lock()
			n.clock.now = w.world.Now()
			n.clock.mu.Unlock()
		})
		for _, call := range n.queued {
			call()
		}
		n.queued = nil
		w.locked(func() { n.clock.Advance(0) })
		return
	}
}

// move hands a shard over from its holder to another node: Close
// (flush, release), then Open there.
func (w *simWorld) move() {
	id := w.rng.IntN(simShards)
	h := w.route(id)
	to := w.nodes[w.rng.IntN(len(w.nodes))]
	if h == nil || h.sh.Err() != nil || to == h.n || !to.live() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), simHang)
	err := h.sh.Close(ctx)
	cancel()
	w.tracef("move shard %d from %s: close: %v", id, h.n.owner(), err)
	w.count("moves")
	w.open(to, id)
}

// advance moves the true clock and every running node's clock by d.
func (w *simWorld) advance(d time.Duration) {
	w.tracef("advance %v", d)
	w.advanceQuiet(d)
}

// advanceQuiet is advance without a line in the trace.
func (w *simWorld) advanceQuiet(d time.Duration) {
	w.locked(func() {
		w.world.Advance(d)
		for _, n := range w.nodes {
			if n.live() {
				n.clock.Advance(d)
			}
		}
	})
}

// locked runs fn with every open shard's mutex held, so that no step of
// a shard's loop is under way while fn moves clocks.
func (w *simWorld) locked(fn func()) {
	var all []*Shard
	for _, n := range w.nodes {
		for _, s := range n.shards {
			all = append(all, s.sh)
		}
	}
	for _, s := range all {
		s.mu.Lock()
	}
	fn()
	for _, s := range all {
		s.mu.Unlock()
	}
}

// supervise opens every shard whose holder stopped, crashed or is paused
// on a live node; that waits out the old holder's lease.
func (w *simWorld) supervise() {
	var live []*simNode
	for _, n := range w.nodes {
		if n.live() {
			live = append(live, n)
		}
	}
	if len(live) == 0 {
		return
	}
	for id := range simShards {
		if h := w.holder[id]; h != nil && h.n.live() && h.sh.Err() == nil {
			continue
		}
		w.open(live[w.rng.IntN(len(live))], id)
	}
}

// open opens shard id on n and makes it the shard's holder.
func (w *simWorld) open(n *simNode, id int) {
	cfg := LocalConfig(uint32(id), n.owner())
	cfg.Store, cfg.Committer, cfg.Dispatcher, cfg.Clock = w.st, n.com, n.sub, n.clock
	ctx, cancel := context.WithTimeout(context.Background(), simHang)
	sh, err := Open(ctx, cfg)
	cancel()
	if err != nil {
		if !errors.Is(err, store.ErrLeaseHeld) {
			w.tracef("open shard %d on %s: %v", id, n.owner(), err)
		}
		return
	}
	w.tracef("open shard %d on %s: epoch %d, %d timers", id, n.owner(), sh.Epoch(), sh.Stats().Timers)
	w.count("opens")
	if sh.Epoch() <= w.maxEpoch[id] {
		w.problemf("shard %d opened at epoch %d, not past epoch %d opened before", id, sh.Epoch(), w.maxEpoch[id])
	}
	w.maxEpoch[id] = max(w.maxEpoch[id], sh.Epoch())
	s := &simShard{n: n, sh: sh}
	n.shards = append(n.shards, s)
	w.holder[id] = s
	n.sub.mu.Lock()
	open := n.sub.open
	n.sub.mu.Unlock()
	if open {
		sh.Ready(simNamespace, simTopic)
	}
}

// quiesce waits until every goroutine the clocks woke is done with it
// and every running shard's loop has stepped since, then forgets the
// shards that stopped.
func (w *simWorld) quiesce() {
	deadline := time.Now().Add(simHang)
	for {
		idle := true
		for _, n := range w.nodes {
			if !n.crashed && !n.clock.idle() {
				idle = false
			}
		}
		if idle {
			break
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("seed %d: the shards' goroutines did not settle within %v\n%s", w.seed, simHang, w.traceTail())
		}
		time.Sleep(20 * time.Microsecond)
	}
	for _, n := range w.nodes {
		if n.paused || n.crashed {
			continue
		}
		for _, s := range n.shards {
			s.sh.settle()
		}
		n.shards = slices.DeleteFunc(n.shards, func(s *simShard) bool {
			if err := s.sh.Err(); err != nil {
				s.sh.Abandon() // stopped: wait for its goroutines
				return true
			}
			return false
		})
	}
}

// checkOwners checks that at most one instance of each shard could
// dispatch now: unstopped, with a lease valid by the true clock (a paused
// node's clock jumps to the true time when it resumes).
func (w *simWorld) checkOwners() {
	now := w.world.Now()
	var able [simShards][]string
	for _, n := range w.nodes {
		if n.crashed {
			continue
		}
		for _, s := range n.shards {
			s.sh.mu.Lock()
			if s.sh.stopErr == nil && now.Before(s.sh.validUntil) {
				able[s.sh.id] = append(able[s.sh.id], fmt.Sprintf("%s@%d", n.owner(), s.sh.grant.Epoch))
			}
			s.sh.mu.Unlock()
		}
	}
	for id, a := range able {
		if len(a) > 1 {
			w.problemf("shard %d has %d owners able to dispatch at once: %s", id, len(a), strings.Join(a, ", "))
		}
	}
}

// drain heals every fault (nodes resumed and restarted, subscribers
// connected), then moves time on in short steps, acking everything,
// until every timer has come due, been redelivered past any lost ack
// and been acked.
func (w *simWorld) drain() {
	w.tracef("drain")
	for _, n := range w.nodes {
		if n.paused {
			w.resume()
		}
	}
	for _, n := range w.nodes {
		if n.crashed {
			w.restart()
		}
		n.sub.mu.Lock()
		n.sub.open = true
		n.sub.mu.Unlock()
		for _, s := range n.shards {
			s.sh.Ready(simNamespace, simTopic)
		}
	}
	// The latest due time is at most 10s ahead; a lapsed lease, the
	// backoffs of lost acks and the redeliveries take a few more.
	for range 120 {
		w.supervise()
		w.quiesce()
		for _, n := range w.nodes {
			for _, s := range n.shards {
				s.sh.Ready(simNamespace, simTopic)
			}
		}
		for _, n := range w.nodes {
			w.ackAll(n)
		}
		w.advanceQuiet(250 * time.Millisecond)
		w.quiesce()
		w.checkOwners()
	}
	w.supervise()
	w.quiesce()
	for id := range simShards {
		h := w.route(id)
		if h == nil || h.sh.Err() != nil {
			w.problemf("shard %d has no holder after the drain", id)
			continue
		}
		// Every timer came due, and every delivery was acked or its
		// timer ran out of attempts: none may be left pending or in
		// flight.
		if st := h.sh.Stats(); st.Timers != st.Dead {
			w.problemf("shard %d holds %d timers after the drain (%d in flight), none of them dead letters", id, st.Timers-st.Dead, st.InFlight)
		}
	}
}

// ackAll acks everything n's subscriber holds.
func (w *simWorld) ackAll(n *simNode) {
	n.sub.mu.Lock()
	inbox := n.sub.inbox
	n.sub.inbox = nil
	n.sub.mu.Unlock()
	for _, d := range inbox {
		id, err := ParseDeliveryID(d.ID)
		if err != nil {
			w.t.Fatalf("seed %d: delivery id %q: %v", w.seed, d.ID, err)
		}
		if h := w.route(int(d.Shard)); h != nil {
			if c, err := h.sh.Ack([]DeliveryID{id}); err == nil && c != nil {
				ctx, cancel := context.WithTimeout(context.Background(), simHang)
				_ = c.Wait(ctx)
				cancel()
			}
		}
	}
}

// sent records a call about to be made and returns its index.
func (w *simWorld) sent(kind simOpKind, id string, due int64) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seq++
	retry := false
	for i := range w.ops {
		retry = retry || (kind == simSchedule && w.ops[i].kind == simSchedule && w.ops[i].id == id)
	}
	w.ops = append(w.ops, simOp{kind: kind, id: id, due: due, sent: w.seq, retry: retry})
	return len(w.ops) - 1
}

// answered records the outcome of call i, made to h. A call that
// succeeded is held to the due time it answered with: a retried
// Schedule answers with the due time of the timer it finds, which a
// Reschedule may have moved.
func (w *simWorld) answered(i int, res Result, h *simShard) {
	l, lerr := w.st.Lease(context.Background(), h.sh.ID())
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seq++
	op := &w.ops[i]
	op.ans, op.err = w.seq, res.Err
	op.outcome = simOutcomeOf(res.Err)
	w.counts[op.kind.String()+" "+op.outcome.String()]++
	if errors.Is(res.Err, ErrFenced) || errors.Is(res.Err, ErrNotOwner) {
		w.counts["calls refused by a stopped or fenced shard"]++
	}
	if op.outcome == simOK && op.kind != simCancel {
		op.due = res.Due.UnixMilli()
	}
	// An answer that tells the caller something about the timer (done,
	// not found, exists, dead) must come from the shard's owner: no
	// clock moves during a call, so the lease now is the lease while it
	// was served. A write of a node that lost the lease is fenced; an
	// answer from its memory alone is not, and may be stale.
	if op.outcome == simOK || errors.Is(res.Err, ErrNotFound) || errors.Is(res.Err, ErrExists) || errors.Is(res.Err, ErrDead) {
		if lerr != nil || l.Owner != h.n.owner() || l.Epoch != h.sh.Epoch() {
			p := fmt.Sprintf("%s %s answered %v by %s@%d, when the store's lease was %q at epoch %d",
				op.kind, op.id, simAnswer(res.Err), h.n.owner(), h.sh.Epoch(), l.Owner, l.Epoch)
			w.problems = append(w.problems, p)
			w.traceLocked("PROBLEM: " + p)
		}
	}
	err := res.Err
	due := ""
	if op.kind != simCancel {
		due = " due " + w.simTime(time.UnixMilli(op.due))
	}
	w.traceLocked(fmt.Sprintf("%s %s%s on %s@%d: %v (%v)", op.kind, op.id, due, h.n.owner(), h.sh.Epoch(), op.outcome, err))
}

// simAnswer names what err told a caller.
func simAnswer(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// simOutcomeOf classifies a call's error as its caller must read it.
func simOutcomeOf(err error) simOutcome {
	switch {
	case err == nil:
		return simOK
	case errors.Is(err, store.ErrClosed), errors.Is(err, store.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		// The group commit gave the write up or was closed under it:
		// it may have been applied.
		return simIndeterminate
	case errors.Is(err, ErrNotOwner), errors.Is(err, ErrFenced), errors.Is(err, ErrExists),
		errors.Is(err, ErrNotFound), errors.Is(err, ErrDead), errors.Is(err, store.ErrOverloaded):
		return simFailed
	}
	return simIndeterminate
}

// delivered records a dispatch by node n and checks the lease in the
// store at that instant. It is called with the dispatching shard's mutex
// held, so no clock moves meanwhile.
func (w *simWorld) delivered(n *simNode, d Delivery) {
	l, err := w.st.Lease(context.Background(), d.Shard)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seq++
	now := w.world.Now()
	w.dels = append(w.dels, simDelivery{Delivery: d, node: n.owner(), seq: w.seq, at: now})
	w.counts["deliveries"]++
	w.traceLocked(fmt.Sprintf("deliver %s due %s attempt %d by %s@%d at %s", d.TimerID, w.simTime(d.Due), d.Attempt, n.owner(), d.Epoch, w.simTime(now)))
	switch {
	case err != nil:
		w.problems = append(w.problems, fmt.Sprintf("lease of shard %d: %v", d.Shard, err))
	case l.Owner != n.owner() || l.Epoch != d.Epoch:
		w.problems = append(w.problems, fmt.Sprintf("%s dispatched %s of shard %d under epoch %d at %s, when the store's lease was %q at epoch %d",
			n.owner(), d.TimerID, d.Shard, d.Epoch, w.simTime(now), l.Owner, l.Epoch))
	}
}

// simEpoch is when every run starts: where newFakeClock starts.
var simEpoch = newFakeClock().Now()

// simTime renders t as an offset from the start of the run.
func (w *simWorld) simTime(t time.Time) string {
	return "T" + t.Sub(simEpoch).String()
}

// count adds one to the figure name.
func (w *simWorld) count(name string) { w.countN(name, 1) }

func (w *simWorld) countN(name string, n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.counts[name] += n
}

func (w *simWorld) problemf(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := fmt.Sprintf(format, args...)
	w.problems = append(w.problems, p)
	w.traceLocked("PROBLEM: " + p)
}

func (w *simWorld) tracef(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.traceLocked(fmt.Sprintf(format, args...))
}

func (w *simWorld) traceLocked(line string) {
	w.trace = append(w.trace, fmt.Sprintf("%s %s", w.simTime(w.world.Now()), line))
}

// traceTail returns the last simTraceKeep lines of the trace.
func (w *simWorld) traceTail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	tail := w.trace[max(0, len(w.trace)-simTraceKeep):]
	return "  " + strings.Join(tail, "\n  ")
}

// simVerdict is the oracle's finding over one run.
type simVerdict struct {
	lost, unexpected, early, cancelledFired int
	duplicates, indeterminateDelivered      int
	deliveries, acked                       int
	lateP50, lateP99, lateMax               time.Duration
	problems                                []string
	examples                                []string // the first few violations
}

func (v *simVerdict) ok() bool {
	return v.lost == 0 && v.unexpected == 0 && v.early == 0 && v.cancelledFired == 0 && len(v.problems) == 0
}

func (v *simVerdict) line() string {
	s := fmt.Sprintf("lost=%d unexpected=%d early=%d cancelled-fired=%d owner-problems=%d duplicates=%d indeterminate-delivered=%d deliveries=%d acked-timers=%d lateness p50=%v p99=%v max=%v",
		v.lost, v.unexpected, v.early, v.cancelledFired, len(v.problems), v.duplicates, v.indeterminateDelivered,
		v.deliveries, v.acked, v.lateP50, v.lateP99, v.lateMax)
	for _, p := range v.problems[:min(len(v.problems), 5)] {
		s += "\n  problem: " + p
	}
	for _, e := range v.examples {
		s += "\n  " + e
	}
	return s
}

func (v *simVerdict) example(format string, args ...any) {
	if len(v.examples) < 5 {
		v.examples = append(v.examples, fmt.Sprintf(format, args...))
	}
}

// judge applies the oracle to the ledger.
func (w *simWorld) judge() *simVerdict {
	w.mu.Lock()
	defer w.mu.Unlock()
	v := &simVerdict{problems: slices.Clone(w.problems), deliveries: len(w.dels)}
	opsOf := map[string][]*simOp{}
	for i := range w.ops {
		op := &w.ops[i]
		opsOf[op.id] = append(opsOf[op.id], op)
	}
	delsOf := map[string][]*simDelivery{}
	seen := map[string]bool{} // occurrences delivered
	var late []time.Duration
	lastEpoch := map[uint32]uint64{}
	for i := range w.dels {
		d := &w.dels[i]
		delsOf[d.TimerID] = append(delsOf[d.TimerID], d)
		if d.Epoch < lastEpoch[d.Shard] {
			v.problems = append(v.problems, fmt.Sprintf("shard %d dispatched under epoch %d after epoch %d", d.Shard, d.Epoch, lastEpoch[d.Shard]))
		}
		lastEpoch[d.Shard] = max(lastEpoch[d.Shard], d.Epoch)
		if seen[d.ID] {
			v.duplicates++
		} else {
			seen[d.ID] = true
			if !d.Waited {
				late = append(late, d.at.Sub(d.Due))
			}
		}
		if d.at.Before(d.Due) {
			v.early++
			v.example("early: %s due %s delivered at %s by %s", d.TimerID, w.simTime(d.Due), w.simTime(d.at), d.node)
		}
		w.judgeDelivery(v, d, opsOf[d.TimerID])
	}
	for id, ops := range opsOf {
		w.judgeTimer(v, id, ops, delsOf[id])
	}
	slices.Sort(late)
	if n := len(late); n > 0 {
		v.lateP50, v.lateP99, v.lateMax = late[n/2], late[n*99/100], late[n-1]
	}
	return v
}

// judgeDelivery checks one delivery against the calls about its timer.
func (w *simWorld) judgeDelivery(v *simVerdict, d *simDelivery, ops []*simOp) {
	due := d.Due.UnixMilli()
	asked := false // some schedule or reschedule that may have applied gave this due
	var last *simOp
	for _, op := range ops {
		if op.kind == simCancel {
			if op.outcome == simOK && op.ans < d.seq {
				v.cancelledFired++
				v.example("cancelled-fired: %s delivered by %s after its cancel was acknowledged", d.TimerID, d.node)
				return
			}
			continue
		}
		if op.outcome != simFailed && op.due == due && op.sent < d.seq {
			asked = true
		}
		if op.outcome == simOK && op.ans < d.seq && !(op.retry && last != nil) {
			last = op
		}
	}
	if !asked {
		v.unexpected++
		v.example("unexpected: %s due %s delivered by %s: no call that may have applied asked for that due time", d.TimerID, w.simTime(d.Due), d.node)
		return
	}
	if last == nil || last.due == due {
		return
	}
	// An acknowledged call set another due time before this delivery:
	// only a call sent after it may have set this one again.
	for _, op := range ops {
		if op.kind != simCancel && op.outcome != simFailed && op.due == due && op.sent > last.sent {
			return
		}
	}
	v.unexpected++
	v.example("unexpected: %s delivered due %s by %s after a %s to %s was acknowledged",
		d.TimerID, w.simTime(d.Due), d.node, last.kind, w.simTime(time.UnixMilli(last.due)))
}

// judgeTimer checks that a timer acknowledged and not cancelled was
// delivered at the due time it was last given.
func (w *simWorld) judgeTimer(v *simVerdict, id string, ops []*simOp, dels []*simDelivery) {
	var last *simOp
	for _, op := range ops {
		switch {
		case op.kind == simCancel && op.outcome != simFailed:
			return // cancelled, or may have been
		case op.kind != simCancel && op.outcome == simOK && !(op.retry && last != nil):
			last = op
		}
	}
	if last == nil {
		for _, op := range ops {
			if op.outcome == simIndeterminate && len(dels) > 0 {
				v.indeterminateDelivered++
				break
			}
		}
		return
	}
	v.acked++
	want := map[int64]bool{last.due: true}
	for _, op := range ops {
		if op.kind != simCancel && op.outcome == simIndeterminate && op.sent > last.sent {
			want[op.due] = true
		}
	}
	for _, d := range dels {
		if want[d.Due.UnixMilli()] {
			return
		}
	}
	v.lost++
	v.example("lost: %s, last acknowledged %s due %s, delivered %d times at other due times", id, last.kind, w.simTime(time.UnixMilli(last.due)), len(dels))
}
