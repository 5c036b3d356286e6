// Package cluster owns this node's membership in the cluster and its view
// of which shards each member should hold.
//
// It wraps github.com/hashicorp/memberlist: Start creates the gossip, joins
// the seeds and keeps joining them again; every node announces in its
// member meta its gRPC address, its incarnation and its State (joining,
// active or leaving). From what memberlist reports the Cluster builds a
// View: the alive and suspect members, sorted by name, and for each shard
// the member that should own it, ring.Owners over the names of the active
// members.
//
// # Invariants
//
//   - A View says who SHOULD own each shard, not who does. Views on two
//     nodes may disagree for a while (gossip takes time, partitions
//     happen). A node owns a shard only while it holds the shard's lease
//     in the store, whose epoch and token fence every write, so two nodes
//     that both believe they should own a shard never both write it.
//   - Owners depends only on the set of active members' names: nodes that
//     see the same members agree on every owner.
//   - View.Version grows with every change this node sees, and Changed is
//     signalled after each.
//   - A member whose meta cannot be decoded is logged and left out of the
//     View: out of Members and out of the ring.
//   - The member set is read from memberlist's table after every change
//     event; a member's address and meta come from copies made in
//     memberlist's callbacks, under its lock. The *Node values that
//     memberlist's Members returns are never read beyond their names:
//     memberlist rewrites them in place, so reading them would race.
//     For the same reason the View does not tell suspect members from
//     alive ones: memberlist marks a node suspect without any callback.
//   - Every goroutine the Cluster starts (the loop that rebuilds the
//     View, the loop that re-joins the seeds) has ended when Close or
//     Leave returns. memberlist's own goroutines are told to stop by its
//     Shutdown; the last of them end within Memberlist.TCPTimeout.
//
// # Failure detection
//
// A member that stops answering is suspected, then declared dead after
// the suspicion timeout, and only then leaves the View; a member that
// Leaves is gone as soon as the news reaches this node. Config's presets
// tune memberlist for that: DefaultConfig declares a killed node dead in
// about 2 to 3s on a LAN, which the failover of its shards waits for
// (together with their leases' TTL).
//
// # One name, two processes
//
// A node's name is stable across restarts; its incarnation is new at every
// start. A process restarted at the same gossip address takes its name
// over: memberlist refutes the old record and the members see an update
// with the new incarnation. A process that claims, from another address,
// the name of a member that is alive, suspect or only recently dead is a
// conflict, and the newer process does not take over: every member that
// knows the existing one keeps it and ignores the newcomer, and logs an
// error naming both addresses and incarnations; the newcomer logs one
// too. The other members' Views go on showing the existing process, so
// their rings give the newcomer nothing; the newcomer's own View shows
// itself under the name, but it cannot take a shard whose lease the
// existing process holds. Once the existing process has left, or has been
// dead for Memberlist.DeadNodeReclaimTime, the newcomer's next push/pull
// or re-join replaces it.
//
// The package knows nothing of gRPC, of what shards hold, of leases or of
// the store, and it does not move shards: the node acquires and releases
// them from the View. It imports memberlist, ring and the standard library
// only.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/timerd/timerd/ring"
)

var (
	// ErrInvalidConfig is wrapped by configuration errors, which name the
	// bad field.
	ErrInvalidConfig = errors.New("cluster: invalid config")
	// ErrClosed is returned by Start, SetState and Leave after Close or
	// Leave, and by Start when the Cluster was closed while it started.
	ErrClosed = errors.New("cluster: closed")
	// ErrStarted is returned by a second Start.
	ErrStarted = errors.New("cluster: already started")
	// ErrInvalidState is returned by SetState for a value that is not a
	// State.
	ErrInvalidState = errors.New("cluster: invalid state")
	// ErrInvalidKey is wrapped by the errors of a gossip key that is not
	// 16, 24 or 32 bytes.
	ErrInvalidKey = errors.New("cluster: invalid gossip key")

	// errBadMeta is wrapped when a member's meta cannot be decoded.
	errBadMeta = errors.New("cluster: bad member meta")
)

// defaultGossipWait bounds how long SetState and Leave wait for their
// gossip to go out when ctx has no deadline.
const defaultGossipWait = 5 * time.Second

