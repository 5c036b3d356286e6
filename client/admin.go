package client

import (
	"context"
	"iter"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	timerdv1 "github.com/timerd/timerd/api/timerd/v1"
)

// DeadLetter is a timer whose delivery failed the maximum number of
// attempts.
type DeadLetter struct {
	// TimerInfo is the timer, in StateDead; Due is the due time of the
	// occurrence that failed and Attempts the attempts made.
	TimerInfo
	// LastAttempt is when the last delivery attempt was sent.
	LastAttempt time.Time
	// Reason says why the timer became a dead letter, for people and logs.
	Reason string
}

// DeadLetterPage is one page of ListDeadLetters.
type DeadLetterPage struct {
	// DeadLetters of this page; a page may hold fewer than asked for even
	// when more remain.
	DeadLetters []DeadLetter
	// NextPageToken is the token of the next page; empty on the last page.
	NextPageToken string
}

// ListDeadLetters returns one page of the dead letters of namespace
// (empty: the client's), restricted to topic unless it is empty.
// pageSize 0 means the server's default (100); the server caps it at 1000.
// pageToken is empty for the first page and otherwise a NextPageToken of
// the same namespace and topic. It is retried. DeadLetters walks every
// page.
func (c *Client) ListDeadLetters(ctx context.Context, namespace, topic string, pageSize int, pageToken string) (DeadLetterPage, error) {
	ns := c.ns(namespace)
	if pageSize < 0 || pageSize > 1<<31-1 {
		return DeadLetterPage{}, invalidItem(opList, "", "", "page size out of range")
	}
	req := &timerdv1.ListDeadLettersRequest{Namespace: ns, Topic: topic, PageSize: int32(pageSize), PageToken: pageToken}
	var resp *timerdv1.ListDeadLettersResponse
	err := c.do(ctx, opList, "", "", nil, func(ctx context.Context, k *conn) (err error) {
		resp, err = k.timers.ListDeadLetters(ctx, req)
		return err
	})
	if err != nil {
		return DeadLetterPage{}, err
	}
	page := DeadLetterPage{
		DeadLetters:   make([]DeadLetter, len(resp.GetDeadLetters())),
		NextPageToken: resp.GetNextPageToken(),
	}
	for i, d := range resp.GetDeadLetters() {
		page.DeadLetters[i] = DeadLetter{
			TimerInfo:   timerInfo(d.GetTimer()),
			LastAttempt: toTime(d.GetLastAttemptTime()),
			Reason:      d.GetReason(),
		}
	}
	return page, nil
}

// DeadLetters returns an iterator over every dead letter of namespace
// (empty: the client's) and topic (empty: all), fetching pages of the
// server's default size as it goes. A failed page yields the error once
// and ends the iteration.
func (c *Client) DeadLetters(ctx context.Context, namespace, topic string) iter.Seq2[DeadLetter, error] {
	return func(yield func(DeadLetter, error) bool) {
		token := ""
		for {
			page, err := c.ListDeadLetters(ctx, namespace, topic, 0, token)
			if err != nil {
				yield(DeadLetter{}, err)
				return
			}
			for _, d := range page.DeadLetters {
				if !yield(d, nil) {
					return
				}
			}
			if page.NextPageToken == "" {
				return
			}
			token = page.NextPageToken
		}
	}
}

// Replay selects dead letters for ReplayDeadLetters.
type Replay struct {
	// Namespace of the dead letters; empty means the client's.
	Namespace string
	// Topic restricts the replay to one topic; empty matches every topic.
	Topic string
	// IDs names the dead letters to replay; empty replays every dead letter
	// of the namespace that matches Topic.
	IDs []string
	// Due is when the replayed timers become due. When it is zero they are
	// due Delay after the server applies the request (zero: at once);
	// setting both is an error.
	Due time.Time
	// Delay is used when Due is zero. Negative is an error.
	Delay time.Duration
}

// ReplayResult is what ReplayDeadLetters did.
type ReplayResult struct {
	// Replayed is the number of dead letters moved back to pending.
	Replayed uint64
	// Results has one Result per Replay.IDs entry, in the same order: an
	// item fails with ErrNotFound for no such timer (or one of another
	// topic) and with ErrNotDead for a timer that is not a dead letter.
	// Empty when Replay.IDs is.
	Results []Result
}

