package client

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	timerdv1 "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/ring"
)

// minRefreshGap is the least time between two shard map fetches that
// failed calls asked for: many calls failing at once (a node died) make
// one fetch, not one each.
const minRefreshGap = 100 * time.Millisecond

// membersTimeout and mapTimeout bound the Members and ShardMap calls of
// one fetch from one node. A node asks its peers for their part of the
// map for up to 3s.
const (
	membersTimeout = 2 * time.Second
	mapTimeout     = 5 * time.Second
)

// maxMapAge is how long a settled shard map is trusted while the
// membership stays the same; after that the next poll fetches it again.
const maxMapAge = 30 * time.Second

// conn is the client's connection to one node: to a seed address, or to
// a member at the gRPC address it advertises. Users hold it for the time
// of a call or stream. A member's conn is retired once the member has
// left the shard map's membership, and closed when its last holder
// releases it; a seed's conn lives as long as the Client.
type conn struct {
	addr    string
	seed    bool
	cc      *grpc.ClientConn
	timers  timerdv1.TimerServiceClient
	cluster timerdv1.ClusterServiceClient

	mu      sync.Mutex
	refs    int  // guarded by mu: holders
	retired bool // guarded by mu: no new holders; closed at refs 0
	closed  bool // guarded by mu
}

// hold takes a reference to k and reports whether it is still in use.
func (k *conn) hold() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.retired {
		return false
	}
	k.refs++
	return true
}

// release drops a reference taken by hold.
func (k *conn) release() {
	k.mu.Lock()
	k.refs--
	last := k.retired && k.refs == 0 && !k.closed
	if last {
		k.closed = true
	}
	k.mu.Unlock()
	if last {
		_ = k.cc.Close()
	}
}

// retire refuses new holders and closes the connection once none is
// left, or at once with force (the Client closes).
func (k *conn) retire(force bool) {
	k.mu.Lock()
	k.retired = true
	shut := (force || k.refs == 0) && !k.closed
	if shut {
		k.closed = true
	}
	k.mu.Unlock()
	if shut {
		_ = k.cc.Close()
	}
}

// view is what the client knows of the cluster at one time. It is never
// changed once published.
type view struct {
	// shards is the shard count; 0 while no shard map is known, and then
	// every call goes to home.
	shards uint32
	// route has, per shard, the node its items are sent to; nil sends
	// them to home, which forwards them.
	route []*conn
	// slot has, per shard, the index in targets of the node its items
	// are sent to (route[shard], or home), for split.
	slot    []uint16
	targets []*conn
	// members are the nodes that may hold shards (joining, active or
	// leaving), one conn each; the seeds while no map is known.
	members []*conn
	// home is the node whose answer made the view: calls that concern no
	// one shard go there, and so do those whose shard has no known node.
	home *conn
	// fingerprint of the membership the view was made from; "" while no
	// map is known.
	fingerprint string
	// settled: every shard is served by the node the ring assigns it to.
	settled bool
	made    time.Time
}

// topology keeps the client's connections and its view of the cluster:
// a background goroutine (loop) polls the membership every interval,
// fetches the shard map when the membership changed, while shards move,
// or when a call asked for it (refresh), and publishes a new view.
type topology struct {
	log      *slog.Logger
	dial     []grpc.DialOption
	interval time.Duration
	seeds    []*conn

	cur atomic.Pointer[view]

	ctx    context.Context // of the fetches; cancelled by close
	cancel context.CancelFunc
	want   chan struct{} // a refresh is wanted; capacity 1
	first  chan struct{} // closed once the first fetch has ended
	stop   chan struct{} // closed by close
	done   chan struct{} // closed when loop has returned

	mu sync.Mutex
	// conns are the connections in use, seeds included, by address.
	conns map[string]*conn
	// changed is closed, and replaced, when the members change.
	changed chan struct{}
	// next is closed when the next shard map fetch to begin has ended.
	next chan struct{}
	// lastFull is when the last shard map fetch began (loop only).
	lastFull time.Time
}

// newTopology dials the seeds (without connecting) and starts polling.
func newTopology(seeds []string, dial []grpc.DialOption, interval time.Duration, log *slog.Logger) (*topology, error) {
	ctx, cancel := context.WithCancel(context.Background())
	t := &topology{
		log:      log,
		dial:     dial,
		interval: interval,
		ctx:      ctx,
		cancel:   cancel,
		want:     make(chan struct{}, 1),
		first:    make(chan struct{}),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		conns:    make(map[string]*conn),
		changed:  make(chan struct{}),
		next:     make(chan struct{}),
	}
	for _, addr := range seeds {
		if t.conns[addr] != nil {
			continue
		}
		k, err := t.dialConn(addr, true)
		if err != nil {
			for _, s := range t.seeds {
				s.retire(true)
			}
			cancel()
			return nil, err
		}
		t.conns[addr] = k
		t.seeds = append(t.seeds, k)
	}
	t.cur.Store(&view{members: t.seeds, home: t.seeds[0], made: time.Now()})
	go t.loop()
	return t, nil
}

