package chaos

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// failover is how long a killed node's timers waited for another node.
type failover struct {
	// Shards the killed node served before the kill (of ShardCount), and
	// Pending the expected timers on them, acknowledged before the kill
	// and not yet received at it.
	Shards     int `json:"shards"`
	ShardCount int `json:"shard_count"`
	Pending    int `json:"pending"`
	// TakenOver counts the dead shards that delivered under a higher
	// epoch after the kill; TakeoverMin and TakeoverMax are the first
	// such delivery of the fastest and of the slowest shard, after the
	// kill.
	TakenOver   int           `json:"taken_over"`
	TakeoverMin time.Duration `json:"takeover_min_ns"`
	TakeoverMax time.Duration `json:"takeover_max_ns"`
	// Stranded are the killed node's timers that came due (or were in
	// flight) while their shard had no live owner: not received before
	// the kill and due no later than their shard's takeover. First and
	// Last are, after the kill, the first delivery elsewhere of the first
	// and of the last of them to be fired.
	Stranded int           `json:"stranded"`
	First    time.Duration `json:"first_ns"`
	Last     time.Duration `json:"last_ns"`
	// VictimLatenessMax is the largest lateness of the first delivery of
	// a pending timer of the killed node, after its due time.
	VictimLatenessMax time.Duration `json:"victim_lateness_max_ns"`
	// OthersMoved counts the survivors' shards that delivered under a
	// higher epoch after the kill: their leases lapsed too, a stall (of
	// Redis, of the machine) beyond the kill.
	OthersMoved int `json:"others_moved"`
}

// measureFailover computes the failover figures of a kill at kill of the
// node victim, which served the shards whose owner is victim in before
// (indexed by shard), from the timers that must fire and the deliveries.
func measureFailover(before []shardOwner, victim string, kill time.Time, exp map[string]expectation, got []delivery) failover {
	f := failover{ShardCount: len(before)}
	dead := make(map[uint32]bool)
	for s, o := range before {
		if o.owner == victim {
			dead[uint32(s)] = true
			f.Shards++
		}
	}
	// A timer's shard is known from its deliveries; what was received
	// before the kill, and the first delivery under a new owner.
	shardOf := make(map[string]uint32)
	seenBefore := make(map[string]bool)
	firstAt := make(map[string]time.Time)
	elsewhere := make(map[string]time.Time)
	takeover := make(map[uint32]time.Time)
	moved := make(map[uint32]bool)
	for _, d := range got {
		if !dead[d.shard] {
			if int(d.shard) < len(before) && d.epoch > before[d.shard].epoch && !d.received.Before(kill) {
				moved[d.shard] = true
			}
			continue
		}
		shardOf[d.id] = d.shard
		if d.received.Before(kill) {
			seenBefore[d.id] = true
		}
		if t, ok := firstAt[d.id]; !ok || d.received.Before(t) {
			firstAt[d.id] = d.received
		}
		if d.epoch > before[d.shard].epoch {
			if t, ok := elsewhere[d.id]; !ok || d.received.Before(t) {
				elsewhere[d.id] = d.received
			}
			if t, ok := takeover[d.shard]; !ok || d.received.Before(t) {
				takeover[d.shard] = d.received
			}
		}
	}
	f.TakenOver = len(takeover)
	f.OthersMoved = len(moved)
	for i, t := range sortedTimes(takeover) {
		if i == 0 {
			f.TakeoverMin = t.Sub(kill)
		}
		f.TakeoverMax = t.Sub(kill)
	}
	var first, last time.Time
	for id, s := range shardOf {
		e, ok := exp[id]
		if !ok || seenBefore[id] {
			continue
		}
		if e.ackedAt.Before(kill) {
			f.Pending++
			f.VictimLatenessMax = max(f.VictimLatenessMax, firstAt[id].Sub(e.due))
		}
		if t, ok := takeover[s]; !ok || e.due.After(t) {
			continue
		}
		f.Stranded++
		if t, ok := elsewhere[id]; ok {
			if first.IsZero() || t.Before(first) {
				first = t
			}
			if t.After(last) {
				last = t
			}
		}
	}
	if !first.IsZero() {
		f.First, f.Last = first.Sub(kill), last.Sub(kill)
	}
	return f
}

// addTo adds the failover figures to v, and a problem for every shard of
// the victim not taken over.
func (f failover) addTo(v *verdict, victim string) {
	v.figure("victim", victim)
	v.figure("victim_shards", fmt.Sprintf("%d/%d", f.Shards, f.ShardCount))
	v.figure("victim_pending", f.Pending)
	v.figure("takeover_min", f.TakeoverMin)
	v.figure("takeover_max", f.TakeoverMax)
	v.figure("stranded", f.Stranded)
	v.figure("stranded_first", f.First)
	v.figure("stranded_last", f.Last)
	v.figure("victim_lateness_max", f.VictimLatenessMax)
	v.figure("survivor_shards_moved", f.OthersMoved)
	if f.TakenOver != f.Shards {
		v.problem("%d of the %d shards %s served were taken over", f.TakenOver, f.Shards, victim)
	}
}

// servedAgain measures, from kill, how long each of shards went without
// a live owner: until one of the nodes behind conns says it serves it. It
// asks each node for its own shards only (ShardMapRequest.local): a whole
// shard map waits, a few seconds, for every member in the answering
// node's view, the dead one too until it is declared dead. It polls every
// 50ms until every shard has an owner, or bound passes, and returns the
// shortest and the longest wait; ok is false if a shard had none within
// bound.
func servedAgain(ctx context.Context, conns []*grpc.ClientConn, shards []uint32, kill time.Time, bound time.Duration) (shortest, longest time.Duration, ok bool) {
	left := make(map[uint32]bool, len(shards))
	for _, s := range shards {
		left[s] = true
	}
	shortest = bound
	for len(left) > 0 && time.Since(kill) < bound {
		for _, conn := range conns {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			sm, err := pb.NewClusterServiceClient(conn).ShardMap(cctx, &pb.ShardMapRequest{Local: true})
			cancel()
			now := time.Since(kill)
			if err != nil {
				continue
			}
			for _, o := range sm.GetShards() {
				if left[o.GetShard()] && o.GetState() == pb.ShardState_SHARD_STATE_SERVING {
					delete(left, o.GetShard())
					shortest, longest = min(shortest, now), max(longest, now)
				}
			}
		}
		if !sleepUntil(ctx, time.Now().Add(50*time.Millisecond)) {
			break
		}
	}
	return shortest, longest, len(left) == 0
}

// shardsOf returns the shards whose owner is name in owners.
func shardsOf(owners []shardOwner, name string) []uint32 {
	var out []uint32
	for s, o := range owners {
		if o.owner == name {
			out = append(out, uint32(s))
		}
	}
	return out
}
