package store

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file holds what the Redis store does only through a Redis Cluster
// client: it sends each master's batches in a pipeline of its own, and it
// tells the Committer (as a Partitioner) which master holds each shard,
// so that a slow master holds up only its own shards' cycles.

const (
	// slotCount is the number of Redis Cluster hash slots.
	slotCount = 16384
	// partsMaxAge is how old the slot map behind Partition may grow
	// before a commit reads it again: the bound on how long a resharding
	// that caused no error goes unnoticed. A read costs one CLUSTER SHARDS
	// round trip.
	partsMaxAge = time.Second
)

var _ Partitioner = (*Redis)(nil)

// partMap is a cluster's slot map as partitions: the masters serving
// slots, numbered in the order of the first slot each serves, so that a
// replica promoted in its master's place keeps the master's number.
type partMap struct {
	slot [slotCount]uint8 // partition of each slot; 0 for a slot no master serves
	read time.Time        // when CLUSTER SHARDS was read
}

// Partitioned implements Partitioner: a store on a Redis Cluster client
// spreads shards over the cluster's masters.
func (r *Redis) Partitioned() bool { return r.cluster != nil }

// Partition implements Partitioner: the number of the master that served
// shard's slot when a commit last read the slot map (0 before any has). It
// does no I/O.
func (r *Redis) Partition(shard uint32) int {
	m := r.parts.Load()
	if m == nil {
		return 0
	}
	return int(m.slot[shardSlot(shard)])
}

// shardSlot returns the Cluster hash slot of the shard's hash tag
// {s<shard>}, which every key of the shard carries.
func shardSlot(shard uint32) uint16 {
	var buf [11]byte
	return crc16(strconv.AppendUint(append(buf[:0], 's'), uint64(shard), 10)) % slotCount
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial value 0), the
// checksum Redis Cluster hashes keys with.
func crc16(b []byte) uint16 {
	var crc uint16
	for _, c := range b {
		crc ^= uint16(c) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// readPartsIfDue reads the slot map (CLUSTER SHARDS) into parts when there is none yet, when
// a commit failed since the last read, or when it is older than
// partsMaxAge. Only the first read waits for another in progress; a
// failed read keeps the old map, which only costs speed.
func (r *Redis) readPartsIfDue(ctx context.Context) {
	m := r.parts.Load()
	if m != nil && !r.partsStale.Load() && time.Since(m.read) < partsMaxAge {
		return
	}
	if m == nil {
		r.partsMu.Lock()
	} else if !r.partsMu.TryLock() {
		return
	}
	defer r.partsMu.Unlock()
	if m2 := r.parts.Load(); m2 != m {
		return // another commit read it meanwhile
	}
	r.partsStale.Store(false)
	shards, err := r.cluster.ClusterShards(ctx).Result()
	if err != nil {
		// Before Redis 7 there is no CLUSTER SHARDS: every shard stays in
		// partition 0, and the Committer's lanes are shared by all
		// masters, as on a standalone server.
		r.partsStale.Store(true)
		return
	}
	r.parts.Store(newPartMap(shards, time.Now()))
}

// newPartMap numbers the masters of CLUSTER SHARDS by the first slot each
// serves.
func newPartMap(shards []redis.ClusterShard, read time.Time) *partMap {
	type span struct {
		start, end int64
		master     string // node ID
	}
	var spans []span
	for _, sh := range shards {
		i := slices.IndexFunc(sh.Nodes, func(n redis.Node) bool { return n.Role == "master" })
		if i < 0 {
			continue
		}
		for _, sr := range sh.Slots {
			if sr.Start >= 0 && sr.End < slotCount && sr.Start <= sr.End {
				spans = append(spans, span{sr.Start, sr.End, sh.Nodes[i].ID})
			}
		}
	}
	slices.SortFunc(spans, func(a, b span) int { return int(a.start - b.start) })
	m := &partMap{read: read}
	num := make(map[string]uint8)
	for _, sp := range spans {
		p, ok := num[sp.master]
		if !ok {
			p = uint8(len(num)) // wraps past 255 masters: partitions then share lanes
			num[sp.master] = p
		}
		for slot := sp.start; slot <= sp.end; slot++ {
			m.slot[slot] = p
		}
	}
	return m
}

// masterGroup is the batches of one commit that one master serves.
type masterGroup struct {
	client *redis.Client
	which  []int
}

// byMaster groups batches[which] by the master that the cluster client
// routes each shard's keys to, keeping their order within each group.
func (r *Redis) byMaster(ctx context.Context, batches []Batch, which []int) ([]masterGroup, error) {
	var groups []masterGroup
	for _, i := range which {
		c, err := r.cluster.MasterForKey(ctx, r.key(batches[i].Shard, "epoch"))
		if err != nil {
			r.noteClusterErr(err)
			return nil, err
		}
		g := slices.IndexFunc(groups, func(g masterGroup) bool { return g.client == c })
		if g < 0 {
			groups = append(groups, masterGroup{client: c})
			g = len(groups) - 1
		}
		groups[g].which = append(groups[g].which, i)
	}
	return groups, nil
}

// noteClusterErr reacts to a failed commit through a cluster client:
// unless the failure is a script's own reply (a fence, a missing script)
// or too few replicas, the slot map may have changed (MOVED, CLUSTERDOWN
// while a replica is promoted, a master that no longer answers), so the
// client is told to read it again (it otherwise does only every 10 s) and
// so is the next commit, for Partition.
func (r *Redis) noteClusterErr(err error) {
	if err == nil || errors.Is(err, ErrReplicas) || errors.Is(err, context.Canceled) {
		return
	}
	r.cluster.ReloadState(context.Background())
	r.partsStale.Store(true)
}
