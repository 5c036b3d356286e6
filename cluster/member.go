package cluster

import (
	"slices"
	"strconv"
	"strings"
)

// State is where a node is in its life as a shard owner, as it announces
// itself in the gossip. Only active members are given shards by the ring.
type State uint8

const (
	// StateJoining: the node has joined the gossip but takes no shards
	// yet. Start announces it unless SetState was called before.
	StateJoining State = iota + 1
	// StateActive: the node takes the shards the ring assigns to it.
	StateActive
	// StateLeaving: the node is handing its shards over before it exits.
	StateLeaving
)

// String returns "joining", "active" or "leaving".
func (s State) String() string {
	switch s {
	case StateJoining:
		return "joining"
	case StateActive:
		return "active"
	case StateLeaving:
		return "leaving"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

func (s State) valid() bool { return s >= StateJoining && s <= StateLeaving }

// Member is one node of the cluster as this node sees it: alive, or
// suspected by the failure detector but not yet declared dead.
type Member struct {
	// Name is the node's stable name; Incarnation its current process.
	Name, Incarnation string
	// GRPCAddr is the host:port the node serves gRPC at, from its meta.
	GRPCAddr string
	// GossipAddr is the host:port of the node's memberlist.
	GossipAddr string
	// State is what the node announces.
	State State
}

// View is one node's picture of the cluster: who the members are and
// which member should own each shard. Every node that sees the same
// members computes the same Owners.
//
// A View and its slices are shared by every caller that got it and must
// not be modified; its methods may be called concurrently.
type View struct {
	// Version grows with every change of Members this node sees. It is
	// local to this node: two nodes' versions are not comparable.
	Version uint64
	// Members are the alive and suspect members, this node included,
	// sorted by name; as Cluster.Members.
	Members []Member
	// Owners holds, for each shard, the member that should own it:
	// ring.Owners over the names of the members whose State is
	// StateActive. "" when no member is active. Who does own a shard is
	// decided by its lease in the store, not here.
	Owners []string
}

// Assigned returns the shards whose Owners entry is node, in increasing
// order; nil if none.
func (v View) Assigned(node string) []uint32 {
	var shards []uint32
	for s, o := range v.Owners {
		if o == node {
			shards = append(shards, uint32(s))
		}
	}
	return shards
}

// Member returns the member named name.
func (v View) Member(name string) (Member, bool) {
	i, ok := slices.BinarySearchFunc(v.Members, name, func(m Member, name string) int {
		return strings.Compare(m.Name, name)
	})
	if !ok {
		return Member{}, false
	}
	return v.Members[i], true
}
