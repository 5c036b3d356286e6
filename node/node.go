// Package node hosts a changing set of shards in one process: it opens
// the store and the group commit they share, and is told which shards to
// hold. It works toward that set on its own: it opens the shards it gains
// (acquire the lease, load the timers, fire) and closes the ones it loses
// (flush, stop firing, release the lease), retrying what fails, and it
// reports each shard's state, its readiness and its counts.
//
// # Invariants
//
//   - At most one supervisor goroutine runs per shard, and only it opens,
//     publishes and closes that shard: a shard is never open twice in
//     one process.
//   - Shard returns a shard only while it serves: loaded, holding its
//     lease, and not yet releasing it.
//   - A shard that is no longer wanted is closed (its writes flushed and
//     its lease released) before its slot can be opened again, so the
//     next owner, here or elsewhere, acquires it at once instead of
//     waiting for the lease to lapse.
//   - At most Config.LoadParallelism shards load at once, so that a node
//     that gains many shards (a join, a peer's death) does not starve the
//     shards it serves.
//
// The package knows nothing of gRPC, of membership or of who else holds
// shards: the caller decides the set (package cluster, or "all of them"
// for a single node), and the leases in the store decide who really owns
// a shard.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/timerd/timerd/shard"
	"github.com/timerd/timerd/store"
)

var (
	// ErrInvalidConfig is wrapped by Config.Validate errors.
	ErrInvalidConfig = errors.New("node: invalid config")
	// ErrClosed is returned by Open after Close, and by WaitReady when the
	// node closes while it waits.
	ErrClosed = errors.New("node: closed")
	// ErrOpened reports a second call to Open.
	ErrOpened = errors.New("node: already opened")
	// ErrRedisURL is wrapped by ParseRedisURL's errors. It names no
	// package: the URL is the operator's (--redis), not ours.
	ErrRedisURL = errors.New("invalid Redis URL")
)

// Config configures a Node. Start from DefaultConfig or LocalConfig.
type Config struct {
	// Owner is what the node writes in its shard leases: its name and an
	// incarnation that no other process of the name has. Required.
	Owner string
	// Shards is the deployment's shard count (default 64). The store
	// keeps the count it was created with and refuses another.
	Shards uint32
	// LoadParallelism bounds how many shards load at once (default 8).
	LoadParallelism int
	// DrainTurns is how many of the node's shards may drain a herd at
	// once, each a step of a few hundred microseconds at a time (see
	// shard.Turns); the others sleep until their turn, or until a timer
	// of theirs that is not part of a herd comes due. Default: half of
	// GOMAXPROCS, at least 1, so that a herd spread over every shard
	// leaves processors for the other namespaces' timers.
	DrainTurns int
	// ReleaseTimeout bounds how long closing a departing shard may take
	// to flush its writes and release its lease (default 10s). Past it
	// the shard stops anyway and its lease lapses on its own.
	ReleaseTimeout time.Duration
	// DataDir is the embedded store's directory; used when RedisURL is
	// empty.
	DataDir string
	// RedisURL, when set, keeps the shards in that Redis: one server, a
	// Redis Cluster or a master behind Sentinel (see ParseRedisURL).
	RedisURL string
	// RedisPrefix prefixes every Redis key (default "td").
	RedisPrefix string
	// AllowVolatileRedis lets the node use a Redis without an append-only
	// file, or whose persistence it cannot read (default false).
	AllowVolatileRedis bool
	// RedisWaitReplicas and RedisWaitTimeout are store.RedisConfig's
	// WaitReplicas (default 0: a commit does not wait for replicas) and
	// WaitTimeout (default 1s): with n > 0 every commit waits until n
	// replicas of its master have it, so a failover loses no
	// acknowledged timer.
	RedisWaitReplicas int
	RedisWaitTimeout  time.Duration
	// Shard is the template of every shard's configuration; its ID, Owner,
	// Store, Committer, Turns and Logger are set by the node. A Clock left at
	// shard.SystemClock (the default) is replaced by the node's
	// SteadyClock.
	Shard shard.Config
	// SteadyClock configures the clock the node's shards fire by and
	// measure their leases on, which a step of the wall clock does not
	// move (see shard.SteadyClock); its Referee (the store's clock, when
	// the store has one: Redis TIME) and Logger are set by the node.
	// Defaults: shard.DefaultSteadyConfig.
	SteadyClock shard.SteadyConfig
	// Commit configures the group commit; its Logger is set by the node.
	Commit store.CommitterConfig
	// Observer hears of shards gained, lost and failing. Optional.
	Observer Observer
	// Logger receives the node's events. Default: discard.
	Logger *slog.Logger
}