// ReplayDeadLetters moves dead letters back to pending so they are
// delivered again, with attempts reset and a new delivery id. Named
// dead letters are sent to the nodes that own them, in one RPC per node;
// a replay of a whole namespace goes to one node, which asks the others.
// It is not retried: a repeated replay would report the timers the first
// one moved as ErrNotDead. The error is non-nil only when an RPC failed as
// a whole, and then the items it carried hold it too.
func (c *Client) ReplayDeadLetters(ctx context.Context, r Replay) (ReplayResult, error) {
	ns := c.ns(r.Namespace)
	req := &timerdv1.ReplayDeadLettersRequest{Namespace: ns, Ids: r.IDs, Topic: r.Topic}
	switch {
	case !r.Due.IsZero() && r.Delay != 0:
		return ReplayResult{}, invalidItem(opReplay, ns, "", "both a due time and a delay are set")
	case r.Delay < 0:
		return ReplayResult{}, invalidItem(opReplay, ns, "", "negative delay")
	case !r.Due.IsZero():
		req.When = &timerdv1.ReplayDeadLettersRequest_DueTime{DueTime: newStamp(r.Due)}
	case r.Delay > 0:
		req.When = &timerdv1.ReplayDeadLettersRequest_Delay{Delay: durationpb.New(r.Delay)}
	}
	out := ReplayResult{Results: make([]Result, len(r.IDs))}
	idx := make([]int, len(r.IDs))
	for i, id := range r.IDs {
		out.Results[i].ID = id
		idx[i] = i
	}
	if len(r.IDs) == 0 {
		err := c.runBatchless(ctx, opReplay, ns, func(ctx context.Context, k *conn) error {
			resp, err := k.timers.ReplayDeadLetters(ctx, req)
			out.Replayed = resp.GetReplayed()
			return err
		})
		return out, err
	}
	nsOf := func(int) string { return ns }
	var replayed atomic.Uint64
	err := c.runBatch(ctx, opReplay, out.Results, idx, false, nsOf, func(ctx context.Context, k *conn, idx []int) ([]*timerdv1.ItemResult, error) {
		part := req
		if len(idx) != len(r.IDs) {
			part = &timerdv1.ReplayDeadLettersRequest{Namespace: ns, Topic: r.Topic, When: req.When, Ids: make([]string, len(idx))}
			for j, i := range idx {
				part.Ids[j] = r.IDs[i]
			}
		}
		resp, err := k.timers.ReplayDeadLetters(ctx, part)
		replayed.Add(resp.GetReplayed())
		return resp.GetResults(), err
	})
	out.Replayed = replayed.Load()
	return out, err
}

// runBatchless runs one unary RPC without retries, on the home node.
func (c *Client) runBatchless(ctx context.Context, op, ns string, call func(context.Context, *conn) error) error {
	if c.closed.Load() {
		return closedErr(op)
	}
	c.topo.awaitFirst(ctx)
	k := c.topo.pick(nil)
	if k == nil {
		return closedErr(op)
	}
	err := call(ctx, k)
	k.release()
	if err != nil {
		if status.Code(err) == codes.Unavailable {
			c.topo.refresh()
		}
		return c.rpcError(ctx, op, ns, "", err)
	}
	return nil
}

// MemberState is the membership state of a node.
type MemberState int

// The membership states of a node.
const (
	// MemberUnknown is a state this client does not know.
	MemberUnknown MemberState = iota
	// MemberAlive is healthy and may own shards.
	MemberAlive
	// MemberSuspect has missed health checks; its leases still hold.
	MemberSuspect
	// MemberDead is considered failed; its shards are taken over once their
	// leases expire.
	MemberDead
	// MemberLeft left the cluster after handing over its shards.
	MemberLeft
)

// String returns "alive", "suspect", "dead", "left" or "unknown".
func (s MemberState) String() string {
	switch s {
	case MemberAlive:
		return "alive"
	case MemberSuspect:
		return "suspect"
	case MemberDead:
		return "dead"
	case MemberLeft:
		return "left"
	}
	return "unknown"
}

// Member is one node of the cluster.
type Member struct {
	// Name is the node's unique name.
	Name string
	// GRPCAddr is where the node serves gRPC.
	GRPCAddr string
	// GossipAddr is where the node gossips; empty for a single node.
	GossipAddr string
	// State is the node's membership state as the answering node sees it.
	State MemberState
	// ShardsOwned is the number of shards the node owns.
	ShardsOwned uint32
	// Incarnation tells apart the processes that have run under Name: it
	// is new at every start of the node.
	Incarnation string
	// NodeState is where the node is in its life as a shard owner.
	NodeState NodeState
}

// NodeState is where a node is in its life as a shard owner.
type NodeState int

// The states of a node as a shard owner.
const (
	// NodeUnknown is a state this client does not know.
	NodeUnknown NodeState = iota
	// NodeJoining has joined the cluster but takes no shards yet.
	NodeJoining
	// NodeActive takes the shards the ring assigns to it.
	NodeActive
	// NodeLeaving hands its shards over before it exits.
	NodeLeaving
)

// String returns "joining", "active", "leaving" or "unknown".
func (s NodeState) String() string {
	switch s {
	case NodeJoining:
		return "joining"
	case NodeActive:
		return "active"
	case NodeLeaving:
		return "leaving"
	}
	return "unknown"
}

