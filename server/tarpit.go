package server

import (
	"context"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// tarpit slows down the answers to a client that keeps making calls the
// node refuses: malformed (INVALID_ARGUMENT), without a valid token
// (UNAUTHENTICATED), forbidden (PERMISSION_DENIED) or to no such method
// (UNIMPLEMENTED), and batches whose every item is refused so. Each client
// address has a bucket of Config.BadCallBurst bad calls that refills at
// Config.BadCallRate a second; once it is empty, a bad call's answer waits
// for its turn, at most Config.BadCallDelay. A client that floods the
// node with bad calls as fast as it can then makes them at about the
// bucket's rate, per address, and the node's CPU goes to the clients that
// use it well. Calls that succeed are never delayed, whoever makes them,
// and a bad call costs its bucket before its answer, so many concurrent
// bad calls from one address wait in line rather than together.
//
// The address is the client's IP, so a client cannot reset its bucket by
// reconnecting; clients behind one NAT share one. A waiting answer holds
// its server goroutine, not a CPU; Config.MaxConcurrentStreams bounds how
// many one connection can have waiting.
//
// A tarpit's methods may be called concurrently.
type tarpit struct {
	rate     float64       // bad calls a second refilled per address
	burst    float64       // bad calls an address may make before it waits
	maxDelay time.Duration // the longest an answer waits
	metrics  *metrics

	// mu guards clients, the bad-call bucket of each client address,
	// and sweepAt.
	mu      sync.Mutex
	clients map[string]*bucket
	// sweepAt is the size of clients at which the next new address
	// sweeps it first.
	sweepAt int
}

// newTarpit returns the tarpit of cfg, or nil when BadCallRate is 0.
func newTarpit(cfg Config, m *metrics) *tarpit {
	if cfg.BadCallRate == 0 {
		return nil
	}
	return &tarpit{
		rate:     cfg.BadCallRate,
		burst:    float64(cfg.BadCallBurst),
		maxDelay: cfg.BadCallDelay,
		metrics:  m,
		clients:  make(map[string]*bucket),
		sweepAt:  minSweep,
	}
}

// serverOptions are the tarpit's interceptors, to go first so that they
// see every refusal, the token check's included; none when it is off.
func (t *tarpit) serverOptions() []grpc.ServerOption {
	if t == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(t.unary), grpc.ChainStreamInterceptor(t.stream)}
}

func (t *tarpit) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if badCall(resp, err) {
		t.wait(ctx)
	}
	return resp, err
}

func (t *tarpit) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := handler(srv, ss)
	if badCall(nil, err) {
		t.wait(ss.Context())
	}
	return err
}

// badCall reports whether a call that returned resp and err was refused
// as malformed, unauthenticated or forbidden, as a whole or in every item
// of its batch.
func badCall(resp any, err error) bool {
	if err != nil {
		switch status.Code(err) {
		case codes.InvalidArgument, codes.Unauthenticated, codes.PermissionDenied, codes.Unimplemented:
			return true
		}
		return false
	}
	batch, ok := resp.(interface{ GetResults() []*pb.ItemResult })
	if !ok {
		return false
	}
	results := batch.GetResults()
	for _, r := range results {
		switch codes.Code(r.GetCode()) {
		case codes.InvalidArgument, codes.PermissionDenied:
		default:
			return false
		}
	}
	return len(results) > 0
}

// wait counts a bad call of ctx's client and returns once it is the
// call's turn to be answered, or ctx ends.
func (t *tarpit) wait(ctx context.Context) {
	d := t.take(clientAddr(ctx), time.Now())
	t.metrics.badCalls.Inc()
	if d <= 0 {
		return
	}
	t.metrics.badCallsSlowed.Inc()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
}

// take takes a bad call from addr's bucket at now and returns how long
// its answer waits.
func (t *tarpit) take(addr string, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.clients[addr]
	if b == nil {
		if len(t.clients) >= t.sweepAt {
			t.sweepLocked(now)
		}
		b = &bucket{tokens: t.burst, at: now}
		t.clients[addr] = b
	}
	b.fill(now, t.rate, t.burst)
	// Tokens go below zero by the calls waiting for their turn.
	// Invariant: tokens >= -rate*maxDelay, so an address that stops
	// is served again within maxDelay of its last bad call.
	b.tokens = max(b.tokens-1, -t.rate*t.maxDelay.Seconds())
	if b.tokens >= 0 {
		return 0
	}
	return min(time.Duration(-b.tokens/t.rate*float64(time.Second)), t.maxDelay)
}

// sweepLocked drops the buckets that have filled up again, which a new
// one would match: it keeps clients within twice the addresses that made
// bad calls lately, at O(1) amortized per bucket made.
func (t *tarpit) sweepLocked(now time.Time) {
	for addr, b := range t.clients {
		if b.fullAt(now, t.rate, t.burst) {
			delete(t.clients, addr)
		}
	}
	t.sweepAt = max(minSweep, 2*len(t.clients))
}

// clientAddr is the IP address of ctx's client, or its whole address
// when it is not an IP one (a test's in-memory listener).
func clientAddr(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	if tcp, ok := p.Addr.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	return p.Addr.String()
}
