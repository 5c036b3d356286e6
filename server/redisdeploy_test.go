package server

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/redistest"
)

// sentinelURL is the --redis URL of a Sentinel deployment's master.
func sentinelURL(d *redistest.Sentinel) string {
	return "redis-sentinel://" + d.Addr() + "?master=" + redistest.MasterName
}

// TestRedisDeployments: a node started on each kind of Redis deployment
// its URL can name (a Redis Cluster of three masters by a list of seeds
// or by one, a master behind Sentinel) serves: timers it acknowledged are
// delivered, none early, and on the cluster its shards' keys are spread
// over every master.
func TestRedisDeployments(t *testing.T) {
	const n = 60
	tests := []struct {
		name string
		// deploy starts the deployment; it returns the URL and, for a
		// cluster, its masters, each of which must hold some keys.
		deploy func(t *testing.T) (string, []*redistest.Server)
	}{
		{"cluster by its seeds", func(t *testing.T) (string, []*redistest.Server) {
			rc := redistest.StartRedisCluster(t, 3, 0)
			return "redis://" + strings.Join(rc.Addrs(), ","), rc.Masters(t)
		}},
		{"cluster by one seed", func(t *testing.T) (string, []*redistest.Server) {
			rc := redistest.StartRedisCluster(t, 3, 0)
			return "redis+cluster://" + rc.Addrs()[1], rc.Masters(t)
		}},
		{"sentinel", func(t *testing.T) (string, []*redistest.Server) {
			return sentinelURL(redistest.StartSentinel(t, 1)), nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, masters := tt.deploy(t)
			e := start(t, "", func(c *Config) {
				c.RedisURL = url
				c.Shards = 32
			})
			specs := make([]*pb.TimerSpec, n)
			for i := range specs {
				specs[i] = spec(fmt.Sprintf("t%03d", i), "deploy", time.Duration(i%5)*100*time.Millisecond)
			}
			due := map[string]time.Time{}
			for i, r := range e.schedule(specs...) {
				due[specs[i].Id] = r.DueTime.AsTime()
			}
			for _, m := range masters {
				if size, err := m.Client(t).DBSize(e.ctx()).Result(); err != nil || size == 0 {
					t.Errorf("master %s holds %d keys (%v); the shards should spread over every master", m.Addr(), size, err)
				}
			}
			st := e.subscribe(&pb.Subscription{Topic: "deploy"})
			for len(due) > 0 {
				d := st.next()
				want, ok := due[d.Id]
				switch {
				case !ok:
					continue // a redelivery of one already seen
				case d.FiredTime.AsTime().Before(want):
					t.Fatalf("%s fired at %v, before its due time %v", d.Id, d.FiredTime.AsTime(), want)
				}
				delete(due, d.Id)
				st.ack(d)
			}
		})
	}
}

// TestRedisPersistenceEveryMaster: the persistence check asks every
// server that answers writes, so a node refuses a Redis Cluster one of
// whose masters runs without an append-only file, naming that master, and
// a master behind Sentinel that does; with AllowVolatileRedis it starts
// and warns.
func TestRedisPersistenceEveryMaster(t *testing.T) {
	tests := []struct {
		name string
		// deploy starts the deployment and turns the AOF off on one
		// master; it returns the URL and what the refusal must name.
		deploy func(t *testing.T) (url, names string)
	}{
		{"cluster", func(t *testing.T) (string, string) {
			rc := redistest.StartRedisCluster(t, 3, 0)
			m := rc.Masters(t)[1]
			if err := m.Client(t).ConfigSet(context.Background(), "appendonly", "no").Err(); err != nil {
				t.Fatal(err)
			}
			return "redis://" + strings.Join(rc.Addrs(), ","), "cluster master " + m.Addr()
		}},
		{"sentinel", func(t *testing.T) (string, string) {
			d := redistest.StartSentinel(t, 0)
			if err := d.Master.Client(t).ConfigSet(context.Background(), "appendonly", "no").Err(); err != nil {
				t.Fatal(err)
			}
			return sentinelURL(d), `master "` + redistest.MasterName + `"`
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, names := tt.deploy(t)
			for _, allow := range []bool{false, true} {
				logs := &logRecorder{}
				cfg := LocalConfig(t.TempDir())
				cfg.RedisURL, cfg.AllowVolatileRedis, cfg.Logger = url, allow, slog.New(logs)
				srv, err := New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err = srv.Start(ctx)
				cancel()
				if cerr := srv.Close(context.Background()); cerr != nil {
					t.Errorf("Close: %v", cerr)
				}
				switch {
				case !allow && (err == nil || !strings.Contains(err.Error(), names) || !strings.Contains(err.Error(), "appendonly no")):
					t.Fatalf("Start = %v; want a refusal naming %s and appendonly no", err, names)
				case allow && err != nil:
					t.Fatalf("Start with AllowVolatileRedis: %v", err)
				case allow && len(logs.find("without an append-only file")) != 1:
					t.Fatalf("with AllowVolatileRedis, %d warnings of a master without an AOF; want 1", len(logs.find("without an append-only file")))
				}
			}
		})
	}
}