func (t *topology) dialConn(addr string, seed bool) (*conn, error) {
	cc, err := grpc.NewClient(addr, t.dial...)
	if err != nil {
		return nil, fmt.Errorf("client: connect to %s: %w", addr, err)
	}
	return &conn{addr: addr, seed: seed, cc: cc,
		timers: timerdv1.NewTimerServiceClient(cc), cluster: timerdv1.NewClusterServiceClient(cc)}, nil
}

// close stops the polling and closes every connection; calls under way
// fail.
func (t *topology) close() {
	t.cancel()
	close(t.stop)
	<-t.done
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, k := range t.conns {
		k.retire(true)
	}
}

// view returns the current view.
func (t *topology) view() *view { return t.cur.Load() }

// awaitFirst waits until the first fetch has ended (so that the first
// calls go straight to the owners), ctx ends, or the client closes, and
// reports whether ctx is still live.
func (t *topology) awaitFirst(ctx context.Context) bool {
	select {
	case <-t.first:
	case <-ctx.Done():
		return false
	case <-t.stop:
	}
	return true
}

// refresh asks for a fetch of the shard map and returns a channel closed
// once a fetch that began after the call has ended. At most one fetch
// runs at a time, at most one per minRefreshGap.
func (t *topology) refresh() <-chan struct{} {
	t.mu.Lock()
	ch := t.next
	t.mu.Unlock()
	select {
	case t.want <- struct{}{}:
	default:
	}
	return ch
}

// await waits for ch (from refresh), and reports false if ctx ended
// first. A closing client does not wait.
func (t *topology) await(ctx context.Context, ch <-chan struct{}) bool {
	if ch == nil {
		return ctx.Err() == nil
	}
	select {
	case <-ch:
	case <-t.stop:
	case <-ctx.Done():
		return false
	}
	return true
}

// membersChanged returns the current members and a channel closed when
// they change or the client closes.
func (t *topology) membersChanged() ([]*conn, <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cur.Load().members, t.changed
}

// loop fetches the view at once, then polls every interval and fetches
// when asked to, until close.
func (t *topology) loop() {
	defer close(t.done)
	t.fetch(true)
	close(t.first)
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	for {
		force := false
		select {
		case <-t.stop:
			return
		case <-tick.C:
		case <-t.want:
			force = true
			if d := minRefreshGap - time.Since(t.lastFull); d > 0 {
				w := time.NewTimer(d)
				select {
				case <-w.C:
				case <-t.stop:
					w.Stop()
					return
				}
			}
		}
		t.fetch(force)
	}
}

// fetch asks the home node, then the other members, then the seeds, for
// the membership and, when force is set or the view is not known to be
// current, for the shard map, until one answers; the first answer makes
// the new view. When none answers the view stays as it is.
func (t *topology) fetch(force bool) {
	cur := t.view()
	var full chan struct{} // of the waiters of this fetch, once it asks for a map
	defer func() {
		if full != nil {
			close(full)
		}
	}()
	begin := func() {
		if full == nil {
			t.mu.Lock()
			full, t.next = t.next, make(chan struct{})
			t.mu.Unlock()
			t.lastFull = time.Now()
		}
	}
	if force {
		begin()
	}
	var cands []*conn
	for _, k := range slices.Concat([]*conn{cur.home}, cur.members, t.seeds) {
		if !slices.Contains(cands, k) {
			cands = append(cands, k)
		}
	}
	// Nodes the client is connected to first, those it cannot reach
	// last: a node that vanished without a word can hold a call for the
	// whole connect timeout.
	slices.SortStableFunc(cands, func(a, b *conn) int { return reach(a) - reach(b) })
	var errs []string
	for _, k := range cands {
		if !k.hold() {
			continue
		}
		err := t.fetchFrom(k, cur, force, begin)
		k.release()
		if err == nil {
			return
		}
		if t.ctx.Err() != nil {
			return
		}
		errs = append(errs, fmt.Sprintf("%s: %v", k.addr, err))
	}
	if len(errs) > 0 {
		t.log.LogAttrs(t.ctx, slog.LevelDebug, "timerd cluster map not fetched; keeping the last one",
			slog.String("errs", strings.Join(errs, "; ")))
	}
}

// reach ranks a connection for a fetch: ready, then idle or connecting,
// then failing.
func reach(k *conn) int {
	switch k.cc.GetState() {
	case connectivity.Ready:
		return 0
	case connectivity.Idle, connectivity.Connecting:
		return 1
	}
	return 2
}

