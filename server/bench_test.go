package server

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/redistest"
	"github.com/timerd/timerd/store"
)

// benchServer starts a server with the production defaults (64 shards,
// embedded store in a temp dir) on loopback, and a client connection.
func benchServer(b *testing.B, opts ...func(*Config)) (*Server, pb.TimerServiceClient) {
	b.Helper()
	cfg := DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", ""
	cfg.DataDir = b.TempDir()
	cfg.NodeName = "bench"
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = conn.Close()
		_ = srv.Close(context.Background())
	})
	return srv, pb.NewTimerServiceClient(conn)
}

// benchPayload is the payload of benchmark timers: with the ids and
// topic it makes records of ~100 bytes, like the store benchmarks'.
var benchPayload = make([]byte, 48)

// scheduleAll schedules n timers named prefix-0 ... in batches of size
// from workers concurrent callers, due after delay, and fails on any
// item error.
func scheduleAll(b *testing.B, c pb.TimerServiceClient, prefix string, n, size, workers int, delay time.Duration) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range workers {
		wg.Go(func() {
			for {
				start := int(next.Add(int64(size))) - size
				if start >= n {
					return
				}
				req := &pb.ScheduleRequest{Timers: make([]*pb.TimerSpec, min(size, n-start))}
				for i := range req.Timers {
					req.Timers[i] = &pb.TimerSpec{
						Id:      prefix + strconv.Itoa(start+i),
						Topic:   "bench",
						When:    &pb.TimerSpec_Delay{Delay: durationpb.New(delay)},
						Payload: benchPayload,
					}
				}
				resp, err := c.Schedule(context.Background(), req)
				if err == nil {
					for _, r := range resp.Results {
						if r.Code != 0 {
							err = fmt.Errorf("item %s: code %d %s", r.Id, r.Code, r.Message)
							break
						}
					}
				}
				if err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
}

// BenchmarkServerSchedule measures durable schedules per second through
// gRPC into the embedded store, 16 concurrent callers sending batches of
// 100 and of 1,000. Its peer, in the same run, is the store alone: the same number
// of ~100-byte records committed in synced batches of the same size, by
// as many callers, with no gRPC, validation or shards in between.
func BenchmarkServerSchedule(b *testing.B) {
	const workers = 16
	for _, size := range []int{100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			_, c := benchServer(b)
			b.ResetTimer()
			scheduleAll(b, c, "t", b.N, size, workers, time.Hour)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "timers/s")
		})
		b.Run(fmt.Sprintf("batch=%d/peer=store-commit", size), func(b *testing.B) {
			st, err := store.OpenEmbedded(store.DefaultEmbeddedConfig(b.TempDir()))
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			const shards = 64
			grants := make([]store.Grant, shards)
			for i := range grants {
				if grants[i], err = st.Acquire(context.Background(), uint32(i), "bench", time.Hour); err != nil {
					b.Fatal(err)
				}
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for range workers {
				wg.Go(func() {
					for {
						start := int(next.Add(int64(size))) - size
						if start >= b.N {
							return
						}
						var batches []store.Batch
						for i := start; i < min(start+size, b.N); i++ {
							id := "t" + strconv.Itoa(i)
							rec := store.Record{Namespace: "default", ID: id, Topic: "bench", Payload: benchPayload, Due: 1, Next: 1, Delay: -1}
							s := uint32(i % shards)
							if len(batches) <= int(s) {
								batches = append(batches, make([]store.Batch, int(s)+1-len(batches))...)
							}
							batches[s].Shard, batches[s].Grant = s, grants[s]
							batches[s].Ops = append(batches[s].Ops, store.Op{Key: store.Key("default", id), Value: rec.AppendBinary(nil)})
						}
						if err := st.Commit(context.Background(), batches); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "timers/s")
		})
	}
}

// BenchmarkServerScheduleRedis is BenchmarkServerSchedule's batches of
// 1,000 with the shards in Redis (a real redis-server on loopback, AOF
// everysec). Its peer is the shard package's BenchmarkRedisPipelineRaw
// (raw pipelined HSETs of the same records), which make bench runs in the
// same pass.
func BenchmarkServerScheduleRedis(b *testing.B) {
	rs := redistest.Start(b)
	_, c := benchServer(b, func(cfg *Config) { cfg.RedisURL = "redis://" + rs.Addr() })
	b.ResetTimer()
	scheduleAll(b, c, "t", b.N, 1000, 16, time.Hour)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "timers/s")
}

// BenchmarkServerFireAck measures deliveries per second fired and
// acknowledged through Subscribe streams: b.N due timers are scheduled
// first (not timed), then subscribers receive them and ack in batches of
// 256 until every timer is gone from the shards.
func BenchmarkServerFireAck(b *testing.B) {
	for _, streams := range []int{1, 4} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			srv, c := benchServer(b)
			scheduleAll(b, c, "f", b.N, 1000, 8, 0)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			b.ResetTimer()
			var wg sync.WaitGroup
			for range streams {
				subscribeAcking(b, ctx, c, &wg, &pb.Subscription{Topic: "bench", MaxInFlight: 10_000}, func(*pb.Delivery, time.Time) {})
			}
			// Done when the shards hold no timers: every ack applied.
			for {
				left := 0
				for _, s := range srv.shardStats() {
					left += s.stats.Timers
				}
				if left == 0 {
					break
				}
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
			cancel()
			wg.Wait()
		})
	}
}
