package server

import (
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/reload"
	"github.com/timerd/timerd/shard"
)

// Limits bounds what one namespace may take of the cluster, and how many
// subscribers one node serves. The namespace limits are off by default.
//
// # How the namespace limits are counted across a cluster
//
// All are enforced where a timer's shard is served, by the node that
// owns it, on the items of that node's shards (forwarded items included),
// each node taking its share of the limit: the fraction of the cluster's
// shards that the ring gives it (1 for a single node). A namespace's ids
// hash evenly over the shards, so each node sees about its share of the
// namespace's timers and schedules, and the shares add up to the limit
// (while shards move, a node's share counts the larger of the shards it
// should serve and those it serves, so the sum can briefly exceed it):
//
//   - MaxPending: a node admits a timer of namespace N while the timers of
//     N on its serving shards (their in-memory counts, see shard.Census)
//     plus those admitted and not yet counted stay under
//     ceil(MaxPending × share). The shares sum to at most MaxPending plus
//     one per member, so the cluster never holds more than that through
//     Schedule (shards moving between members carry their timers with
//     them, and a node over its share then only refuses more). Hashing
//     spreads the ids unevenly by about √(MaxPending × share) per node,
//     which is how far below MaxPending the first refusals can come.
//   - ScheduleRate: a token bucket per namespace and node, filled at
//     ScheduleRate × share per second up to max(1, ScheduleBurst × share).
//     The cluster admits at most ScheduleRate per second plus the
//     members' bursts, whichever node the clients send to, since the
//     items go to their owners.
//   - DeliverRate: a token bucket per namespace and node, filled at
//     DeliverRate × share per second up to max(1, DeliverBurst × share),
//     from which each delivery of the node's shards takes one, whichever
//     node its subscriber is connected to (a relayed delivery is counted
//     where its shard is served, once). Redeliveries count.
//
// Idempotent retries of a stored timer are counted like new timers: a
// namespace at its limit is refused those too, and retries later.
//
// MaxPending, ScheduleRate, ScheduleBurst, DeliverRate and DeliverBurst
// are every namespace's limits unless Config.NamespaceLimitsFile gives it
// its own (see nslimits.go). A limit changed there while the node runs
// applies from the next Schedule on (a delivery rate within
// paceRecheck), and touches nothing stored: a namespace that holds more
// than its new MaxPending is refused new timers until it holds less.
type Limits struct {
	// MaxPending is the most timers one namespace may hold across the
	// cluster, in flight and dead letters included (default 0: no limit).
	// Past it Schedule items fail with RESOURCE_EXHAUSTED and a retry
	// delay of PendingRetryDelay.
	MaxPending int
	// ScheduleRate is how many timers per second one namespace may
	// schedule across the cluster (default 0: no limit), and
	// ScheduleBurst how many it may schedule at once (default 0, which
	// means one second's worth: ScheduleRate). Past them Schedule items
	// fail with RESOURCE_EXHAUSTED and the delay after which the rate
	// admits them.
	ScheduleRate  float64
	ScheduleBurst int
	// DeliverRate is how many of one namespace's timers per second the
	// cluster delivers (default 0: no limit), and DeliverBurst how many it
	// may deliver at once (default 0, which means a hundredth of a
	// second's worth of DeliverRate, at least 1). A namespace's timers
	// past them stay due in their shards, in order, and go out as the
	// rate allows: a herd of them then takes its time, and leaves the
	// node's processors to other namespaces meanwhile (see pacer).
	DeliverRate  float64
	DeliverBurst int
	// MaxSubscribeStreams is the most Subscribe streams one node serves
	// at once (default 10,000); one more fails with RESOURCE_EXHAUSTED
	// and a retry delay of StreamRetryDelay. Each stream costs a few
	// goroutines and its deliveries' memory.
	MaxSubscribeStreams int
}

// Retry delays of the limits that have no rate to compute one from.
const (
	// PendingRetryDelay is the retry delay of an item refused because its
	// namespace holds MaxPending timers: they go as they fire and are
	// acked, at a pace the server does not know.
	PendingRetryDelay = time.Second
	// StreamRetryDelay is the retry delay of a Subscribe stream refused
	// because the node serves MaxSubscribeStreams.
	StreamRetryDelay = 5 * time.Second
)

// DefaultLimits returns the defaults documented on Limits.
func DefaultLimits() Limits {
	return Limits{MaxSubscribeStreams: 10_000}
}

// validate reports the first invalid field through bad.
func (l Limits) validate(bad func(field, format string, args ...any) error) error {
	if err := l.checkNS(configLimitFields, bad); err != nil {
		return err
	}
	if l.MaxSubscribeStreams < 1 {
		return bad("Limits.MaxSubscribeStreams", "must be >= 1, got %d", l.MaxSubscribeStreams)
	}
	return nil
}