// fetchFrom makes the view from what the node at k answers.
func (t *topology) fetchFrom(k *conn, cur *view, force bool, begin func()) error {
	ctx, cancel := context.WithTimeout(t.ctx, membersTimeout)
	mr, err := k.cluster.Members(ctx, &timerdv1.MembersRequest{})
	cancel()
	if err != nil {
		return err
	}
	members := holders(mr.GetMembers())
	if len(members) == 0 {
		return status.Error(codes.Unavailable, "no member may hold shards")
	}
	fp := fingerprint(members)
	if !force && cur.settled && fp == cur.fingerprint && k == cur.home && time.Since(cur.made) < maxMapAge {
		return nil // nothing changed
	}
	begin()
	ctx, cancel = context.WithTimeout(t.ctx, mapTimeout)
	defer cancel()
	sm, err := k.cluster.ShardMap(ctx, &timerdv1.ShardMapRequest{})
	if err != nil {
		return err
	}
	if sm.GetShardCount() == 0 {
		return status.Error(codes.Internal, "a shard map without shards")
	}
	t.install(k, members, sm, fp)
	return nil
}

// holders returns the members that may hold shards: alive or suspect,
// and joining, active or leaving (or of a node that does not say).
func holders(ms []*timerdv1.Member) []*timerdv1.Member {
	var out []*timerdv1.Member
	for _, m := range ms {
		switch m.GetState() {
		case timerdv1.MemberState_MEMBER_STATE_DEAD, timerdv1.MemberState_MEMBER_STATE_LEFT:
			continue
		}
		out = append(out, m)
	}
	return out
}

// fingerprint sums up what of the membership decides the shard map.
func fingerprint(ms []*timerdv1.Member) string {
	keys := make([]string, len(ms))
	for i, m := range ms {
		keys[i] = fmt.Sprintf("%s|%s|%s|%d|%d", m.GetName(), m.GetGrpcAddr(), m.GetIncarnation(), m.GetNodeState(), m.GetState())
	}
	slices.Sort(keys)
	return strings.Join(keys, ";")
}

// install publishes the view made from the answers of the node at k, and
// retires the connections of the members that are gone.
func (t *topology) install(k *conn, members []*timerdv1.Member, sm *timerdv1.ShardMapResponse, fp string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-t.stop:
		return // the client closed meanwhile
	default:
	}
	old := t.cur.Load()
	byName := make(map[string]*conn, len(members))
	if len(members) == 1 {
		// The node that answered is the one member: keep talking to it
		// where the client reached it, whatever address it advertises
		// (a single node behind a proxy, or one listening on all
		// interfaces).
		byName[members[0].GetName()] = k
	} else {
		for _, m := range members {
			addr := m.GetGrpcAddr()
			if addr == "" {
				continue
			}
			c := t.conns[addr]
			if c == nil {
				var err error
				if c, err = t.dialConn(addr, false); err != nil {
					t.log.LogAttrs(t.ctx, slog.LevelWarn, "timerd member unreachable", slog.String("member", m.GetName()), slog.Any("err", err))
					continue
				}
				t.conns[addr] = c
			}
			byName[m.GetName()] = c
		}
	}
	v := &view{shards: sm.GetShardCount(), route: make([]*conn, sm.GetShardCount()), fingerprint: fp, settled: true, made: time.Now()}
	for _, c := range byName {
		if !slices.Contains(v.members, c) {
			v.members = append(v.members, c)
		}
	}
	slices.SortFunc(v.members, func(a, b *conn) int { return strings.Compare(a.addr, b.addr) })
	v.home = k
	if !slices.Contains(v.members, k) && !k.seed && len(v.members) > 0 {
		v.home = v.members[0]
	}
	for _, o := range sm.GetShards() {
		if o.GetShard() >= v.shards {
			continue
		}
		v.route[o.GetShard()] = place(o, byName)
		if o.GetState() != timerdv1.ShardState_SHARD_STATE_SERVING || o.GetOwner() != o.GetAssigned() || byName[o.GetOwner()] == nil {
			v.settled = false
		}
	}
	if len(sm.GetShards()) != int(v.shards) {
		v.settled = false
	}
	v.slot = make([]uint16, v.shards)
	for s, r := range v.route {
		if r == nil {
			r = v.home
		}
		j := slices.Index(v.targets, r)
		if j < 0 {
			j = len(v.targets)
			v.targets = append(v.targets, r)
		}
		v.slot[s] = uint16(j)
	}
	t.cur.Store(v)

	keep := make(map[*conn]bool, len(v.members)+1)
	for _, c := range v.members {
		keep[c] = true
	}
	keep[v.home] = true
	for addr, c := range t.conns {
		if !c.seed && !keep[c] {
			delete(t.conns, addr)
			c.retire(false)
		}
	}
	if !sameConns(old.members, v.members) {
		close(t.changed)
		t.changed = make(chan struct{})
	}
	if old.fingerprint != v.fingerprint || old.settled != v.settled || old.shards != v.shards {
		addrs := make([]string, len(v.members))
		for i, c := range v.members {
			addrs[i] = c.addr
		}
		t.log.LogAttrs(t.ctx, slog.LevelDebug, "timerd cluster map",
			slog.Any("members", addrs), slog.Uint64("shards", uint64(v.shards)), slog.Bool("settled", v.settled), slog.String("from", k.addr))
	}
}