// Cluster is this node's membership. Create it with New, then Start it.
//
// Every method may be called concurrently with every other. Start, Leave
// and Close are serialized with each other; SetState calls are serialized
// with each other.
type Cluster struct {
	cfg Config
	log *slog.Logger

	ml      atomic.Pointer[memberlist.Memberlist] // set by Start
	changed chan struct{}                         // cap 1: the View may have changed
	wakeCh  chan struct{}                         // cap 1: memberlist reported a change
	run     context.Context                       // ends at Close or Leave
	stop    context.CancelFunc
	wg      sync.WaitGroup // the loop and the re-join loop
	seeds   []string       // cfg.Seeds but this node's own address; set by Start

	lifeMu  sync.Mutex // serializes Start, Leave and Close
	started bool
	closed  atomic.Bool

	setMu sync.Mutex // serializes SetState, and SetState with Start's creating the gossip

	mu         sync.Mutex
	state      State
	gossipAddr string
	view       View

	rebuildMu sync.Mutex
	warned    map[string]*fact // members whose bad meta was logged; rebuildMu

	conflictLogged map[string]time.Time // when each conflict was last logged; the loop's

	factsMu   sync.Mutex
	facts     map[string]*fact // by member name; see delegate
	conflicts []conflict
}

// New returns a Cluster for cfg. It does no I/O and starts nothing.
func New(cfg Config) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Seeds = slices.Clone(cfg.Seeds)
	ml := *cfg.Memberlist // the caller's preset may be shared with other Configs
	cfg.Memberlist = &ml
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	run, stop := context.WithCancel(context.Background())
	return &Cluster{
		cfg:     cfg,
		log:     lg.With("node", cfg.NodeName),
		changed: make(chan struct{}, 1),
		wakeCh:  make(chan struct{}, 1),
		run:     run,
		stop:    stop,
		state:   StateJoining,
		warned:  make(map[string]*fact),
		facts:   make(map[string]*fact),

		conflictLogged: make(map[string]time.Time),
	}, nil
}

// Start creates the gossip on BindAddr, announcing the node's State
// (StateJoining unless SetState said otherwise), joins the seeds and
// starts the loop that re-joins them every RejoinInterval. When no seed
// answers it logs a warning and returns nil: the node runs as a cluster of
// one until the re-join loop reaches a seed. Once Start returns, View
// shows this node and every member the seeds told it of.
//
// Start blocks while it joins the seeds, one after another, each for at
// most Memberlist.TCPTimeout; it stops early when ctx ends or the Cluster
// is closed. It fails when the gossip cannot listen (the address is in
// use), when ctx ends before it is done (ctx's error), with ErrStarted
// when called twice, and with ErrClosed after Close or Leave; after any
// other failure the Cluster is closed.
func (c *Cluster) Start(ctx context.Context) error {
	c.lifeMu.Lock()
	switch {
	case c.closed.Load():
		c.lifeMu.Unlock()
		return ErrClosed
	case c.started:
		c.lifeMu.Unlock()
		return ErrStarted
	}
	c.started = true
	if err := ctx.Err(); err != nil {
		c.closeLocked()
		c.lifeMu.Unlock()
		return err
	}
	c.setMu.Lock() // a concurrent SetState is announced by Create or updates it
	ml, err := memberlist.Create(c.memberlistConfig())
	if err == nil {
		c.ml.Store(ml)
	}
	c.setMu.Unlock()
	if err != nil {
		c.closeLocked()
		c.lifeMu.Unlock()
		return fmt.Errorf("cluster: start the gossip on %s: %w", c.cfg.BindAddr, err)
	}
	c.factsMu.Lock()
	self := c.facts[c.cfg.NodeName] // from the NotifyJoin of Create
	c.factsMu.Unlock()
	c.mu.Lock()
	if self != nil {
		c.gossipAddr = self.gossipAddr
	}
	c.mu.Unlock()
	c.seeds = slices.DeleteFunc(slices.Clone(c.cfg.Seeds), func(s string) bool { return s == c.GossipAddr() })
	c.wg.Add(1)
	go c.loop()
	c.lifeMu.Unlock()

	// Join without holding lifeMu, so that Close can interrupt it.
	joined, err := c.join(ctx)
	c.rebuild()

	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		c.closeLocked()
		return ctxErr
	}
	if len(c.seeds) > 0 {
		if joined == 0 {
			c.log.Warn("cluster: no seed answered; running alone and joining them again in the background",
				"seeds", c.seeds, "every", c.cfg.RejoinInterval, "err", err)
		}
		c.wg.Add(1)
		go c.rejoin(joined > 0)
	}
	c.log.Info("cluster: started", "gossip", c.GossipAddr(), "members", len(c.View().Members))
	return nil
}