// Members lists the nodes the answering node knows, itself included: the
// node that last answered the client's own polls, at first a seed. It is
// retried.
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	var resp *timerdv1.MembersResponse
	err := c.do(ctx, opMembers, "", "", nil, func(ctx context.Context, k *conn) (err error) {
		resp, err = k.cluster.Members(ctx, &timerdv1.MembersRequest{})
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]Member, len(resp.GetMembers()))
	for i, m := range resp.GetMembers() {
		out[i] = Member{
			Name:        m.GetName(),
			GRPCAddr:    m.GetGrpcAddr(),
			GossipAddr:  m.GetGossipAddr(),
			ShardsOwned: m.GetShardsOwned(),
			Incarnation: m.GetIncarnation(),
		}
		switch m.GetNodeState() {
		case timerdv1.NodeState_NODE_STATE_JOINING:
			out[i].NodeState = NodeJoining
		case timerdv1.NodeState_NODE_STATE_ACTIVE:
			out[i].NodeState = NodeActive
		case timerdv1.NodeState_NODE_STATE_LEAVING:
			out[i].NodeState = NodeLeaving
		}
		switch m.GetState() {
		case timerdv1.MemberState_MEMBER_STATE_ALIVE:
			out[i].State = MemberAlive
		case timerdv1.MemberState_MEMBER_STATE_SUSPECT:
			out[i].State = MemberSuspect
		case timerdv1.MemberState_MEMBER_STATE_DEAD:
			out[i].State = MemberDead
		case timerdv1.MemberState_MEMBER_STATE_LEFT:
			out[i].State = MemberLeft
		}
	}
	return out, nil
}

// ShardOwner is the current owner of one shard.
type ShardOwner struct {
	// Shard is the shard's number.
	Shard uint32
	// Owner names the owning node; empty while the shard has no owner.
	Owner string
	// OwnerGRPCAddr is the owner's gRPC address; empty without an owner.
	OwnerGRPCAddr string
	// Epoch is the fencing epoch of the shard's current (or last) lease.
	Epoch uint64
	// State is what the owner is doing with the shard; ShardUnowned
	// without an owner.
	State ShardState
	// Timers is how many timers the shard holds, dead letters included;
	// InFlight and Dead are how many of those wait for their ack and are
	// dead letters. All three are zero when the owner did not answer (State
	// ShardUnknown) or there is no owner.
	Timers, InFlight, Dead uint64
	// Assigned names the node the ring assigns the shard to; it differs
	// from Owner while the shard moves, and is empty when the answering
	// node knows no active member.
	Assigned string
}

// ShardState is what a node is doing with a shard.
type ShardState int

// The states of a shard.
const (
	// ShardUnknown: the owner did not answer, or the state is one this
	// client does not know.
	ShardUnknown ShardState = iota
	// ShardUnowned: no node holds the shard's lease (it is moving, or its
	// owner died and the lease has not lapsed yet).
	ShardUnowned
	// ShardLoading: the owner holds the lease and loads the shard's timers;
	// its requests fail with ErrUnavailable until it serves.
	ShardLoading
	// ShardServing: the owner takes requests and fires the shard's timers.
	ShardServing
	// ShardReleasing: the owner hands the shard over.
	ShardReleasing
)

// String returns "unowned", "loading", "serving", "releasing" or
// "unknown".
func (s ShardState) String() string {
	switch s {
	case ShardUnowned:
		return "unowned"
	case ShardLoading:
		return "loading"
	case ShardServing:
		return "serving"
	case ShardReleasing:
		return "releasing"
	}
	return "unknown"
}

// ShardMap is the shard map as one node sees it.
type ShardMap struct {
	// ShardCount is the number of shards, fixed for a deployment.
	ShardCount uint32
	// Shards has one entry per shard, ordered by shard number.
	Shards []ShardOwner
	// Version grows whenever an owner or epoch changes on the answering
	// node; compare versions only between answers of the same node.
	Version uint64
}

// ShardMap returns the shard count and every shard's owner, epoch, state
// and timer counts as the answering node sees them (the node Members
// asks). It is retried.
func (c *Client) ShardMap(ctx context.Context) (ShardMap, error) {
	var resp *timerdv1.ShardMapResponse
	err := c.do(ctx, opShardMap, "", "", nil, func(ctx context.Context, k *conn) (err error) {
		resp, err = k.cluster.ShardMap(ctx, &timerdv1.ShardMapRequest{})
		return err
	})
	if err != nil {
		return ShardMap{}, err
	}
	m := ShardMap{
		ShardCount: resp.GetShardCount(),
		Shards:     make([]ShardOwner, len(resp.GetShards())),
		Version:    resp.GetVersion(),
	}
	for i, s := range resp.GetShards() {
		m.Shards[i] = ShardOwner{
			Shard:         s.GetShard(),
			Owner:         s.GetOwner(),
			OwnerGRPCAddr: s.GetOwnerGrpcAddr(),
			Epoch:         s.GetEpoch(),
			Timers:        s.GetTimers(),
			InFlight:      s.GetInFlight(),
			Dead:          s.GetDead(),
			Assigned:      s.GetAssigned(),
		}
		switch s.GetState() {
		case timerdv1.ShardState_SHARD_STATE_UNOWNED:
			m.Shards[i].State = ShardUnowned
		case timerdv1.ShardState_SHARD_STATE_LOADING:
			m.Shards[i].State = ShardLoading
		case timerdv1.ShardState_SHARD_STATE_SERVING:
			m.Shards[i].State = ShardServing
		case timerdv1.ShardState_SHARD_STATE_RELEASING:
			m.Shards[i].State = ShardReleasing
		}
	}
	return m, nil
}
