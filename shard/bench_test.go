package shard

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/timerd/timerd/store"
)

// The durable-schedule benchmarks spread many concurrent callers over
// several shards of one node, as the server does when it splits gRPC
// batches by shard: every caller schedules benchBatch timers of ~100 bytes
// (encoded) on a random shard and waits until they are durable.
const (
	benchShards  = 16
	benchCallers = 64
	benchBatch   = 64
)

var benchPayload = []byte("0123456789abcdef0123456789abcdef0123456789abcdef")

func benchSpec(id string) Spec {
	return Spec{Namespace: "bench", ID: id, Topic: "orders.timeout", Delay: time.Hour, Payload: benchPayload}
}

func BenchmarkShardScheduleRedis(b *testing.B)    { benchSchedule(b, newRedisEnv(b)) }
func BenchmarkShardScheduleEmbedded(b *testing.B) { benchSchedule(b, newEmbeddedEnv(b)) }

// BenchmarkShardScheduleRedisCluster is BenchmarkShardScheduleRedis on a
// Redis Cluster of three masters on the same machine, over which the 16
// shards spread, each master's committed by cycles of its own; run both
// (-bench ShardScheduleRedis) to read the ratio.
func BenchmarkShardScheduleRedisCluster(b *testing.B) { benchSchedule(b, newRedisClusterEnv(b)) }

