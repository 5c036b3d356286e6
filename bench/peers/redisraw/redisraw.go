// Package redisraw drives Redis with plain pipelined HSETs of timerd's own
// records as a bench.Target: the limit timerd's durable schedule on Redis
// is measured against. It lives in the module bench/peers because it
// encodes its records with timerd's store package (and so links go-redis
// and Pebble), which package bench, and timerctl with it, must not.
package redisraw

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/timerd/timerd/bench"
	"github.com/timerd/timerd/ring"
	"github.com/timerd/timerd/store"
)

// rawShards is the number of hashes Target spreads records over, as a
// timerd node spreads them over its shards (the default count).
const rawShards = 64

// Target is the limit timerd's durable schedule is measured against:
// the same records timerd stores, written to Redis with plain pipelined
// HSETs (one per shard hash per call, as timerd's group commit groups
// them) and none of timerd's fencing, validation or RPC. It only stores:
// it is a peer for the schedule scenario. Its methods may be called
// concurrently.
type Target struct {
	rdb  *redis.Client
	addr string
	// prefix starts every key; the run's topic is added to it so that
	// Cleanup can drop a run's hashes whole.
	prefix string

	closeOnce sync.Once
	closeErr  error
}

// New connects to the Redis at url (redis://host:port/db) and checks that
// it answers.
func New(ctx context.Context, url string) (*Target, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis-raw: %w", err)
	}
	rdb := redis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis-raw: ping %s: %w", opts.Addr, err)
	}
	return &Target{rdb: rdb, addr: opts.Addr, prefix: "timerd-bench"}, nil
}

// Name implements bench.Target.
func (r *Target) Name() string { return "redis-raw" }

// Addr implements bench.Target.
func (r *Target) Addr() string { return r.addr }

func (r *Target) key(topic string, shard uint32) string {
	return fmt.Sprintf("%s:%s:{s%d}:r", r.prefix, topic, shard)
}

// Schedule implements bench.Target: the timers' records, encoded as timerd
// encodes them, go out as one HSET per shard hash in one pipeline.
func (r *Target) Schedule(ctx context.Context, timers []bench.Timer) error {
	const ns = "bench"
	args := make(map[uint32][]any)
	now := time.Now().UnixMilli()
	var buf []byte
	for _, t := range timers {
		due := t.Due.UnixMilli()
		rec := store.Record{Namespace: ns, ID: t.ID, Topic: t.Topic, Payload: t.Payload,
			Due: due, Next: due, SpecDue: due, Delay: -1, Created: now, State: store.Pending}
		buf = rec.AppendBinary(buf[:0])
		sh := ring.Shard(ns, t.ID, rawShards)
		if args[sh] == nil {
			args[sh] = []any{"HSET", r.key(t.Topic, sh)}
		}
		args[sh] = append(args[sh], store.Key(ns, t.ID), string(buf))
	}
	pipe := r.rdb.Pipeline()
	for _, a := range args {
		pipe.Do(ctx, a...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redis-raw: %w", err)
	}
	return nil
}

// Cleanup implements bench.Target by deleting the run's hashes.
func (r *Target) Cleanup(ctx context.Context, topic string, _ []string) error {
	keys := make([]string, rawShards)
	for sh := range keys {
		keys[sh] = r.key(topic, uint32(sh))
	}
	if err := r.rdb.Del(ctx, keys...).Err(); err != nil {
		return fmt.Errorf("redis-raw: %w", err)
	}
	return nil
}

// Close implements bench.Target.
func (r *Target) Close() error {
	r.closeOnce.Do(func() { r.closeErr = r.rdb.Close() })
	return r.closeErr
}
