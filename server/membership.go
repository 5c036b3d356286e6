package server

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/node"
)

// clusterRouter routes the requests of a cluster member: a shard this
// node serves is here; any other goes to the member the ring assigns it
// to, which serves it or soon will (or answers UNAVAILABLE, which clients
// retry). Who really owns a shard is decided by its lease: a shard that
// this node still serves while the ring has moved it on (it is being
// handed over) is served here until it is released.
type clusterRouter struct {
	n    *node.Node
	self string
	// view is the membership view the node last acted on.
	view *atomic.Pointer[cluster.View]
}

func (r clusterRouter) route(id uint32) route {
	if sh := r.n.Shard(id); sh != nil {
		return route{sh: sh}
	}
	v := r.view.Load()
	if v == nil || int(id) >= len(v.Owners) {
		return route{}
	}
	owner := v.Owners[id]
	if owner == "" || owner == r.self {
		return route{node: owner} // nobody active, or loading here
	}
	m, ok := v.Member(owner)
	if !ok {
		return route{}
	}
	return route{peer: m.GRPCAddr, node: owner}
}

// newMember makes this node's membership, once its gRPC address is
// known and before anything that reads s.member runs.
func (s *Server) newMember() error {
	cc := *s.cfg.Cluster
	cc.NodeName = s.cfg.NodeName
	cc.Incarnation = s.incarnation
	cc.Shards = s.cfg.Shards
	cc.GRPCAddr = s.advertiseAddr()
	cc.Logger = s.log
	c, err := cluster.New(cc)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.member = c
	return nil
}

// joinCluster starts the membership (as joining), turns this node
// active, and starts the loop that holds what the ring assigns to it.
func (s *Server) joinCluster(ctx context.Context) error {
	c := s.member
	if err := c.Start(ctx); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.wg.Go(s.followMembers)
	s.wg.Go(s.relays.run)
	if err := c.SetState(ctx, cluster.StateActive); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		// The state is set and spreads by gossip; only its confirmation
		// failed.
		s.log.Warn("cluster: announcing this node active", "err", err)
	}
	return nil
}

// advertiseAddr is the gRPC address peers and clients reach this node
// at.
func (s *Server) advertiseAddr() string {
	if s.cfg.AdvertiseAddr != "" {
		return s.cfg.AdvertiseAddr
	}
	return s.GRPCAddr()
}

// followMembers holds the shards the ring assigns to this node, as the
// membership changes, until Close begins. While the node leaves, it
// holds none.
func (s *Server) followMembers() {
	c := s.member
	for {
		v := c.View()
		s.logMoves(s.view.Load(), &v)
		s.view.Store(&v)
		if s.leaving() {
			s.node.Hold(nil)
		} else {
			s.node.Hold(v.Assigned(s.cfg.NodeName))
		}
		addrs := make(map[string]bool, len(v.Members))
		names := make(map[string]bool, len(v.Members))
		for _, m := range v.Members {
			addrs[m.GRPCAddr] = true
			names[m.Name] = true
		}
		s.peers.keep(addrs)
		s.metrics.peerRelaysEnded.Add(float64(s.peerRelays.follow(names)))
		s.relays.changed()
		select {
		case <-c.Changed():
		case <-s.handover:
		case <-s.quit:
			return
		}
	}
}

// handOver is the graceful leave of a cluster member: it announces that
// it leaves, so that the ring moves its shards to the others, releases
// every shard (each flushed first, so that its next owner takes it at
// once), and then leaves the gossip. Requests keep being served and
// forwarded meanwhile. ctx bounds the wait for the releases; what is not
// released by then has its lease lapse.
func (s *Server) handOver(ctx context.Context) error {
	began := time.Now()
	_, held := s.node.Counts()
	close(s.handover)
	s.node.Hold(nil)
	// The gossip of the state and of the leave waits for another member
	// to confirm it, which none may do (the whole cluster stopping at
	// once): it is advice to the others, bounded apart from the
	// handover and logged, not a failure of the shutdown.
	gossip := func(what string, fn func(context.Context) error) {
		gctx, cancel := context.WithTimeout(ctx, gossipConfirmWait)
		defer cancel()
		if err := fn(gctx); err != nil {
			s.log.Warn("cluster: "+what+" not confirmed by another member", "err", err)
		}
	}
	gossip("leaving state", func(ctx context.Context) error { return s.member.SetState(ctx, cluster.StateLeaving) })
	var err error
	if werr := s.node.WaitSettled(ctx); werr != nil {
		err = fmt.Errorf("server: handing shards over: %w", werr)
	}
	gossip("leave", s.member.Leave)
	s.log.Info("cluster: left", "handed_over", held, "took", time.Since(began))
	return err
}

// leaving reports whether a graceful Close has begun to hand the shards
// over.
func (s *Server) leaving() bool {
	select {
	case <-s.handover:
		return true
	default:
		return false
	}
}

// gossipConfirmWait bounds how long a leaving node waits for another
// member to confirm its gossip: the state it leaves in, then the leave.
const gossipConfirmWait = 2 * time.Second

// logMoves logs how a new view moves shards onto or off this node: one
// line per change of view at info, and each shard, with where it comes
// from or goes to, at debug.
func (s *Server) logMoves(old, cur *cluster.View) {
	if old == nil || len(old.Owners) != len(cur.Owners) {
		return
	}
	self := s.cfg.NodeName
	gained, lost := 0, 0
	for id, to := range cur.Owners {
		from := old.Owners[id]
		switch {
		case from == to:
			continue
		case to == self:
			gained++
			s.log.Debug("cluster: shard moves here", "shard", id, "from", from)
		case from == self:
			lost++
			s.log.Debug("cluster: shard moves away", "shard", id, "to", to)
		}
	}
	if gained+lost > 0 {
		s.log.Info("cluster: the ring moved shards", "gained", gained, "lost", lost, "members", len(cur.Members), "view", cur.Version)
	}
}
