package server

import (
	"context"
	"sync"
	"time"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/node"
)

// clusterService implements pb.ClusterServiceServer. A single node is the
// one member, ACTIVE, assigned every shard; a cluster member answers from
// its membership view and, for the shard map, from what every member says
// of its own shards.
type clusterService struct {
	pb.UnimplementedClusterServiceServer
	s *Server
}

// shardMapTimeout bounds the wait for the peers' parts of a shard map.
const shardMapTimeout = 3 * time.Second

// Members implements pb.ClusterServiceServer. ShardsOwned is, for this
// node, the shards it serves, and for a peer the shards the ring assigns
// to it (ShardMap tells who serves what).
func (c *clusterService) Members(context.Context, *pb.MembersRequest) (*pb.MembersResponse, error) {
	s := c.s
	if s.member == nil {
		return &pb.MembersResponse{Members: []*pb.Member{{
			Name:        s.cfg.NodeName,
			GrpcAddr:    s.advertiseAddr(),
			State:       pb.MemberState_MEMBER_STATE_ALIVE,
			ShardsOwned: uint32(serving(s.node)),
			Incarnation: s.incarnation,
			NodeState:   pb.NodeState_NODE_STATE_ACTIVE,
		}}}, nil
	}
	v := s.member.View()
	assigned := make(map[string]uint32)
	for _, o := range v.Owners {
		assigned[o]++
	}
	resp := &pb.MembersResponse{}
	for _, m := range v.Members {
		owned := assigned[m.Name]
		if m.Name == s.cfg.NodeName {
			owned = uint32(serving(s.node))
		}
		resp.Members = append(resp.Members, &pb.Member{
			Name:        m.Name,
			GrpcAddr:    m.GRPCAddr,
			GossipAddr:  m.GossipAddr,
			State:       pb.MemberState_MEMBER_STATE_ALIVE,
			ShardsOwned: owned,
			Incarnation: m.Incarnation,
			NodeState:   nodeState(m.State),
		})
	}
	return resp, nil
}

func nodeState(s cluster.State) pb.NodeState {
	switch s {
	case cluster.StateJoining:
		return pb.NodeState_NODE_STATE_JOINING
	case cluster.StateActive:
		return pb.NodeState_NODE_STATE_ACTIVE
	case cluster.StateLeaving:
		return pb.NodeState_NODE_STATE_LEAVING
	}
	return pb.NodeState_NODE_STATE_UNSPECIFIED
}

func shardState(s node.State) pb.ShardState {
	switch s {
	case node.Loading:
		return pb.ShardState_SHARD_STATE_LOADING
	case node.Serving:
		return pb.ShardState_SHARD_STATE_SERVING
	case node.Releasing:
		return pb.ShardState_SHARD_STATE_RELEASING
	}
	return pb.ShardState_SHARD_STATE_UNOWNED
}

// stateRank orders the claims of two nodes on one shard: the one that
// serves it wins over one releasing it, which wins over one loading it
// (waiting for the other's release).
func stateRank(s pb.ShardState) int {
	switch s {
	case pb.ShardState_SHARD_STATE_SERVING:
		return 3
	case pb.ShardState_SHARD_STATE_RELEASING:
		return 2
	case pb.ShardState_SHARD_STATE_LOADING:
		return 1
	}
	return 0
}

// ShardMap implements pb.ClusterServiceServer. Each member reports the
// shards it holds (state, epoch, counts); a cluster member asks every
// peer for its part unless the request is local, and merges them. A
// shard nobody holds is UNOWNED, with the epoch of its last lease from
// the store. A peer that does not answer within a few seconds leaves
// its shards UNOWNED in the answer.
func (c *clusterService) ShardMap(ctx context.Context, req *pb.ShardMapRequest) (*pb.ShardMapResponse, error) {
	s := c.s
	resp := &pb.ShardMapResponse{
		ShardCount: s.cfg.Shards,
		Shards:     make([]*pb.ShardOwner, s.cfg.Shards),
		Version:    s.node.Version(),
	}
	var owners []string
	if v := s.view.Load(); v != nil {
		owners = v.Owners
		resp.Version += v.Version
	}
	for i := range resp.Shards {
		id := uint32(i)
		o := &pb.ShardOwner{Shard: id, State: pb.ShardState_SHARD_STATE_UNOWNED, Assigned: s.cfg.NodeName}
		if owners != nil {
			o.Assigned = owners[i]
		}
		if st := s.node.Status(id); st.State != node.Absent {
			o.Owner, o.OwnerGrpcAddr, o.State, o.Epoch = s.cfg.NodeName, s.advertiseAddr(), shardState(st.State), st.Epoch
			o.Timers, o.InFlight, o.Dead = uint64(st.Stats.Timers), uint64(st.Stats.InFlight), uint64(st.Stats.Dead)
		}
		resp.Shards[i] = o
	}
	if req.GetLocal() {
		return resp, nil
	}
	if s.member != nil {
		c.mergePeers(ctx, resp)
	}
	for _, o := range resp.Shards {
		if o.Owner == "" || o.Epoch == 0 {
			if l, err := s.node.Store().Lease(ctx, o.Shard); err == nil {
				o.Epoch = max(o.Epoch, l.Epoch)
			}
		}
	}
	return resp, nil
}

// mergePeers asks every other member for its own shards and takes its
// claims where they rank above what resp holds.
func (c *clusterService) mergePeers(ctx context.Context, resp *pb.ShardMapResponse) {
	s := c.s
	ctx, cancel := context.WithTimeout(ctx, shardMapTimeout)
	defer cancel()
	var mu sync.Mutex // guards resp.Shards' entries
	var wg sync.WaitGroup
	for _, m := range s.member.View().Members {
		if m.Name == s.cfg.NodeName || m.GRPCAddr == "" {
			continue
		}
		wg.Go(func() {
			conn, err := s.peers.conn(m.GRPCAddr)
			if err != nil {
				return
			}
			part, err := pb.NewClusterServiceClient(conn).ShardMap(ctx, &pb.ShardMapRequest{Local: true})
			if err != nil {
				s.log.Debug("shard map: a peer did not answer", "peer", m.Name, "addr", m.GRPCAddr, "err", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, o := range part.GetShards() {
				if o.GetShard() >= uint32(len(resp.Shards)) || o.GetOwner() == "" {
					continue
				}
				cur := resp.Shards[o.GetShard()]
				if stateRank(o.GetState()) > stateRank(cur.State) {
					o.Assigned = cur.Assigned // this node's view, like every other entry
					resp.Shards[o.GetShard()] = o
				}
			}
		})
	}
	wg.Wait()
}

// serving returns how many shards n serves.
func serving(n *node.Node) int {
	_, k := n.Counts()
	return k
}