// memberlistConfig returns a copy of cfg.Memberlist for this node.
func (c *Cluster) memberlistConfig() *memberlist.Config {
	mc := *c.cfg.Memberlist
	mc.Name = c.cfg.NodeName
	ip, port, _ := splitIPPort(c.cfg.BindAddr) // validated
	mc.BindAddr, mc.BindPort = ip.String(), port
	mc.AdvertiseAddr, mc.AdvertisePort = "", port
	if c.cfg.AdvertiseAddr != "" {
		ip, p, _ := splitIPPort(c.cfg.AdvertiseAddr)
		mc.AdvertiseAddr = ip.String()
		if p != 0 {
			mc.AdvertisePort = p
		}
	}
	mc.SecretKey, mc.Label = c.cfg.SecretKey, c.cfg.Label
	d := delegate{c}
	mc.Delegate, mc.Events, mc.Conflict = d, d, d
	mc.LogOutput = nil
	mc.Logger = log.New(logWriter{c.log}, "", 0)
	return &mc
}

// join joins the seeds one at a time until ctx or the Cluster's life
// ends. It returns how many answered and, when none did, why.
func (c *Cluster) join(ctx context.Context) (int, error) {
	ml := c.ml.Load()
	var (
		joined int
		errs   []error
	)
	for _, seed := range c.seeds {
		if ctx.Err() != nil || c.run.Err() != nil {
			break
		}
		if _, err := ml.Join([]string{seed}); err != nil {
			errs = append(errs, err)
			continue
		}
		joined++
	}
	if joined > 0 {
		return joined, nil
	}
	return 0, errors.Join(errs...)
}

// rejoin joins the seeds every RejoinInterval until Close or Leave. ok
// says whether the last join reached a seed; a change is logged.
func (c *Cluster) rejoin(ok bool) {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.RejoinInterval)
	defer t.Stop()
	for {
		select {
		case <-c.run.Done():
			return
		case <-t.C:
		}
		n, err := c.join(c.run)
		if c.run.Err() != nil {
			return
		}
		switch {
		case n == 0 && !ok:
			c.log.Debug("cluster: no seed answered", "seeds", c.seeds, "err", err)
		case n == 0 && ok:
			c.log.Warn("cluster: no seed answered; joining them again in the background",
				"seeds", c.seeds, "every", c.cfg.RejoinInterval, "err", err)
		case n > 0 && !ok:
			c.log.Info("cluster: joined the seeds", "seeds", c.seeds, "answered", n)
		}
		ok = n > 0
	}
}

// loop rebuilds the View whenever memberlist reports a change, until
// Close or Leave.
func (c *Cluster) loop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.run.Done():
			return
		case <-c.wakeCh:
		}
		c.logConflicts()
		c.rebuild()
	}
}

// wake tells the loop that memberlist reported a change. It never blocks.
func (c *Cluster) wake() {
	select {
	case c.wakeCh <- struct{}{}:
	default:
	}
}

