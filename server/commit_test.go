package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/redistest"
)

// redisOutage configures a one-shard node on rs whose group commit gives
// a failing store up after giveUp.
func redisOutage(rs *redistest.Server, giveUp time.Duration) func(*Config) {
	return func(c *Config) {
		c.RedisURL = "redis://" + rs.Addr()
		c.Shards = 1
		c.Commit.GiveUpAfter, c.Commit.CommitTimeout, c.Commit.RetryMax = giveUp, time.Second, 20*time.Millisecond
	}
}

func specs(prefix string, n int) []*pb.TimerSpec {
	out := make([]*pb.TimerSpec, n)
	for i := range out {
		out[i] = spec(fmt.Sprintf("%s%02d", prefix, i), "t", time.Hour)
	}
	return out
}

// TestStoreOutageUnavailable: a Schedule whose writes the group commit
// gives up while Redis is down answers UNAVAILABLE within the bound; the
// shard stops and, once Redis is back, the supervisor reopens it with
// what the store has: the acknowledged timer, not the failed one.
func TestStoreOutageUnavailable(t *testing.T) {
	rs := redistest.Start(t, redistest.AppendFsync("always"))
	e := start(t, "", redisOutage(rs, 300*time.Millisecond))
	e.schedule(spec("kept", "t", time.Hour))
	rs.Kill(t)
	resp, err := e.timers.Schedule(e.ctx(), &pb.ScheduleRequest{Timers: []*pb.TimerSpec{spec("lost", "t", time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	if r := resp.Results[0]; codes.Code(r.Code) != codes.Unavailable {
		t.Fatalf("Schedule with Redis down: %v %s, want UNAVAILABLE", codes.Code(r.Code), r.Message)
	}
	rs.Restart(t)
	waitFor(t, "the shard to reopen", func() bool {
		_, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "kept"})
		return err == nil
	})
	if _, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "lost"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Get of the failed timer after the reload: %v, want NOT_FOUND", err)
	}
	e.schedule(spec("after", "t", time.Hour))
}

// TestStoreOutageResourceExhausted: while Redis is down and the group
// commit's queue is full, Schedule answers RESOURCE_EXHAUSTED at once,
// the metrics show the queue and the refusal, and nothing of the refused
// call is stored once Redis is back.
func TestStoreOutageResourceExhausted(t *testing.T) {
	rs := redistest.Start(t, redistest.AppendFsync("always"))
	opts := func(c *Config) {
		redisOutage(rs, time.Minute)(c)
		c.MaxBatch = 64
		c.Commit.Lanes = 1
		c.Commit.MaxBatchOps, c.Commit.MaxCycleOps, c.Commit.MaxQueueOps = 16, 32, 64
	}
	e := start(t, "", opts)
	rs.Kill(t)
	held := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		resp, err := e.timers.Schedule(ctx, &pb.ScheduleRequest{Timers: specs("held", 60)})
		if err == nil {
			for _, r := range resp.Results {
				if r.Code != 0 {
					err = fmt.Errorf("%s: %v %s", r.Id, codes.Code(r.Code), r.Message)
					break
				}
			}
		}
		held <- err
	}()
	waitFor(t, "the held call's writes to be queued", func() bool { return e.srv.node.Committer().Queue().Ops >= 60 })
	// e.ctx bounds the call: not refused, it would wait for Redis.
	resp, err := e.timers.Schedule(e.ctx(), &pb.ScheduleRequest{Timers: specs("refused", 10)})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.Results {
		if codes.Code(r.Code) != codes.ResourceExhausted {
			t.Fatalf("Schedule(%s) past the queue's bound: %v %s, want RESOURCE_EXHAUSTED", r.Id, codes.Code(r.Code), r.Message)
		}
	}
	m, err := http.Get("http://" + e.srv.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(m.Body)
	m.Body.Close()
	for _, want := range []string{"timerd_store_commit_queue_ops 60", "timerd_store_commit_refused_total 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	rs.Restart(t)
	if err := <-held; err != nil {
		t.Fatalf("the queued Schedule after Redis came back: %v", err)
	}
	e.stop()
	e2 := start(t, "", opts) // loads what the store has
	for _, sp := range specs("refused", 10) {
		if _, err := e2.timers.Get(e2.ctx(), &pb.GetRequest{Id: sp.Id}); status.Code(err) != codes.NotFound {
			t.Fatalf("Get(%s) of a refused timer: %v, want NOT_FOUND", sp.Id, err)
		}
	}
	if _, err := e2.timers.Get(e2.ctx(), &pb.GetRequest{Id: "held59"}); err != nil {
		t.Fatalf("Get of a queued timer: %v", err)
	}
}