// nsLimit returns the namespace limits of l: those of every namespace
// the limits file does not name.
func (l Limits) nsLimit() nsLimit {
	return nsLimit{
		maxPending: l.MaxPending,
		schedule:   newRateLimit(l.ScheduleRate, l.ScheduleBurst, scheduleBurstSeconds),
		deliver:    newRateLimit(l.DeliverRate, l.DeliverBurst, deliverBurstSeconds),
	}
}

// limiter enforces Limits on one node. Its methods may be called
// concurrently; Count is called under shards' locks and does not block
// on anything but its own map.
type limiter struct {
	// cfg holds the flags' limits, which file overrides per namespace.
	cfg Limits
	// file is the namespace limits file, reloaded as it changes; nil
	// without one.
	file *reload.Value[nsLimits]
	// share returns the shards the ring gives this node and the cluster's
	// shard count.
	share func() (held, total uint32)
	m     *metrics

	// streams counts the Subscribe streams being served.
	streams atomic.Int64
	// timers counts each namespace's timers on this node's serving
	// shards, as they report them: namespace -> *atomic.Int64.
	timers sync.Map

	mu sync.Mutex
	// now tells the time of the rate buckets. Guarded by mu (tests set
	// it).
	now func() time.Time
	// budgets holds the namespaces' reservations and rate buckets; idle
	// ones are swept once it reaches sweepAt entries. Guarded by mu.
	budgets map[string]*nsBudget
	sweepAt int
}

// nsBudget is one namespace's state at the limiter.
type nsBudget struct {
	// reserved counts timers admitted whose shards have not counted them
	// yet (see admit).
	reserved int
	// bucket is the rate's. Invariant: its tokens are +Inf while the
	// namespace has no rate, so that a rate it is given later (the
	// limits file reloaded) starts from a full bucket.
	bucket
}

// minSweep is the smallest budgets map that is swept.
const minSweep = 1024

// newLimiter returns the limiter of cfg and of the namespace limits file
// at path ("": none), which it reads now; an invalid file is an error
// that names the namespace and field at fault.
func newLimiter(cfg Limits, path string, share func() (held, total uint32), m *metrics, log *slog.Logger) (*limiter, error) {
	l := &limiter{cfg: cfg, share: share, now: time.Now, m: m, budgets: make(map[string]*nsBudget), sweepAt: minSweep}
	if path != "" {
		v, err := reload.New(func() (nsLimits, error) { return readNSLimits(path) }, LimitsReloadInterval, log, path)
		if err != nil {
			return nil, err
		}
		l.file = v
	}
	return l, nil
}

// overrides returns the limits file's entries as of now (none without a
// file).
func (l *limiter) overrides() nsLimits {
	if l.file == nil {
		return nil
	}
	return l.file.Get()
}

// census returns the limiter as the shards' census when MaxPending needs
// their counts, or nil: with no limit the shards count for no one. With
// a limits file they always count, since a reload may set a MaxPending
// at any time.
func (l *limiter) census() shard.Census {
	if l.cfg.MaxPending == 0 && l.file == nil {
		return nil
	}
	return l
}

// Count implements shard.Census.
func (l *limiter) Count(namespace string, delta int) {
	v, ok := l.timers.Load(namespace)
	if !ok {
		v, _ = l.timers.LoadOrStore(namespace, new(atomic.Int64))
	}
	v.(*atomic.Int64).Add(int64(delta))
}

// pending returns the timers of namespace on this node's serving shards.
func (l *limiter) pending(namespace string) int {
	if v, ok := l.timers.Load(namespace); ok {
		return int(v.(*atomic.Int64).Load())
	}
	return 0
}

