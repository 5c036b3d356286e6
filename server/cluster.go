package server

import (
	"context"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/node"
)

// clusterService implements pb.ClusterServiceServer for a single node:
// one member, which holds every shard it has loaded.
type clusterService struct {
	pb.UnimplementedClusterServiceServer
	s *Server
}

// Members implements pb.ClusterServiceServer.
func (c *clusterService) Members(context.Context, *pb.MembersRequest) (*pb.MembersResponse, error) {
	s := c.s
	return &pb.MembersResponse{Members: []*pb.Member{{
		Name:        s.cfg.NodeName,
		GrpcAddr:    s.GRPCAddr(),
		State:       pb.MemberState_MEMBER_STATE_ALIVE,
		ShardsOwned: uint32(serving(s.node)),
	}}}, nil
}

// ShardMap implements pb.ClusterServiceServer. The epoch of a shard that
// is not loaded comes from its lease in the store.
func (c *clusterService) ShardMap(ctx context.Context, _ *pb.ShardMapRequest) (*pb.ShardMapResponse, error) {
	s := c.s
	resp := &pb.ShardMapResponse{
		ShardCount: s.cfg.Shards,
		Shards:     make([]*pb.ShardOwner, s.cfg.Shards),
		Version:    s.node.Version(),
	}
	for i := range resp.Shards {
		o := &pb.ShardOwner{Shard: uint32(i)}
		if sh := s.node.Shard(uint32(i)); sh != nil {
			o.Owner, o.OwnerGrpcAddr, o.Epoch = s.cfg.NodeName, s.GRPCAddr(), sh.Epoch()
		} else if l, err := s.node.Store().Lease(ctx, uint32(i)); err == nil {
			o.Epoch = l.Epoch
		}
		resp.Shards[i] = o
	}
	return resp, nil
}

// serving returns how many shards n serves.
func serving(n *node.Node) int {
	_, k := n.Counts()
	return k
}
