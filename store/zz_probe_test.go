package store

import (
	"strconv"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/redistest"
)

func TestZZProbe(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	ctx := t.Context()
	s := newTestRedis(t, client, "bench", 5000)
	e, _ := s.Acquire(ctx, 0, "bench", time.Hour)
	n := 1_000_000
	t0 := time.Now()
	for start := 0; start < n; start += 16_000 {
		batches := make([]Batch, 0, 16)
		for j := start; j < min(start+16_000, n); j += 1000 {
			bt := Batch{Shard: 0, Epoch: e}
			for i := j; i < min(j+1000, n); i++ {
				bt.Ops = append(bt.Ops, put(rec("bench", strconv.Itoa(i))))
			}
			batches = append(batches, bt)
		}
		if err := s.Commit(ctx, batches); err != nil || batches[0].Err != nil {
			t.Fatalf("fill: %v %v", err, batches[0].Err)
		}
	}
	t.Log("fill", time.Since(t0))
	client.ConfigResetStat(ctx)
	for _, page := range []int{1000, 5000, 10000, 50000} {
		t0 = time.Now()
		var cursor uint64
		calls := 0
		for {
			kv, next, err := client.HScan(ctx, "bench:{s0}:r", cursor, "", int64(page)).Result()
			if err != nil {
				t.Fatal(err)
			}
			_ = kv
			calls++
			if next == 0 {
				break
			}
			cursor = next
		}
		t.Log("page", page, "raw", time.Since(t0), calls)
	}
	t.Log(client.Info(ctx, "commandstats").Val())
	t.Log(client.Info(ctx, "memory").Val()[:300])
}
