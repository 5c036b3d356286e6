package server

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/timerd/timerd/shard"
)

// paceRecheck is how long a namespace's delivery rate is used before the
// pacer looks at the limits, and at the node's share of the cluster's
// shards, again (100ms): deliveries do not each read them, and a rate
// changed in the limits file applies within that.
const paceRecheck = 100 * time.Millisecond

// paceStep is how many deliveries the pacer counts on each shard it
// wakes: that many tokens wake one starved shard. A shard without a
// turn at a herd hands out about that many in one light step (see
// shard.Turns), and waking fewer shards for more tokens each spares the
// processors the steps that would find none.
const paceStep = 32

// pacer holds the deliveries of this node's shards to each namespace's
// share of its delivery rate (Limits.DeliverRate, deliver_rate in the
// namespace limits file), so that one namespace's herd of due timers
// goes out at a pace the operator chose and leaves the processors to the
// other namespaces meanwhile.
//
// Each namespace with a rate has a token bucket; each delivery takes a
// token, and one refused for want of a token is refused to its shard as
// a subscriber without credit refuses it: the shard keeps it, and every
// later timer of its topic, waiting in order until Ready. The pacer
// remembers each shard and topic it refused, in the order it refused
// them, and once a quarter of the burst (at least one token) is back it
// tells the first of them Ready, one per paceStep tokens: a refused
// shard goes to the back, so the shards holding a herd take turns.
//
// take and giveBack may be called concurrently, from every shard; close
// from the server's shutdown. Namespaces do not share a lock.
type pacer struct {
	l *limiter
	// ready tells shard that a subscriber of key may take deliveries.
	ready func(shard uint32, key topicKey)
	// now is the clock the buckets fill by: time.Now, or a test's. It
	// is set before the pacer is first used, and not changed after.
	now func() time.Time

	// buckets holds each namespace's *paceBucket; made counts those
	// stored since the last sweep, which drops idle ones.
	buckets sync.Map
	made    atomic.Int64

	// mu guards closed, which stops every bucket's timer from being
	// armed again.
	mu     sync.Mutex
	closed bool
}

// paceBucket is one namespace's pace on this node.
type paceBucket struct {
	ns string
	// freeUntil is when (unix ns) the namespace, which had no delivery
	// rate when last checked, is to be checked again; 0 while it has a
	// rate. It spares the deliveries of namespaces without a rate mu.
	freeUntil atomic.Int64

	mu sync.Mutex
	// rate and burst are this node's share of the namespace's delivery
	// rate as of checked (rate 0: no limit). Guarded by mu.
	rate, burst float64
	checked     time.Time
	// bucket is the rate's tokens, when rate > 0. Guarded by mu.
	bucket
	// starved holds the shards' topics refused for want of a token, in
	// the order they were refused, and queued the same as a set.
	// Invariant: queued holds exactly the entries of starved; timer is
	// armed (non-nil) while starved is not empty, until the pacer is
	// closed. Guarded by mu.
	starved []paceWait
	queued  map[paceWait]struct{}
	timer   *time.Timer
}

// paceWait is a shard's topic waiting for tokens.
type paceWait struct {
	shard uint32
	topic string
}

// newPacer returns the pacer of l's delivery rates, or nil when no
// namespace can have one: no flag sets a rate and there is no limits
// file, which could set one at any time.
func newPacer(l *limiter, ready func(shard uint32, key topicKey)) *pacer {
	if l.cfg.DeliverRate == 0 && l.file == nil {
		return nil
	}
	return &pacer{l: l, ready: ready, now: time.Now}
}

// take takes a token for d from its namespace's bucket. It returns false
// when there is none, and then wakes d's shard for d's topic once there
// are; with true it returns the bucket to give the token back to if d is
// not delivered after all (nil when the namespace has no rate).
func (p *pacer) take(d *shard.Delivery) (*paceBucket, bool) {
	b := p.bucket(d.Namespace)
	now := p.now()
	if now.UnixNano() < b.freeUntil.Load() {
		return nil, true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.checked) >= paceRecheck {
		b.mu.Unlock()
		rate, burst := p.limit(b.ns)
		b.mu.Lock()
		b.setLocked(rate, burst, now)
	}
	if b.rate == 0 {
		return nil, true
	}
	b.fill(now, b.rate, b.burst)
	if b.tokens >= 1 {
		b.tokens--
		return b, true
	}
	w := paceWait{d.Shard, d.Topic}
	if _, ok := b.queued[w]; !ok {
		b.queued[w] = struct{}{}
		b.starved = append(b.starved, w)
		p.l.m.ns(b.ns).paced.Inc()
	}
	if b.timer == nil {
		p.armLocked(b, b.tokens)
	}
	return nil, false
}