// admit applies the namespace limits to the items of a Schedule this
// node serves: it returns the parts with the items admitted, and fills
// out for the items refused. release must be called once the admitted
// parts are submitted to their shards, which count them from then on.
func (l *limiter) admit(local []localPart, specs []shard.Spec, out []*pb.ItemResult) (admitted []localPart, release func()) {
	if l.file == nil && l.cfg.nsLimit().admitsAll() || len(local) == 0 {
		return local, func() {}
	}
	files := l.overrides()
	held, total := l.share()
	frac := float64(held) / float64(total)

	reserved := map[string]int{}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if len(l.budgets) >= l.sweepAt {
		l.sweepLocked(now, frac, files)
	}
	// Items are decided in request order, so that a batch cut short by a
	// limit keeps its first items.
	var all []int
	for _, lp := range local {
		all = append(all, lp.items...)
	}
	slices.Sort(all)
	refusedItem := map[int]bool{}
	var (
		ns      string
		lim     nsLimit // ns's limits across the cluster
		b       *nsBudget
		pending int
		refused int // items of ns refused by the rate so far
		// ns's share of its limits on this node
		maxPending  int
		rate, burst float64
	)
	for _, i := range all {
		if sp := &specs[i]; b == nil || sp.Namespace != ns {
			ns, refused = sp.Namespace, 0
			lim = files.limit(ns, l.cfg)
			maxPending, rate, burst = lim.share(frac)
			b = l.budgetLocked(ns, now, rate, burst)
			pending = l.pending(ns)
		}
		switch {
		case rate > 0 && b.tokens < 1:
			refused++
			wait := time.Duration((float64(refused) - b.tokens) / rate * float64(time.Second))
			out[i] = limited(specs[i].ID, wait, "namespace %q reached its schedule rate of %g timers/s (%.3g/s with a burst of %.3g on this node, which serves %d of %d shards); retry in %v",
				ns, lim.schedule.rate, rate, burst, held, total, wait.Round(time.Millisecond))
			l.m.ns(ns).limitedRate.Inc()
			refusedItem[i] = true
		case lim.maxPending > 0 && pending+b.reserved >= maxPending:
			out[i] = limited(specs[i].ID, PendingRetryDelay, "namespace %q holds its limit of %d pending timers (%d on this node, which serves %d of %d shards); retry once some have fired",
				ns, lim.maxPending, maxPending, held, total)
			l.m.ns(ns).limitedPending.Inc()
			refusedItem[i] = true
		default:
			if rate > 0 {
				b.tokens--
			}
			b.reserved++
			reserved[ns]++
		}
	}
	for _, lp := range local {
		if len(refusedItem) == 0 {
			admitted = local
			break
		}
		kept := slices.DeleteFunc(slices.Clone(lp.items), func(i int) bool { return refusedItem[i] })
		if len(kept) > 0 {
			admitted = append(admitted, localPart{part: part{shard: lp.shard, items: kept}, sh: lp.sh})
		}
	}
	return admitted, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for ns, n := range reserved {
			l.budgets[ns].reserved -= n
		}
	}
}

// share returns a node's share of l's Schedule limits, for a node that
// serves frac of the cluster's shards: the pending timers it admits, and
// the rate and burst of its bucket (0 for no limit).
func (l nsLimit) share(frac float64) (maxPending int, rate, burst float64) {
	rate, burst = l.schedule.share(frac)
	return shareOf(l.maxPending, frac), rate, burst
}

// budgetLocked returns namespace's budget with its bucket filled up to
// now, for a rate and burst of this node's (rate 0: no limit).
func (l *limiter) budgetLocked(namespace string, now time.Time, rate, burst float64) *nsBudget {
	b := l.budgets[namespace]
	if b == nil {
		b = &nsBudget{bucket: bucket{tokens: burst, at: now}}
		l.budgets[namespace] = b
	}
	b.fill(now, rate, burst)
	b.tokens = min(b.tokens, burst) // the share, or the limit, may have shrunk
	if rate == 0 {
		b.tokens = math.Inf(1)
	}
	return b
}

// sweepLocked drops the budgets that hold nothing a new one would not:
// no reservation and a full bucket. It keeps the map within twice the
// namespaces in use, at O(1) amortized per budget made.
func (l *limiter) sweepLocked(now time.Time, frac float64, files nsLimits) {
	for ns, b := range l.budgets {
		_, rate, burst := files.limit(ns, l.cfg).share(frac)
		if b.reserved == 0 && (rate == 0 || b.fullAt(now, rate, burst)) {
			delete(l.budgets, ns)
		}
	}
	l.sweepAt = max(minSweep, 2*len(l.budgets))
}

// limited is the result of an item refused by a namespace limit.
func limited(id string, retry time.Duration, format string, args ...any) *pb.ItemResult {
	return &pb.ItemResult{
		Id:         id,
		Code:       int32(codes.ResourceExhausted),
		Message:    fmt.Sprintf(format, args...),
		RetryDelay: durationpb.New(retry),
	}
}

// stream is a stream interceptor that bounds the Subscribe streams the
// node serves at once to MaxSubscribeStreams.
func (l *limiter) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.FullMethod != pb.TimerService_Subscribe_FullMethodName {
		return handler(srv, ss)
	}
	if n := l.streams.Add(1); n > int64(l.cfg.MaxSubscribeStreams) {
		l.streams.Add(-1)
		l.m.streamsRefused.Inc()
		return retryStatus(codes.ResourceExhausted, StreamRetryDelay,
			"this node serves its limit of %d Subscribe streams (--max-subscribe-streams); retry later or on another node", l.cfg.MaxSubscribeStreams)
	}
	defer l.streams.Add(-1)
	return handler(srv, ss)
}

// retryStatus is an error status whose details carry a RetryInfo.
func retryStatus(c codes.Code, retry time.Duration, format string, args ...any) error {
	st := status.Newf(c, format, args...)
	if ds, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)}); err == nil {
		st = ds
	}
	return st.Err()
}

// shardShare returns the shards this node holds and the cluster's shard
// count: the share of the namespace limits it enforces. While shards
// move, it holds the larger of those it should serve and those it
// serves, so that a node handing shards over, or one whose new shards
// are still loading, has a share for the shards it serves.
func (s *Server) shardShare() (held, total uint32) {
	wanted, serving := s.node.Counts()
	return uint32(max(wanted, serving)), s.cfg.Shards
}
