package server

import (
	"github.com/timerd/timerd/node"
	"github.com/timerd/timerd/shard"
)

// router says where each shard lives: every handler asks it, so that a
// single node and a cluster differ only in their router. Its methods may
// be called concurrently.
type router interface {
	// route returns where shard id lives now.
	route(id uint32) route
}

// route is where one shard lives, as far as this node knows.
type route struct {
	// sh is the shard when this node serves it.
	sh *shard.Shard
	// peer is the gRPC address of the node that should serve the shard
	// when it is another node; "" when the shard is here or has no owner.
	peer string
	// node names that node.
	node string
}

// localRouter routes a single node's requests: every shard is here, or
// unavailable while it loads.
type localRouter struct{ n *node.Node }

func (r localRouter) route(id uint32) route { return route{sh: r.n.Shard(id)} }

// shard returns shard id when this node serves it, or nil; callers turn
// nil into UNAVAILABLE (see unavailable).
func (s *Server) shard(id uint32) *shard.Shard {
	return s.node.Shard(id)
}
