package client_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	timerdv1 "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/client"
)

// movingNode is a single node whose every shard is always moving: Get
// answers UNAVAILABLE. It counts the shard maps it is asked for.
type movingNode struct {
	timerdv1.UnimplementedTimerServiceServer
	timerdv1.UnimplementedClusterServiceServer
	addr  string
	maps  atomic.Int32
	gets  atomic.Int32
	mu    sync.Mutex
	fetch []time.Time
}

func (m *movingNode) Get(context.Context, *timerdv1.GetRequest) (*timerdv1.GetResponse, error) {
	m.gets.Add(1)
	return nil, status.Error(codes.Unavailable, "shard moving")
}

func (m *movingNode) Members(context.Context, *timerdv1.MembersRequest) (*timerdv1.MembersResponse, error) {
	return &timerdv1.MembersResponse{Members: []*timerdv1.Member{{
		Name: "only", GrpcAddr: m.addr, State: timerdv1.MemberState_MEMBER_STATE_ALIVE, NodeState: timerdv1.NodeState_NODE_STATE_ACTIVE,
	}}}, nil
}

func (m *movingNode) ShardMap(context.Context, *timerdv1.ShardMapRequest) (*timerdv1.ShardMapResponse, error) {
	m.maps.Add(1)
	m.mu.Lock()
	m.fetch = append(m.fetch, time.Now())
	m.mu.Unlock()
	resp := &timerdv1.ShardMapResponse{ShardCount: 4}
	for i := range uint32(4) {
		resp.Shards = append(resp.Shards, &timerdv1.ShardOwner{Shard: i, Owner: "only", OwnerGrpcAddr: m.addr,
			State: timerdv1.ShardState_SHARD_STATE_LOADING, Assigned: "only"})
	}
	return resp, nil
}

// TestRefreshSingleFlight: many calls that fail UNAVAILABLE at once ask
// for a fresh shard map before each retry, but the client fetches one at
// a time, at most one per 100ms, and every retry waits for one.
func TestRefreshSingleFlight(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	node := &movingNode{addr: l.Addr().String()}
	timerdv1.RegisterTimerServiceServer(srv, node)
	timerdv1.RegisterClusterServiceServer(srv, node)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	ctx := testCtx(t)
	const calls, attempts = 50, 4
	c := newClient(t, node.addr, client.WithRefreshInterval(time.Hour),
		client.WithRetry(client.RetryPolicy{MaxAttempts: attempts, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond}))
	began := time.Now()
	var wg sync.WaitGroup
	for range calls {
		wg.Go(func() {
			if _, err := c.Get(ctx, "", "x"); !errors.Is(err, client.ErrUnavailable) {
				t.Errorf("Get = %v; want ErrUnavailable", err)
			}
		})
	}
	wg.Wait()
	took := time.Since(began)
	if n := node.gets.Load(); n != calls*attempts {
		t.Errorf("%d Get RPCs; want %d", n, calls*attempts)
	}
	maps := int(node.maps.Load())
	// The first fetch, then one per retry round: the retries of every
	// call wait for the same fetches.
	if maps < attempts || maps > attempts+2 {
		t.Errorf("%d shard maps fetched for %d calls of %d attempts; want about %d", maps, calls, attempts, attempts)
	}
	// The fetches' spacing (minRefreshGap apart as the client starts
	// them) is logged, not asserted: the node sees them arrive with the
	// machine's jitter.
	node.mu.Lock()
	var gaps []time.Duration
	for i := 1; i < len(node.fetch); i++ {
		gaps = append(gaps, node.fetch[i].Sub(node.fetch[i-1]).Round(time.Millisecond))
	}
	node.mu.Unlock()
	t.Logf("%d calls of %d attempts in %v: %d shard maps fetched, arriving %v apart", calls, attempts, took, maps, gaps)
}
