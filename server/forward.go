package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/shard"
)

// forwardedKey is the metadata key a node sets on a request it sends on
// to a peer. The peer serves such a request from its own shards only and
// never forwards it again, so that two nodes whose views of the ring
// disagree for a moment cannot pass a request back and forth: an item
// whose shard the peer does not serve gets UNAVAILABLE, which clients
// retry.
const forwardedKey = "timerd-forwarded"

// forwardShardsKey carries, on a forwarded ReplayDeadLetters of a whole
// namespace, the shards the peer is asked to replay.
const forwardShardsKey = "timerd-shards"

// isForwarded reports whether the request of ctx came from a peer.
func isForwarded(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(forwardedKey)) > 0
}

// errForwardLoop is the error of an item that a peer forwarded here but
// whose shard this node does not serve either.
var errForwardLoop = errors.New("forwarded by a peer, but not served here either")

// peers holds one client connection per peer, made on first use. Its
// methods may be called concurrently.
type peers struct {
	// timeout bounds a forwarded call whose caller set no deadline.
	timeout time.Duration
	// dial are the options of every connection to a peer: its transport
	// security (see tlsFiles.peerDialOptions).
	dial []grpc.DialOption

	mu sync.Mutex
	// conns is guarded by mu: by gRPC address. closed is set by close,
	// after which no connection is made.
	conns  map[string]*grpc.ClientConn
	closed bool
}

func newPeers(timeout time.Duration, dial []grpc.DialOption) *peers {
	return &peers{timeout: timeout, dial: dial, conns: make(map[string]*grpc.ClientConn)}
}

// timers returns a TimerService client for the peer at addr.
func (p *peers) timers(addr string) (pb.TimerServiceClient, error) {
	c, err := p.conn(addr)
	if err != nil {
		return nil, err
	}
	return pb.NewTimerServiceClient(c), nil
}

// conn returns the connection to the peer at addr, made on first use.
func (p *peers) conn(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	if c := p.conns[addr]; c != nil {
		return c, nil
	}
	c, err := grpc.NewClient(addr, p.dial...)
	if err != nil {
		return nil, fmt.Errorf("server: peer %s: %w", addr, err)
	}
	p.conns[addr] = c
	return c, nil
}

// keep closes the connections to every address not in addrs: members
// that left.
func (p *peers) keep(addrs map[string]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, c := range p.conns {
		if !addrs[a] {
			_ = c.Close()
			delete(p.conns, a)
		}
	}
}

// close closes every connection; later calls to timers fail.
func (p *peers) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for a, c := range p.conns {
		_ = c.Close()
		delete(p.conns, a)
	}
}

// outgoing returns the context of a call forwarded on ctx's behalf: it
// is marked forwarded, carries the caller's authorization (the peer
// checks the caller's token again) and is bounded by ctx's deadline, or
// by the peers' timeout when ctx has none.
func (p *peers) outgoing(ctx context.Context, extra ...string) (context.Context, context.CancelFunc) {
	kv := append([]string{forwardedKey, "1"}, callerAuthorization(ctx)...)
	ctx = metadata.AppendToOutgoingContext(ctx, append(kv, extra...)...)
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, p.timeout)
}

// placement is where the parts of a batch go.
type placement struct {
	// local are the parts whose shard this node serves.
	local []localPart
	// remote are the items whose shard a peer should serve, by the peer's
	// address, in request order.
	remote map[string][]int
	// down are the parts whose shard nobody serves now.
	down []part
}

type localPart struct {
	part
	sh *shard.Shard
}

// place asks the router where each part goes. A request that a peer
// forwarded here is served here or not at all.
func (s *Server) place(ctx context.Context, parts []part) placement {
	var pl placement
	fwd := !isForwarded(ctx)
	for _, p := range parts {
		r := s.router.route(p.shard)
		switch {
		case r.sh != nil:
			pl.local = append(pl.local, localPart{p, r.sh})
		case r.peer != "" && fwd:
			if pl.remote == nil {
				pl.remote = make(map[string][]int)
			}
			pl.remote[r.peer] = append(pl.remote[r.peer], p.items...)
		default:
			pl.down = append(pl.down, p)
		}
	}
	for _, items := range pl.remote {
		slices.Sort(items) // parts interleave; a peer applies items in request order
	}
	return pl
}

// notServed is the error of an item whose shard no node serves now, as
// this node sees it.
func notServed(ctx context.Context, id uint32) error {
	if isForwarded(ctx) {
		return fmt.Errorf("%w: %w", unavailable(id), errForwardLoop)
	}
	return unavailable(id)
}

// forward sends the remote items of a batch to their peers, one call per
// peer, concurrently, and waits for them all. call sends items (indexes
// into the caller's batch) to a peer and returns one result per item, in
// the same order. Each result is given to set; when a call fails as a
// whole, every one of its items gets the call's status through fail.
func (s *Server) forward(ctx context.Context, method string, remote map[string][]int,
	call func(ctx context.Context, c pb.TimerServiceClient, items []int) ([]*pb.ItemResult, error),
	set func(i int, r *pb.ItemResult), fail func(i int, err error)) {
	var wg sync.WaitGroup
	for addr, items := range remote {
		wg.Go(func() {
			s.metrics.forwardedItems.WithLabelValues(method).Add(float64(len(items)))
			c, err := s.peers.timers(addr)
			var res []*pb.ItemResult
			if err == nil {
				fctx, cancel := s.peers.outgoing(ctx)
				res, err = call(fctx, c, items)
				cancel()
			}
			if err == nil && len(res) != len(items) {
				err = status.Errorf(codes.Internal, "peer %s answered %d results for %d items", addr, len(res), len(items))
			}
			s.metrics.forwardedCalls.WithLabelValues(method, status.Code(err).String()).Inc()
			if err != nil {
				err = peerError(addr, err)
				for _, i := range items {
					fail(i, err)
				}
				return
			}
			for j, i := range items {
				set(i, res[j])
			}
		})
	}
	wg.Wait()
}

// peerError is the error of a call to the peer at addr that failed as a
// whole: its status, with the peer named. A peer that cannot be reached
// is UNAVAILABLE, which clients retry.
func peerError(addr string, err error) error {
	st := status.Convert(err)
	c := st.Code()
	if c == codes.Unknown || c == codes.Canceled && !errors.Is(err, context.Canceled) {
		c = codes.Unavailable
	}
	return status.Errorf(c, "forwarded to %s: %s", addr, st.Message())
}

// forwardOne sends a single request to the peer at addr on the caller's
// behalf, and counts it.
func forwardOne[R any](ctx context.Context, s *Server, method, addr string, call func(ctx context.Context, c pb.TimerServiceClient) (R, error)) (R, error) {
	var zero R
	s.metrics.forwardedItems.WithLabelValues(method).Inc()
	c, err := s.peers.timers(addr)
	if err != nil {
		return zero, rpcError(err)
	}
	fctx, cancel := s.peers.outgoing(ctx)
	defer cancel()
	r, err := call(fctx, c)
	s.metrics.forwardedCalls.WithLabelValues(method, status.Code(err).String()).Inc()
	if err != nil {
		if c := status.Code(err); c != codes.Unknown && c != codes.Unavailable && c != codes.Canceled {
			return zero, err // the peer's answer (NOT_FOUND, INVALID_ARGUMENT, ...) as it gave it
		}
		return zero, peerError(addr, err)
	}
	return r, nil
}
