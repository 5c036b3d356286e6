package server

import (
	"context"
	"strings"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// clusterService implements pb.ClusterServiceServer for a single node:
// one member, which holds every shard it has loaded and is assigned
// every shard.
type clusterService struct {
	pb.UnimplementedClusterServiceServer
	s *Server
}

// Members implements pb.ClusterServiceServer. A single node is always
// ACTIVE: it takes every shard.
func (c *clusterService) Members(context.Context, *pb.MembersRequest) (*pb.MembersResponse, error) {
	s := c.s
	_, incarnation, _ := strings.Cut(s.Owner(), "/")
	return &pb.MembersResponse{Members: []*pb.Member{{
		Name:        s.cfg.NodeName,
		GrpcAddr:    s.GRPCAddr(),
		State:       pb.MemberState_MEMBER_STATE_ALIVE,
		ShardsOwned: uint32(s.loaded.Load()),
		Incarnation: incarnation,
		NodeState:   pb.NodeState_NODE_STATE_ACTIVE,
	}}}, nil
}

// ShardMap implements pb.ClusterServiceServer. A loaded shard is SERVING,
// with its counts. The epoch of a shard that is not loaded comes from its
// lease in the store, and so does its state: LOADING while this process
// holds the lease (it is opening the shard, or opening it again after it
// stopped), RELEASING once Close has begun, otherwise UNOWNED. The answer
// is this node's own knowledge, so ShardMapRequest.local changes nothing.
func (c *clusterService) ShardMap(ctx context.Context, _ *pb.ShardMapRequest) (*pb.ShardMapResponse, error) {
	s := c.s
	resp := &pb.ShardMapResponse{
		ShardCount: s.cfg.Shards,
		Shards:     make([]*pb.ShardOwner, len(s.slots)),
		Version:    s.version.Load(),
	}
	for i := range s.slots {
		o := &pb.ShardOwner{Shard: uint32(i), Assigned: s.cfg.NodeName, State: pb.ShardState_SHARD_STATE_UNOWNED}
		if sh := s.slots[i].Load(); sh != nil {
			st := sh.Stats()
			o.Owner, o.OwnerGrpcAddr, o.Epoch = s.cfg.NodeName, s.GRPCAddr(), sh.Epoch()
			o.State = pb.ShardState_SHARD_STATE_SERVING
			o.Timers, o.InFlight, o.Dead = uint64(st.Timers), uint64(st.InFlight), uint64(st.Dead)
		} else if l, err := s.st.Lease(ctx, uint32(i)); err == nil {
			o.Epoch = l.Epoch
			if l.Owner == s.Owner() {
				o.Owner, o.OwnerGrpcAddr = s.cfg.NodeName, s.GRPCAddr()
				o.State = pb.ShardState_SHARD_STATE_LOADING
				if s.quitting() {
					o.State = pb.ShardState_SHARD_STATE_RELEASING
				}
			}
		}
		resp.Shards[i] = o
	}
	return resp, nil
}
