package redisraw

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/bench"
	"github.com/timerd/timerd/internal/redistest"
	"github.com/timerd/timerd/store"
)

// recorder counts the timers Target stored and the run's topic.
type recorder struct {
	*Target
	mu     sync.Mutex
	n      int
	topics map[string]bool
}

func (r *recorder) Schedule(ctx context.Context, timers []bench.Timer) error {
	err := r.Target.Schedule(ctx, timers)
	if err == nil {
		r.mu.Lock()
		r.n += len(timers)
		for _, t := range timers {
			r.topics[t.Topic] = true
		}
		r.mu.Unlock()
	}
	return err
}

// TestRedisRaw runs schedule on a real redis-server: the peer stores
// exactly the timers of the run, as the records timerd would store, and
// leaves nothing behind; it refuses the scenarios that fire.
func TestRedisRaw(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	ctx := context.Background()
	url := "redis://" + rs.Addr() + "/0"

	// keys returns the keys of every run.
	keys := func() []string {
		ks, err := rdb.Keys(ctx, "timerd-bench:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}

	rr, err := New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Close()
	if rr.Name() != "redis-raw" || rr.Addr() != rs.Addr() {
		t.Errorf("Name, Addr = %q, %q", rr.Name(), rr.Addr())
	}

	t.Run("unsupported", func(t *testing.T) {
		for _, s := range []string{"fire", "mixed", "burst"} {
			if _, err := bench.Run(ctx, s, rr, bench.Config{}, bench.Progress{}); !errors.Is(err, bench.ErrUnsupported) || !strings.Contains(err.Error(), "redis-raw") {
				t.Errorf("Run(%s) on redis-raw = %v, want bench.ErrUnsupported naming redis-raw", s, err)
			}
		}
	})

	t.Run("keep", func(t *testing.T) {
		rec := &recorder{Target: rr, topics: map[string]bool{}}
		rep, err := bench.Run(ctx, "schedule", rec,
			bench.Config{Duration: 10 * time.Second, Count: 3000, Batches: []int{10, 100}, Concurrency: 4, Keep: true, Tick: 50 * time.Millisecond}, bench.Progress{})
		if err != nil {
			t.Fatal(err)
		}
		if err := rep.Err(); err != nil || rep.Interrupted || rep.Target != "redis-raw" {
			t.Fatalf("run: %v (interrupted %v, target %q)", err, rep.Interrupted, rep.Target)
		}
		checkFilled(t, rep)
		if rec.n != 6000 || len(rec.topics) != 1 {
			t.Fatalf("stored %d timers on topics %v, want 6000 on one", rec.n, rec.topics)
		}
		var topic string
		for tp := range rec.topics {
			topic = tp
		}
		// Exactly the timers stored, as fields of the run's 64 hashes.
		var total int64
		for sh := range uint32(rawShards) {
			n, err := rdb.HLen(ctx, rr.key(topic, sh)).Result()
			if err != nil {
				t.Fatal(err)
			}
			total += n
		}
		if total != 6000 {
			t.Errorf("HLEN over the 64 hashes = %d, want 6000", total)
		}
		if ks := keys(); len(ks) == 0 || len(ks) > rawShards {
			t.Errorf("%d keys for the run: %v", len(ks), ks)
		}
		// A field is the record timerd would store.
		fields, err := rdb.HGetAll(ctx, rr.key(topic, 0)).Result()
		if err != nil || len(fields) == 0 {
			t.Fatalf("HGETALL of shard 0: %d fields, %v", len(fields), err)
		}
		for field, val := range fields {
			var rec store.Record
			if err := rec.UnmarshalBinary([]byte(val)); err != nil {
				t.Fatalf("field %s: %v", field, err)
			}
			if rec.Topic != topic || rec.Namespace != "bench" || store.Key("bench", rec.ID) != field || len(rec.Payload) != 64 {
				t.Errorf("field %s holds %+v", field, rec)
			}
			if d := time.Until(time.UnixMilli(rec.Due)); d < 50*time.Minute || d > time.Hour {
				t.Errorf("record %s due in %v, want about 1h", rec.ID, d)
			}
			break
		}
		if err := rr.Cleanup(ctx, topic, nil); err != nil {
			t.Fatal(err)
		}
		if ks := keys(); len(ks) != 0 {
			t.Errorf("keys left after Cleanup: %v", ks)
		}
	})

	t.Run("cleanup", func(t *testing.T) {
		rep, err := bench.Run(ctx, "schedule", rr,
			bench.Config{Duration: 300 * time.Millisecond, Batches: []int{100}, Concurrency: 2, Tick: 50 * time.Millisecond}, bench.Progress{})
		if err != nil || rep.Err() != nil {
			t.Fatalf("Run = %v, %v", err, rep.Err())
		}
		if metric(t, rep, "scheduled, batch=100") <= 0 {
			t.Errorf("metrics %+v", rep.Metrics)
		}
		if ks := keys(); len(ks) != 0 {
			t.Errorf("keys left after a run without Keep: %v", ks)
		}
	})

	t.Run("errors", func(t *testing.T) {
		if _, err := New(ctx, "http://nope"); err == nil || !strings.Contains(err.Error(), "redis-raw") {
			t.Errorf("New of a bad URL = %v", err)
		}
		r2, err := New(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		if err := r2.Close(); err != nil {
			t.Error(err)
		}
		if err := r2.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
		if err := r2.Schedule(ctx, []bench.Timer{{ID: "a", Topic: "t", Due: time.Now()}}); err == nil {
			t.Error("Schedule on a closed Target succeeded")
		}
	})
}

// metric returns the value of rep's metric name.
func metric(t *testing.T, rep *bench.Report, name string) float64 {
	t.Helper()
	for _, m := range rep.Metrics {
		if m.Name == name {
			return m.Value
		}
	}
	t.Fatalf("report has no metric %q: %+v", name, rep.Metrics)
	return 0
}

// checkFilled checks what a finished schedule report has: its header,
// parameters, metrics, and distributions and series with values.
func checkFilled(t *testing.T, rep *bench.Report) {
	t.Helper()
	if rep.Scenario != "schedule" || rep.Target != "redis-raw" || rep.Addr == "" || rep.Start.IsZero() || rep.Elapsed <= 0 {
		t.Errorf("report header: scenario %q target %q addr %q start %v elapsed %g", rep.Scenario, rep.Target, rep.Addr, rep.Start, rep.Elapsed)
	}
	if len(rep.Params) == 0 || len(rep.Metrics) == 0 || len(rep.Dists) == 0 || len(rep.Series) == 0 {
		t.Fatalf("report lacks params, metrics, dists or series: %d %d %d %d", len(rep.Params), len(rep.Metrics), len(rep.Dists), len(rep.Series))
	}
	for _, d := range rep.Dists {
		if d.Count == 0 {
			t.Errorf("distribution %q has no values", d.Name)
		}
	}
	for _, s := range rep.Series {
		if len(s.Points) == 0 {
			t.Errorf("series %q has no points", s.Name)
		}
	}
}