// giveBack returns the token of a delivery that take allowed and no
// subscriber took.
func (b *paceBucket) giveBack() {
	b.mu.Lock()
	b.tokens = min(b.tokens+1, b.burst)
	b.mu.Unlock()
}

// bucket returns namespace's bucket, made on first use.
func (p *pacer) bucket(namespace string) *paceBucket {
	if v, ok := p.buckets.Load(namespace); ok {
		return v.(*paceBucket)
	}
	v, loaded := p.buckets.LoadOrStore(namespace, &paceBucket{ns: namespace, queued: make(map[paceWait]struct{})})
	if !loaded && p.made.Add(1) >= minSweep {
		p.sweep()
	}
	return v.(*paceBucket)
}

// sweep drops the buckets that hold nothing a new one would not: no
// shard waiting, and no rate or a full bucket. A delivery may still take
// a token from a bucket just dropped; it was full.
func (p *pacer) sweep() {
	p.made.Store(0)
	now := p.now()
	p.buckets.Range(func(k, v any) bool {
		b := v.(*paceBucket)
		b.mu.Lock()
		if len(b.starved) == 0 && (b.rate == 0 || b.fullAt(now, b.rate, b.burst)) {
			p.buckets.Delete(k)
		}
		b.mu.Unlock()
		return true
	})
}

// limit returns namespace's delivery rate and burst on this node, as the
// limits and the node's share of the cluster's shards are now. It may
// read the limits file (see limiter.overrides), so no bucket's mu is held
// while it runs.
func (p *pacer) limit(namespace string) (rate, burst float64) {
	held, total := p.l.share()
	return p.l.overrides().limit(namespace, p.l.cfg).deliver.share(float64(held) / float64(total))
}

// setLocked gives b the rate and burst read at now. A bucket given a
// rate starts full, and one whose rate or burst shrank keeps no more
// than its new burst.
func (b *paceBucket) setLocked(rate, burst float64, now time.Time) {
	if b.rate == 0 && rate > 0 {
		b.bucket = bucket{tokens: burst, at: now}
	}
	b.rate, b.burst, b.checked = rate, burst, now
	b.tokens = min(b.tokens, burst)
	if rate == 0 && len(b.starved) == 0 {
		b.freeUntil.Store(now.Add(paceRecheck).UnixNano())
	} else {
		b.freeUntil.Store(0)
	}
}

// armLocked arms b's timer for when a quarter of its burst (at least a
// token) will be back, from the tokens it has that no shard was woken
// for, or for paceRecheck if that is sooner, unless the pacer is closed.
func (p *pacer) armLocked(b *paceBucket, have float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	want := max(1, b.burst/4)
	wait := time.Duration((want - have) / b.rate * float64(time.Second))
	// Past paceRecheck the limits are read again: a rate lifted or
	// raised frees the shards waiting for a slow one soon.
	b.timer = time.AfterFunc(min(max(wait, 0), paceRecheck), func() { p.wake(b) })
}

// wake reads b's rate anew and tells the first of b's starved shards
// Ready, one per paceStep of the tokens back (all of them when the
// namespace has no rate any more), and arms b's timer again for the
// rest.
func (p *pacer) wake(b *paceBucket) {
	now := p.now()
	rate, burst := p.limit(b.ns)
	b.mu.Lock()
	b.setLocked(rate, burst, now)
	n := len(b.starved)
	if b.rate > 0 {
		b.fill(now, b.rate, b.burst)
		n = 0
		if b.tokens >= 1 {
			n = min(len(b.starved), max(1, int(b.tokens/paceStep)))
		}
	}
	woken := b.starved[:n:n]
	b.starved = b.starved[n:]
	for _, w := range woken {
		delete(b.queued, w)
	}
	b.timer = nil
	if len(b.starved) > 0 {
		// The shards woken take the tokens they were woken for.
		p.armLocked(b, max(0, b.tokens-float64(n*paceStep)))
	}
	b.mu.Unlock()
	for _, w := range woken {
		p.ready(w.shard, topicKey{b.ns, w.topic})
	}
}

// close stops every bucket's timer; none is armed again. A nil pacer
// has none.
func (p *pacer) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.buckets.Range(func(_, v any) bool {
		b := v.(*paceBucket)
		b.mu.Lock()
		if b.timer != nil {
			b.timer.Stop()
		}
		b.mu.Unlock()
		return true
	})
}