func benchSchedule(b *testing.B, e *env) {
	shards := make([]*Shard, benchShards)
	for i := range shards {
		shards[i] = e.open(b, uint32(i), "bench", newSink(false))
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	e.stats.reset()
	b.ResetTimer()
	for c := range benchCallers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 1))
			specs := make([]Spec, benchBatch)
			for {
				end := next.Add(benchBatch)
				start := end - benchBatch
				if start >= int64(b.N) {
					return
				}
				n := min(end, int64(b.N)) - start
				for i := range n {
					specs[i] = benchSpec("t" + strconv.FormatInt(start+i, 10))
				}
				s := shards[rng.IntN(benchShards)]
				for _, r := range s.Schedule(context.Background(), specs[:n]) {
					if r.Err != nil {
						b.Error(r.Err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "timers/s")
	e.stats.report(b)
}

// BenchmarkRedisPipelineRaw writes the same records as
// BenchmarkShardScheduleRedis to the same layout with raw pipelined
// commands and no fencing: the limit the fenced group commit is measured
// against. Each round trip carries 1024 records spread over the 16
// shards' hashes: per-record sends one HSET per record, per-shard-batch one
// HSET per shard with all its records, as a group commit cycle carries
// them; the latter is the stronger peer.
func BenchmarkRedisPipelineRaw(b *testing.B) {
	for _, mode := range []struct {
		name  string
		multi bool
	}{{"per-record", false}, {"per-shard-batch", true}} {
		b.Run(mode.name, func(b *testing.B) {
			client := newRedisEnv(b).redis.Client(b)
			const perTrip = 1024 // records per round trip
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			// As many round trips in flight as the group commit has
			// callers would not be fair to Redis's one thread either
			// way; two writers keep it busy.
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var buf []byte
					args := make([][]any, benchShards)
					for {
						end := next.Add(perTrip)
						start := end - perTrip
						if start >= int64(b.N) {
							return
						}
						pipe := client.Pipeline()
						for i := start; i < min(end, int64(b.N)); i++ {
							id := "t" + strconv.FormatInt(i, 10)
							rec := store.Record{Namespace: "bench", ID: id, Topic: "orders.timeout", Payload: benchPayload,
								Due: 1e12, Next: 1e12, Delay: 3600000, Created: 1e12, State: store.Pending, OccEpoch: 1, OccSeq: uint64(i)}
							buf = rec.AppendBinary(buf[:0])
							sh := int(i) % benchShards
							key := fmt.Sprintf("raw:{s%d}:r", sh)
							if mode.multi {
								if args[sh] == nil {
									args[sh] = []any{"HSET", key}
								}
								args[sh] = append(args[sh], store.Key("bench", id), string(buf))
							} else {
								pipe.HSet(context.Background(), key, store.Key("bench", id), string(buf))
							}
						}
						for sh := range args {
							if args[sh] != nil {
								pipe.Do(context.Background(), args[sh]...)
								args[sh] = nil
							}
						}
						if _, err := pipe.Exec(context.Background()); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "timers/s")
		})
	}
}

// BenchmarkShardLoad1M measures Open (acquire and load) of a shard holding
// 1,000,000 timers, the Go heap the loaded shard holds per timer, and how
// long a full collection of the heap takes with it loaded (gc-ms).
func BenchmarkShardLoad1M(b *testing.B) {
	for _, kind := range []string{"redis", "embedded"} {
		b.Run(kind, func(b *testing.B) {
			var e *env
			if kind == "redis" {
				e = newRedisEnv(b)
			} else {
				e = newEmbeddedEnv(b)
			}
			const n = 1_000_000
			fillShard(b, e, 0, n)
			var before, after runtime.MemStats
			var gc time.Duration
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for range b.N {
				s, err := Open(context.Background(), e.config(0, "loader", newSink(false)))
				if err != nil {
					b.Fatal(err)
				}
				if got := s.Stats().Timers; got != n {
					b.Fatalf("loaded %d timers, want %d", got, n)
				}
				b.StopTimer()
				runtime.GC()
				gcStart := time.Now()
				runtime.GC()
				gc += time.Since(gcStart)
				runtime.ReadMemStats(&after)
				s.Close(context.Background())
				b.StartTimer()
			}
			b.StopTimer()
			b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/load")
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "timers/s")
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/timer")
			// A collection's cost grows with the pointers it must follow,
			// not with the bytes held: this is what a loaded shard adds
			// to every collection of the node's heap.
			b.ReportMetric(float64(gc.Microseconds())/1000/float64(b.N), "gc-ms")
		})
	}
}

// fillShard writes n pending timers of ~100 bytes straight to the store.
func fillShard(b *testing.B, e *env, shard uint32, n int) {
	due := e.clock.Now().Add(time.Hour).UnixMilli()
	fillRecords(b, e, shard, n, func(i int, epoch uint64) store.Record {
		return store.Record{Namespace: "bench", ID: "t" + strconv.Itoa(i), Topic: "orders.timeout", Payload: benchPayload,
			Due: due + int64(i%3600000), Next: due + int64(i%3600000), Delay: 3600000, Created: due, State: store.Pending, OccEpoch: epoch, OccSeq: uint64(i)}
	})
}

// fillRecords writes the n records rec returns straight to the store,
// under an epoch of its own (which rec is given).
func fillRecords(tb testing.TB, e *env, shard uint32, n int, rec func(i int, epoch uint64) store.Record) {
	tb.Helper()
	g, err := e.st.Acquire(context.Background(), shard, "filler", time.Minute)
	if err != nil {
		tb.Fatal(err)
	}
	const per = 4096
	for start := 0; start < n; start += per {
		ops := make([]store.Op, 0, per)
		for i := start; i < min(start+per, n); i++ {
			r := rec(i, g.Epoch)
			ops = append(ops, store.Op{Key: store.Key(r.Namespace, r.ID), Value: r.AppendBinary(nil)})
		}
		batches := []store.Batch{{Shard: shard, Grant: g, Ops: ops}}
		if err := e.st.Commit(context.Background(), batches); err != nil || batches[0].Err != nil {
			tb.Fatal(err, batches[0].Err)
		}
	}
	if err := e.st.Release(context.Background(), shard, g); err != nil {
		tb.Fatal(err)
	}
}

func BenchmarkShardFireAckRedis(b *testing.B)    { benchFireAck(b, newRedisEnv(b), false) }
func BenchmarkShardFireAckEmbedded(b *testing.B) { benchFireAck(b, newEmbeddedEnv(b), false) }

// BenchmarkShardFireAckRedisCluster is BenchmarkShardFireAckRedis with the
// shard on one master of a three-master Redis Cluster, through a cluster
// client: the cost of the cluster path for one shard.
func BenchmarkShardFireAckRedisCluster(b *testing.B) {
	benchFireAck(b, newRedisClusterEnv(b), false)
}

// The Req variants schedule with a request id, as the Go client does, so
// every ack within the retry window leaves a tombstone in memory, and the
// run includes forgetting them once the window has passed.
func BenchmarkShardFireAckReqRedis(b *testing.B)    { benchFireAck(b, newRedisEnv(b), true) }
func BenchmarkShardFireAckReqEmbedded(b *testing.B) { benchFireAck(b, newEmbeddedEnv(b), true) }

// benchFireAck measures one shard firing b.N due timers to a subscriber
// that acks each (in batches, as a stream's acks arrive) until every ack
// is durable. With req, the timers carry a request id, and the run also
// waits until their tombstones are forgotten.
func benchFireAck(b *testing.B, e *env, req bool) {
	// A subscriber with 4096 credits: a full queue refuses, and the
	// consumer calls Ready as it drains.
	k := &sink{open: true, ch: make(chan Delivery, 4096)}
	s := e.open(b, 0, "bench", k)
	for start := 0; start < b.N; start += 1000 {
		specs := make([]Spec, 0, 1000)
		for i := start; i < min(start+1000, b.N); i++ {
			sp := benchSpec("t" + strconv.Itoa(i))
			sp.Delay = time.Millisecond
			if req {
				sp.Req = uint64(start/1000 + 1)
			}
			specs = append(specs, sp)
		}
		mustSchedule(b, s, specs...)
	}
	e.stats.reset()
	b.ResetTimer()
	e.clock.Advance(time.Millisecond)
	s.settle()
	ids := make([]DeliveryID, 0, 256)
	var last *store.Commit
	for acked := 0; acked < b.N; {
		ids = ids[:0]
		d := <-k.ch
		for {
			id, err := ParseDeliveryID(d.ID)
			if err != nil {
				b.Fatal(err)
			}
			ids = append(ids, id)
			if len(ids) == cap(ids) {
				break
			}
			select {
			case d = <-k.ch:
				continue
			default:
			}
			break
		}
		c, err := s.Ack(ids)
		if err != nil {
			b.Fatal(err)
		}
		if c != nil {
			last = c
		}
		acked += len(ids)
		s.Ready("bench", "orders.timeout")
	}
	if req {
		// Forget the tombstones: the rest of their cost.
		e.clock.Advance(s.cfg.RetryWindow)
		s.settle()
		for goneCount(s) > 0 {
			s.settle()
		}
		s.mu.Lock()
		last = s.lastSub
		s.mu.Unlock()
	}
	if last != nil {
		if err := last.Wait(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if n := s.Stats().Timers; n != 0 {
		b.Fatalf("%d timers left after every ack", n)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "fire+ack/s")
	e.stats.report(b)
}