// rebuild reads the member set from memberlist and, when it differs from
// the View's, publishes a new View and signals Changed.
func (c *Cluster) rebuild() {
	c.rebuildMu.Lock()
	defer c.rebuildMu.Unlock()
	ml := c.ml.Load()
	if ml == nil {
		return
	}
	nodes := ml.Members()
	names := make([]string, 0, len(nodes))
	for _, n := range nodes {
		names = append(names, n.Name) // memberlist never rewrites a Name
	}
	facts := make([]*fact, len(names))
	c.factsMu.Lock()
	for i, name := range names {
		facts[i] = c.facts[name]
	}
	c.factsMu.Unlock()

	self := c.Self()
	members := make([]Member, 0, len(names)+1)
	members = append(members, self)
	for i, name := range names {
		f := facts[i]
		if name == self.Name || f == nil {
			// A member without a fact left after Members returned;
			// its NotifyLeave has woken the loop again.
			continue
		}
		m, err := decodeMeta(f.meta)
		if err != nil {
			if c.warned[name] != f {
				c.warned[name] = f
				c.log.Warn("cluster: member left out of the view: its meta cannot be decoded",
					"member", name, "gossip", f.gossipAddr, "err", err)
			}
			continue
		}
		delete(c.warned, name)
		members = append(members, Member{
			Name:        name,
			Incarnation: m.Incarnation,
			GRPCAddr:    m.GRPCAddr,
			GossipAddr:  f.gossipAddr,
			State:       m.State,
		})
	}
	slices.SortFunc(members, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	for name := range c.warned {
		if !slices.Contains(names, name) {
			delete(c.warned, name)
		}
	}

	c.mu.Lock()
	old := c.view
	if old.Version > 0 && slices.Equal(old.Members, members) {
		c.mu.Unlock()
		return
	}
	owners := old.Owners
	if old.Version == 0 || !slices.Equal(activeNames(old.Members), activeNames(members)) {
		owners = ring.Owners(c.cfg.Shards, activeNames(members))
	}
	c.view = View{Version: old.Version + 1, Members: members, Owners: owners}
	c.mu.Unlock()

	c.logChanges(old.Members, members)
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// activeNames returns the names of the active members, in members' order.
func activeNames(members []Member) []string {
	var names []string
	for _, m := range members {
		if m.State == StateActive {
			names = append(names, m.Name)
		}
	}
	return names
}

// logChanges logs the members that joined, left or changed between two
// member lists.
func (c *Cluster) logChanges(before, after []Member) {
	was := make(map[string]Member, len(before))
	for _, m := range before {
		was[m.Name] = m
	}
	for _, m := range after {
		o, ok := was[m.Name]
		delete(was, m.Name)
		switch {
		case !ok:
			c.log.Info("cluster: member joined", "member", m.Name, "incarnation", m.Incarnation,
				"state", m.State, "grpc", m.GRPCAddr, "gossip", m.GossipAddr)
		case o != m:
			c.log.Info("cluster: member changed", "member", m.Name, "incarnation", m.Incarnation,
				"state", m.State, "grpc", m.GRPCAddr, "gossip", m.GossipAddr,
				"was_incarnation", o.Incarnation, "was_state", o.State)
		}
	}
	for _, m := range before {
		if _, gone := was[m.Name]; gone {
			c.log.Info("cluster: member gone", "member", m.Name, "incarnation", m.Incarnation)
		}
	}
}

// logConflicts logs the name conflicts memberlist reported, each at most
// once per conflictLogEvery (memberlist reports one at every gossip from
// the ignored process). Only the loop calls it.
func (c *Cluster) logConflicts() {
	c.factsMu.Lock()
	conflicts := c.conflicts
	c.conflicts = nil
	c.factsMu.Unlock()
	now := time.Now()
	for _, cf := range conflicts {
		key := cf.name + "\x00" + cf.keptAddr + "\x00" + cf.otherAddr
		if last, ok := c.conflictLogged[key]; ok && now.Sub(last) < conflictLogEvery {
			continue
		}
		if len(c.conflictLogged) >= maxConflicts {
			clear(c.conflictLogged)
		}
		c.conflictLogged[key] = now
		incarnation := func(b []byte) string {
			if m, err := decodeMeta(b); err == nil {
				return m.Incarnation
			}
			return "?"
		}
		msg := "cluster: two processes claim one node name; this node keeps the one it knew first " +
			"and ignores the other until the first has left or been dead for Memberlist.DeadNodeReclaimTime"
		if cf.name == c.cfg.NodeName {
			msg = "cluster: another process has this node's name; the members that knew it first ignore this process " +
				"until the other has left or been dead for Memberlist.DeadNodeReclaimTime"
		}
		c.log.Error(msg, "member", cf.name,
			"kept_gossip", cf.keptAddr, "kept_incarnation", incarnation(cf.keptMeta),
			"ignored_gossip", cf.otherAddr, "ignored_incarnation", incarnation(cf.otherMeta))
	}
}

// conflictLogEvery is how often one name conflict is logged again while
// it lasts.
const conflictLogEvery = time.Minute

// selfMeta returns the meta this node announces.
func (c *Cluster) selfMeta() meta {
	c.mu.Lock()
	defer c.mu.Unlock()
	return meta{GRPCAddr: c.cfg.GRPCAddr, Incarnation: c.cfg.Incarnation, State: c.state}
}

// GossipAddr returns the host:port peers reach this node's gossip at, ""
// before Start. It may be called concurrently.
func (c *Cluster) GossipAddr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gossipAddr
}

// SetState sets the State this node announces and gossips it. Once
// SetState returns, this node's View shows the new State; the other nodes
// learn it from the gossip. It waits until the update went out to one
// other member (gossip carries it on to the rest), at most until ctx's
// deadline, or 5s when ctx has none; when that wait fails the State is set
// all the same, will still spread, and the error says so. Before Start it
// only sets the State that Start announces.
//
// SetState may be called concurrently with every method; calls are
// serialized. It fails with ErrInvalidState for a value that is not a
// State, with ErrClosed after Close or Leave, and with ctx's error when
// ctx has ended before it began.
func (c *Cluster) SetState(ctx context.Context, s State) error {
	if !s.valid() {
		return fmt.Errorf("%w: %d", ErrInvalidState, s)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c.setMu.Lock()
	defer c.setMu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	c.mu.Lock()
	c.state = s
	c.mu.Unlock()
	ml := c.ml.Load()
	if ml == nil {
		return nil
	}
	wait := gossipWait(ctx)
	err := ml.UpdateNode(wait)
	c.rebuild()
	if err != nil {
		return fmt.Errorf("cluster: state %s set, but its gossip did not go out within %v: %w", s, wait, err)
	}
	return nil
}

// gossipWait returns how long a call may wait for its gossip to go out:
// until ctx's deadline, defaultGossipWait without one, hardly at all once
// ctx has ended (memberlist reads a zero wait as no bound).
func gossipWait(ctx context.Context) time.Duration {
	if ctx.Err() != nil {
		return time.Millisecond
	}
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return defaultGossipWait
}

// Self returns this node as a Member. It may be called concurrently.
func (c *Cluster) Self() Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Member{
		Name:        c.cfg.NodeName,
		Incarnation: c.cfg.Incarnation,
		GRPCAddr:    c.cfg.GRPCAddr,
		GossipAddr:  c.gossipAddr,
		State:       c.state,
	}
}

// Members returns the View's members, alive and suspect, sorted by name,
// this node included, in a slice the caller may keep. Empty before Start.
// It may be called concurrently.
func (c *Cluster) Members() []Member {
	return slices.Clone(c.View().Members)
}

// View returns the current View, the zero View before Start. It may be
// called concurrently; the View must not be modified.
func (c *Cluster) View() View {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.view
}

// Changed returns a channel that receives after the View changed: a
// receive means View may differ from what the receiver last saw. It holds
// one signal, so changes that come together signal once; read View after
// the receive. The channel is the same for the Cluster's whole life and
// is never closed. It may be called concurrently.
func (c *Cluster) Changed() <-chan struct{} { return c.changed }

// Leave tells the cluster this node is leaving, so the members drop it at
// once instead of waiting to declare it dead, then shuts the gossip down
// and stops the Cluster's goroutines as Close does. It waits for the
// leave to go out to one other member at most until ctx's deadline, or 5s
// when ctx has none; when ctx has already ended it does not wait, and
// should the leave not go out the members declare the node dead instead.
// A node should hand its shards over (SetState with StateLeaving, then
// release them) before it leaves.
//
// Leave may be called concurrently with every method. It returns
// ErrClosed after Close or Leave; otherwise the Cluster is closed when it
// returns, even when it returns an error.
func (c *Cluster) Leave(ctx context.Context) error {
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	c.closed.Store(true)
	c.stop()
	c.wg.Wait()
	ml := c.ml.Load()
	if ml == nil {
		return nil
	}
	wait := gossipWait(ctx)
	err := ml.Leave(wait)
	if err != nil {
		err = fmt.Errorf("cluster: no member confirmed the leave within %v: %w", wait, err)
	}
	return errors.Join(err, ml.Shutdown())
}

// Close shuts the gossip down without leaving, so the other members
// declare this node dead after their failure detection's delay, and stops
// every goroutine the Cluster started. It waits for a join in progress,
// at most Memberlist.TCPTimeout. Close is safe to call twice, and may be
// called concurrently with every method.
func (c *Cluster) Close() error {
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	if c.closed.Load() {
		return nil
	}
	return c.closeLocked()
}

// closeLocked closes the Cluster; lifeMu is held.
func (c *Cluster) closeLocked() error {
	c.closed.Store(true)
	c.stop()
	var err error
	if ml := c.ml.Load(); ml != nil {
		err = ml.Shutdown()
	}
	c.wg.Wait()
	return err
}