// TestRedisClusterMasterFailover: a node on a Redis Cluster of three
// masters with a replica each, committing with RedisWaitReplicas 1, loses
// no timer it acknowledged when a master is killed (SIGKILL) and its
// replica takes over while timers are being scheduled and falling due:
// every acknowledged timer is delivered, none early. The old master
// comes back as the new one's replica, which the new master needs before
// it can commit again.
func TestRedisClusterMasterFailover(t *testing.T) {
	rc := redistest.StartRedisCluster(t, 3, 1)
	e := start(t, "", func(c *Config) {
		c.RedisURL = "redis://" + strings.Join(rc.Addrs(), ",")
		c.RedisWaitReplicas = 1
		c.Shards = 32
		// The commits of the failed master's shards wait out the
		// failover and the old master's return rather than fail.
		c.Commit.GiveUpAfter = time.Minute
		c.Shard.MaxAttempts = 100
	})
	st := e.subscribe(&pb.Subscription{Topic: "failover", MaxInFlight: 1000})

	// fired is guarded by mu: the first fired time of each timer
	// received, and how often it was.
	type received struct {
		fired time.Time
		n     int
	}
	var mu sync.Mutex
	fired := map[string]*received{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case d := <-st.got:
				mu.Lock()
				r := fired[d.Id]
				if r == nil {
					r = &received{fired: d.FiredTime.AsTime()}
					fired[d.Id] = r
				}
				r.n++
				mu.Unlock()
				if st.s.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: &pb.Ack{DeliveryIds: []string{d.DeliveryId}}}}) != nil {
					return
				}
			case <-done:
				return
			}
		}
	})
	defer func() {
		close(done)
		wg.Wait()
	}()

	// The scheduler is guarded by mu too: the acknowledged timers' due
	// times, and how many were tried.
	due, tried := map[string]time.Time{}, 0
	stop := make(chan struct{})
	scheduled := make(chan struct{})
	go func() {
		defer close(scheduled)
		for b := 0; ; b++ {
			select {
			case <-stop:
				return
			default:
			}
			specs := make([]*pb.TimerSpec, 50)
			for i := range specs {
				specs[i] = spec(fmt.Sprintf("b%d-%d", b, i), "failover", time.Second+time.Duration(i)*20*time.Millisecond)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			resp, err := e.timers.Schedule(ctx, &pb.ScheduleRequest{Timers: specs})
			cancel()
			mu.Lock()
			tried += len(specs)
			for i, r := range resp.GetResults() {
				if err == nil && r.GetCode() == 0 {
					due[specs[i].Id] = r.GetDueTime().AsTime()
				}
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()

	time.Sleep(1500 * time.Millisecond)
	old := rc.Masters(t)[0]
	killed := time.Now()
	rc.KillMaster(t, old)
	promoted := rc.WaitFailover(t, old)
	t.Logf("master %s killed; replica %s took over after %v", old.Addr(), promoted.Addr(), time.Since(killed).Round(time.Millisecond))
	old.Restart(t)
	rc.WaitHealthy(t)
	t.Logf("old master back as a replica %v after the kill", time.Since(killed).Round(time.Millisecond))
	time.Sleep(time.Second)
	close(stop)
	<-scheduled

	mu.Lock()
	want := maps.Clone(due)
	t.Logf("%d of %d timers acknowledged", len(want), tried)
	mu.Unlock()
	if len(want) == 0 {
		t.Fatal("no timer acknowledged")
	}
	var lost []string
	deadline := time.Now().Add(2 * time.Minute)
	for {
		lost = lost[:0]
		mu.Lock()
		dup := 0
		var maxLate time.Duration
		for id, w := range want {
			r := fired[id]
			switch {
			case r == nil:
				lost = append(lost, id)
				continue
			case r.fired.Before(w):
				t.Fatalf("%s fired at %v, before its due time %v", id, r.fired, w)
			}
			dup += r.n - 1
			maxLate = max(maxLate, r.fired.Sub(w))
		}
		mu.Unlock()
		if len(lost) == 0 {
			t.Logf("all %d acknowledged timers delivered, %d duplicates, the latest fired %v after its due time", len(want), dup, maxLate.Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged timers never delivered, e.g. %v", len(lost), len(want), lost[:min(5, len(lost))])
		}
		time.Sleep(100 * time.Millisecond)
	}
}