// DefaultConfig returns the production defaults documented on Config,
// for owner, on the embedded store in dataDir.
func DefaultConfig(owner, dataDir string) Config {
	return Config{
		Owner:            owner,
		Shards:           64,
		LoadParallelism:  8,
		DrainTurns:       max(1, runtime.GOMAXPROCS(0)/2),
		ReleaseTimeout:   10 * time.Second,
		DataDir:          dataDir,
		RedisPrefix:      "td",
		RedisWaitTimeout: store.DefaultRedisConfig().WaitTimeout,
		Shard:            shard.DefaultConfig(0, ""),
		SteadyClock:      shard.DefaultSteadyConfig(),
		Commit:           store.DefaultCommitterConfig(),
	}
}

// LocalConfig returns a configuration for tests: 4 shards in dataDir,
// with shard.LocalConfig's short leases and timeouts.
func LocalConfig(owner, dataDir string) Config {
	c := DefaultConfig(owner, dataDir)
	c.Shards = 4
	c.ReleaseTimeout = 5 * time.Second
	c.Shard = shard.LocalConfig(0, "")
	return c
}

// Validate reports the first invalid field, by name. Errors wrap
// ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Owner == "":
		return bad("Owner", "must be set")
	case c.Shards == 0:
		return bad("Shards", "must be at least 1")
	case c.LoadParallelism < 1:
		return bad("LoadParallelism", "must be at least 1, got %d", c.LoadParallelism)
	case c.DrainTurns < 1:
		return bad("DrainTurns", "must be at least 1, got %d", c.DrainTurns)
	case c.ReleaseTimeout <= 0:
		return bad("ReleaseTimeout", "must be positive, got %v", c.ReleaseTimeout)
	case c.RedisURL == "" && c.DataDir == "":
		return bad("DataDir", "must be set when RedisURL is empty")
	case c.RedisURL != "" && c.RedisPrefix == "":
		return bad("RedisPrefix", "must be set when RedisURL is set")
	case c.RedisURL != "" && c.redisConfig().Validate() != nil:
		return fmt.Errorf("%w: %w", ErrInvalidConfig, c.redisConfig().Validate())
	case c.steady() && c.SteadyClock.Validate() != nil:
		return fmt.Errorf("%w: %w", ErrInvalidConfig, c.SteadyClock.Validate())
	}
	if c.RedisURL != "" {
		if _, err := ParseRedisURL(c.RedisURL); err != nil {
			return fmt.Errorf("%w: RedisURL: %w", ErrInvalidConfig, err)
		}
	}
	return nil
}

// steady reports whether the node runs its shards on a SteadyClock: when
// Shard.Clock is the default.
func (c Config) steady() bool { return c.Shard.Clock == shard.Clock(shard.SystemClock{}) }

// Observer hears of what happens to the node's shards, for metrics and
// logs. Its methods are called from the shards' supervisors, concurrently
// for different shards; they must not block and must not call back into
// the Node.
type Observer interface {
	// Acquired reports that the node serves shard id at epoch, after a
	// load of loaded; waited is how long the shard had been wanted here
	// without being served (lease held by the previous owner, failures).
	Acquired(id uint32, epoch uint64, loaded, waited time.Duration)
	// Released reports that the node closed shard id, which it held at
	// epoch, in took (flush, stop firing, release).
	Released(id uint32, epoch uint64, took time.Duration)
	// Lost reports that shard id stopped on its own (a lost lease, a
	// fenced or given-up write); the node opens it again while wanted.
	Lost(id uint32, err error)
}

// State is what the node is doing with one shard.
type State uint8