// place returns the node the items of shard o go to: its owner while it
// serves or loads the shard; the node the ring assigns it to while it has
// no owner or its owner releases it; nil (home, which forwards) when
// neither is known.
func place(o *timerdv1.ShardOwner, byName map[string]*conn) *conn {
	owner, assigned := byName[o.GetOwner()], byName[o.GetAssigned()]
	switch o.GetState() {
	case timerdv1.ShardState_SHARD_STATE_SERVING, timerdv1.ShardState_SHARD_STATE_LOADING:
		if owner != nil {
			return owner
		}
	}
	if assigned != nil {
		return assigned
	}
	return owner
}

func sameConns(a, b []*conn) bool {
	if len(a) != len(b) {
		return false
	}
	for _, c := range a {
		if !slices.Contains(b, c) {
			return false
		}
	}
	return true
}

// part is the items of a call that go to one node.
type part struct {
	k   *conn
	idx []int
}

// split groups the items idx (indexes of a call's items, in request
// order) by the node their shard is routed to; key names item i's timer.
// Each part's conn is held: the caller releases it. It returns nil once
// the client is closed.
func (t *topology) split(idx []int, key func(i int) (ns, id string)) []part {
	for try := 0; ; try++ {
		v := t.view()
		var parts []part
		switch {
		case try >= 3:
			parts = []part{{k: t.seeds[0], idx: idx}} // never retired before close
		case v.shards == 0:
			parts = []part{{k: v.home, idx: idx}}
		case len(v.targets) == 1: // a single node
			parts = []part{{k: v.targets[0], idx: idx}}
		default:
			parts = v.group(idx, key)
		}
		held := 0
		for _, p := range parts {
			if !p.k.hold() {
				break
			}
			held++
		}
		if held == len(parts) {
			return parts
		}
		for _, p := range parts[:held] {
			p.k.release()
		}
		if try >= 3 {
			return nil // closed
		}
	}
}

// group splits idx by the target of each item's shard, into parts that
// share one backing array, each in the order of idx.
func (v *view) group(idx []int, key func(i int) (ns, id string)) []part {
	slots := make([]uint16, len(idx))
	var counts [16]int
	count := counts[:]
	if len(v.targets) > len(counts) {
		count = make([]int, len(v.targets))
	}
	for n, i := range idx {
		ns, id := key(i)
		j := v.slot[ring.Shard(ns, id, v.shards)]
		slots[n] = j
		count[j]++
	}
	all := make([]int, 0, len(idx))
	parts := make([]part, 0, len(v.targets))
	at := make([]int, len(v.targets)) // the part of each target, plus one
	for j, n := range count[:len(v.targets)] {
		if n > 0 {
			parts = append(parts, part{k: v.targets[j], idx: all[len(all) : len(all) : len(all)+n]})
			all = all[:len(all)+n]
			at[j] = len(parts)
		}
	}
	for n, i := range idx {
		p := &parts[at[slots[n]]-1]
		p.idx = append(p.idx, i)
	}
	return parts
}

// pick returns the node for a call about one timer (key: its namespace
// and id), or for no timer in particular (key nil: the home node), held:
// the caller releases it. It returns nil once the client is closed.
func (t *topology) pick(key *[2]string) *conn {
	for range 3 {
		v := t.view()
		k := v.home
		if key != nil && v.shards > 0 {
			if r := v.route[ring.Shard(key[0], key[1], v.shards)]; r != nil {
				k = r
			}
		}
		if k.hold() {
			return k
		}
	}
	if t.seeds[0].hold() {
		return t.seeds[0]
	}
	return nil
}

// waitReady connects to the seeds and waits until one of them is ready
// or ctx ends.
func (t *topology) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan struct{}, len(t.seeds))
	for _, k := range t.seeds {
		k.cc.Connect()
		go func() {
			for {
				s := k.cc.GetState()
				if s == connectivity.Ready {
					ready <- struct{}{}
					return
				}
				if !k.cc.WaitForStateChange(ctx, s) {
					return
				}
			}
		}()
	}
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		s := t.seeds[0].cc.GetState()
		return fmt.Errorf("connection %s: %w", s, ctx.Err())
	}
}