const (
	// Absent: the node does not hold the shard and is not taking it.
	Absent State = iota
	// Loading: the node wants the shard and is acquiring its lease or
	// loading its timers (or waiting to retry either).
	Loading
	// Serving: the node holds the lease and serves the shard.
	Serving
	// Releasing: the node flushes the shard's writes, stops firing and
	// releases its lease.
	Releasing
)

func (s State) String() string {
	switch s {
	case Absent:
		return "absent"
	case Loading:
		return "loading"
	case Serving:
		return "serving"
	case Releasing:
		return "releasing"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Node hosts shards. Its methods may be called concurrently; Open is
// called once, before the others, and Close ends it.
type Node struct {
	cfg Config
	log *slog.Logger

	rdb redis.UniversalClient // nil with the embedded store
	st  store.Store
	com *store.Committer
	// clock is what the shards fire by, nil when Config.Shard.Clock is
	// not the default; set by Open. stopClock ends its goroutine, which
	// closes clockDone.
	clock     atomic.Pointer[shard.SteadyClock]
	stopClock context.CancelFunc
	clockDone chan struct{}

	// sem bounds the shards loading at once.
	sem chan struct{}
	// turns is shared by the shards to take turns at herds.
	turns *shard.Turns
	// cut is done when Close's context ends before every shard is
	// released: the releases still flushing are cut short.
	cut     context.Context
	stopCut context.CancelFunc
	wg      sync.WaitGroup // the supervisors

	// abandon makes the supervisors stop their shards as a crash would
	// (see Abandon) instead of releasing them.
	abandon atomic.Bool
	// version counts changes of any slot's state.
	version atomic.Uint64

	mu sync.Mutex
	// slots are the shards by id; guarded by mu, except slot.serving.
	slots []slot
	// wanted and serving count the slots that are wanted and that serve;
	// guarded by mu. Invariant: serving <= len(slots).
	wanted, serving int
	// changed is closed and replaced on every change of a slot's state;
	// guarded by mu.
	changed chan struct{}
	// opened and closed are guarded by mu.
	opened, closed bool
	// steady is set once the node first served exactly what it was told
	// to hold: the shards it gains or loses after that are moves, logged
	// one by one, while the first load is summed up by the caller.
	// Guarded by mu.
	steady bool
}

// slot is one shard's place in the node.
type slot struct {
	// want is whether the shard is in the set the node was told to hold.
	want bool
	// running is whether a supervisor goroutine owns the slot.
	// Invariant: at most one supervisor per slot.
	running bool
	// unwanted is done when want turns false; a new one is made when want
	// turns true again. Its cancel is unwant.
	unwanted context.Context
	unwant   context.CancelFunc
	state    State
	// since is when want last turned true, for Observer.Acquired.
	since time.Time
	// serving is the shard while it serves; read without mu.
	serving *atomic.Pointer[shard.Shard]
}

// New returns a Node for cfg. It does no I/O; Open opens the store.
func New(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:     cfg,
		log:     cfg.Logger,
		sem:     make(chan struct{}, cfg.LoadParallelism),
		turns:   shard.NewTurns(cfg.DrainTurns),
		slots:   make([]slot, cfg.Shards),
		changed: make(chan struct{}),
	}
	for i := range n.slots {
		n.slots[i].serving = new(atomic.Pointer[shard.Shard])
	}
	n.cut, n.stopCut = context.WithCancel(context.Background())
	return n, nil
}

// Open opens the store, checks the shard count against the one it holds
// and starts the group commit. The node holds no shard until Hold.
func (n *Node) Open(ctx context.Context) error {
	n.mu.Lock()
	switch {
	case n.closed:
		n.mu.Unlock()
		return ErrClosed
	case n.opened:
		n.mu.Unlock()
		return ErrOpened
	}
	n.opened = true
	n.mu.Unlock()
	if err := n.openStore(ctx); err != nil {
		return err
	}
	if err := n.st.ClaimShards(ctx, n.cfg.Shards); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	cc := n.cfg.Commit
	cc.Logger = n.log
	var err error
	if n.com, err = store.NewCommitter(n.st, cc); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if n.cfg.steady() {
		return n.startClock(ctx)
	}
	return nil
}

// startClock anchors the node's SteadyClock, refereed by the store's
// clock when the store has one (at the store's time when the wall
// disagrees with it; at the wall when the store does not answer), and
// starts keeping it in step.
func (n *Node) startClock(ctx context.Context) error {
	sc := n.cfg.SteadyClock
	sc.Logger = n.log.With("clock", "steady")
	if tk, ok := n.st.(store.Timekeeper); ok {
		sc.Referee = tk.Time
	}
	c, err := shard.NewSteadyClock(sc)
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if err := c.Sync(ctx); err != nil {
		// The wall anchors the clock then; a later step is settled when
		// the store answers again.
		n.log.Warn("clock: could not read the store's time; anchored at the wall clock", "err", err)
	}
	n.clock.Store(c)
	var run context.Context
	run, n.stopClock = context.WithCancel(context.Background())
	n.clockDone = make(chan struct{})
	go func() {
		defer close(n.clockDone)
		c.Run(run)
	}()
	return nil
}

// Clock returns the node's SteadyClock, or nil before Open or when
// Config.Shard.Clock was set to another clock.
func (n *Node) Clock() *shard.SteadyClock { return n.clock.Load() }

// Store returns the node's store, or nil before Open.
func (n *Node) Store() store.Store { return n.st }

// Committer returns the node's group commit, or nil before Open.
func (n *Node) Committer() *store.Committer { return n.com }

// Shards returns the deployment's shard count.
func (n *Node) Shards() uint32 { return n.cfg.Shards }

// Hold tells the node to hold exactly the shards in ids (out of range
// ids are ignored) and returns at once: the node opens the shards it
// does not hold yet and closes the ones it holds that are not in ids, in
// the background. Hold may be called again at any time; the latest set
// wins. It does nothing before Open or after Close.
func (n *Node) Hold(ids []uint32) {
	want := make([]bool, len(n.slots))
	for _, id := range ids {
		if int(id) < len(want) {
			want[id] = true
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.opened || n.closed || n.com == nil {
		return
	}
	for id := range n.slots {
		n.setWantLocked(uint32(id), want[id])
	}
}

// HoldAll tells the node to hold every shard, as a single node does.
func (n *Node) HoldAll() {
	ids := make([]uint32, len(n.slots))
	for i := range ids {
		ids[i] = uint32(i)
	}
	n.Hold(ids)
}

// setWantLocked makes slot id wanted or not, starting its supervisor
// when it is wanted and none runs.
func (n *Node) setWantLocked(id uint32, want bool) {
	sl := &n.slots[id]
	if sl.want == want {
		return
	}
	sl.want = want
	if !want {
		n.wanted--
		sl.unwant()
		n.notifyLocked()
		return
	}
	n.wanted++
	sl.unwanted, sl.unwant = context.WithCancel(context.Background())
	sl.since = time.Now()
	if !sl.running {
		sl.running = true
		sl.state = Loading
		n.wg.Add(1)
		go n.supervise(id)
	}
	n.notifyLocked()
}

// notifyLocked wakes whoever waits for a change of the slots.
func (n *Node) notifyLocked() {
	n.version.Add(1)
	close(n.changed)
	n.changed = make(chan struct{})
}

// setState records slot id's state.
func (n *Node) setState(id uint32, st State, sh *shard.Shard) {
	n.mu.Lock()
	defer n.mu.Unlock()
	sl := &n.slots[id]
	if sl.state == Serving {
		n.serving--
	}
	if st == Serving {
		n.serving++
	}
	sl.state = st
	sl.serving.Store(sh)
	if !n.steady && n.settledLocked() {
		n.steady = true
	}
	n.notifyLocked()
}

// acquired returns how long slot id has been wanted, and the level of
// the log of its acquire: info for a move, debug during the first load.
func (n *Node) acquired(id uint32) (waited time.Duration, level slog.Level) {
	n.mu.Lock()
	defer n.mu.Unlock()
	level = slog.LevelDebug
	if n.steady {
		level = slog.LevelInfo
	}
	return time.Since(n.slots[id].since), level
}

// current returns whether slot id is wanted, and the context that ends
// when it no longer is. When it is not wanted, the supervisor ends: it
// is marked not running, under the same lock, so that a later Hold
// starts a new one.
func (n *Node) current(id uint32) (context.Context, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	sl := &n.slots[id]
	if !sl.want || n.closed {
		sl.running = false
		if sl.state != Absent {
			sl.state = Absent
			n.notifyLocked()
		}
		return nil, false
	}
	return sl.unwanted, true
}

// supervise owns shard id while it is wanted: it opens it (retrying with
// backoff while that fails), publishes it, opens it again if it stops on
// its own, and closes it once it is no longer wanted.
//
// A lease held by another owner (the previous owner still releasing it,
// a dead node whose lease has not lapsed, another process of this node's
// name) is waited out the same way. The first failure of a streak is
// logged as a warning, the rest at debug level, so that a node waiting
// for its predecessor's leases does not flood the log.
func (n *Node) supervise(id uint32) {
	defer n.wg.Done()
	// maxWait keeps a node that waits for a lapsing lease within a fifth
	// of the TTL of taking the shard; a previous owner that releases is
	// usually done within minWait or two.
	minWait := 50 * time.Millisecond
	maxWait := max(minWait, min(time.Second, n.cfg.Shard.LeaseTTL/5))
	wait := minWait
	failures := 0 // in a row
	for {
		ctx, ok := n.current(id)
		if !ok {
			return
		}
		began := time.Now()
		sh, err := n.open(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				continue // no longer wanted, or closing: current says
			}
			level, msg := slog.LevelWarn, "shard open failed; retrying"
			if errors.Is(err, store.ErrLeaseHeld) {
				msg = "shard lease held by another owner; waiting until it is released or lapses"
			}
			if failures > 0 {
				level = slog.LevelDebug
			}
			failures++
			n.log.Log(context.Background(), level, msg, "shard", id, "owner", n.cfg.Owner, "attempt", failures, "in", wait, "err", err)
			sleep(ctx, wait)
			wait = min(2*wait, maxWait)
			continue
		}
		loaded := time.Since(began)
		waited, level := n.acquired(id)
		n.log.Log(context.Background(), level, "shard acquired", "shard", id, "epoch", sh.Epoch(),
			"timers", sh.Stats().Timers, "load", loaded, "waited", waited, "attempts", failures+1)
		if o := n.cfg.Observer; o != nil {
			o.Acquired(id, sh.Epoch(), loaded, waited)
		}
		wait, failures = minWait, 0
		n.setState(id, Serving, sh)
		select {
		case <-ctx.Done():
			n.release(id, sh)
			continue
		case <-sh.Done():
		}
		n.setState(id, Loading, nil)
		n.log.Error("shard stopped; reopening", "shard", id, "err", sh.Err())
		if o := n.cfg.Observer; o != nil {
			o.Lost(id, sh.Err())
		}
		_ = sh.Close(context.Background()) // stopped already: nothing to flush
		sleep(ctx, wait)
	}
}

// release closes shard id, which is no longer wanted: it stops taking
// calls at once, then flushes, stops firing and releases the lease.
func (n *Node) release(id uint32, sh *shard.Shard) {
	n.setState(id, Releasing, nil)
	if n.abandon.Load() {
		sh.Abandon()
		n.setState(id, Absent, nil)
		return
	}
	began := time.Now()
	ctx, cancel := context.WithTimeout(n.cut, n.cfg.ReleaseTimeout)
	defer cancel()
	if err := sh.Close(ctx); err != nil {
		n.log.Warn("shard release failed; its lease lapses on its own", "shard", id, "epoch", sh.Epoch(), "err", err)
	}
	took := time.Since(began)
	n.log.Debug("shard released", "shard", id, "epoch", sh.Epoch(), "took", took) // its next owner logs the move
	if o := n.cfg.Observer; o != nil {
		o.Released(id, sh.Epoch(), took)
	}
	n.setState(id, Absent, nil)
}

// open acquires and loads shard id, at most LoadParallelism at once.
func (n *Node) open(ctx context.Context, id uint32) (*shard.Shard, error) {
	select {
	case n.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	defer func() { <-n.sem }()
	cfg := n.cfg.Shard
	cfg.ID = id
	cfg.Owner = n.cfg.Owner
	cfg.Store = n.st
	cfg.Committer = n.com
	cfg.Turns = n.turns
	cfg.Logger = n.log
	if c := n.clock.Load(); c != nil {
		cfg.Clock = c
	}
	return shard.Open(ctx, cfg) // ending ctx cuts a load short
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Shard returns shard id while the node serves it, or nil.
func (n *Node) Shard(id uint32) *shard.Shard {
	if int(id) >= len(n.slots) {
		return nil
	}
	return n.slots[id].serving.Load()
}

// ShardStatus is what the node is doing with one shard.
type ShardStatus struct {
	State State
	// Epoch is the epoch the node serves the shard at; zero unless
	// Serving.
	Epoch uint64
	// Stats are the shard's counts; zero unless Serving.
	Stats shard.Stats
}

// Status returns what the node is doing with shard id.
func (n *Node) Status(id uint32) ShardStatus {
	if int(id) >= len(n.slots) {
		return ShardStatus{}
	}
	n.mu.Lock()
	st := n.slots[id].state
	n.mu.Unlock()
	out := ShardStatus{State: st}
	if sh := n.Shard(id); sh != nil {
		out.State, out.Epoch, out.Stats = Serving, sh.Epoch(), sh.Stats()
	}
	return out
}

// Counts returns how many shards the node is told to hold and how many
// it serves.
func (n *Node) Counts() (wanted, serving int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.wanted, n.serving
}

// Version grows whenever a shard's state changes.
func (n *Node) Version() uint64 { return n.version.Load() }

// Changed returns a channel closed at the next change of a shard's state
// or of the set to hold.
func (n *Node) Changed() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.changed
}

// Settled reports whether the node serves exactly the shards it is told
// to hold: every wanted shard serves, and none it is letting go is still
// open.
func (n *Node) Settled() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.settledLocked()
}

func (n *Node) settledLocked() bool {
	if n.closed || n.serving != n.wanted {
		return false
	}
	for i := range n.slots {
		sl := &n.slots[i]
		if sl.want != (sl.state == Serving) || (!sl.want && sl.state != Absent) {
			return false
		}
	}
	return true
}

// WaitSettled returns once Settled is true, or with ctx's error, or with
// ErrClosed when the node closes.
func (n *Node) WaitSettled(ctx context.Context) error {
	for {
		n.mu.Lock()
		ok, closed, ch := n.settledLocked(), n.closed, n.changed
		n.mu.Unlock()
		switch {
		case closed:
			return ErrClosed
		case ok:
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("node: waiting for the shards: %w", context.Cause(ctx))
		}
	}
}

// Abandon makes Close stop the shards as a crash of the process would:
// without flushing their writes or releasing their leases, so that their
// next owners wait for the leases to lapse. It is for fault injection;
// call it before Close.
func (n *Node) Abandon() { n.abandon.Store(true) }

// Close releases every shard (flushing its writes within ctx), then
// closes the group commit and the store. Shards whose flush ctx cuts
// short stop anyway, and their leases lapse. It is safe to call twice.
func (n *Node) Close(ctx context.Context) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	for id := range n.slots {
		if sl := &n.slots[id]; sl.want {
			sl.want = false
			n.wanted--
			sl.unwant()
		}
	}
	n.notifyLocked()
	n.mu.Unlock()
	// The supervisors release their shards, each within ReleaseTimeout;
	// ctx cuts the wait short, and then the shards still closing are
	// given up to their leases' lapse.
	done := make(chan struct{})
	go func() {
		n.wg.Wait()
		close(done)
	}()
	var errs []error
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("node: releasing shards: %w", context.Cause(ctx)))
		n.stopCut()
		<-done
	}
	n.stopCut()
	if n.stopClock != nil {
		n.stopClock()
		<-n.clockDone
	}
	if n.com != nil {
		errs = append(errs, n.com.Close())
	}
	if n.st != nil {
		errs = append(errs, n.st.Close())
	}
	if n.rdb != nil {
		errs = append(errs, n.rdb.Close())
	}
	return errors.Join(errs...)
}
