package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/node"
)

var (
	// ErrInvalidConfig is wrapped by Config.Validate errors.
	ErrInvalidConfig = errors.New("server: invalid config")
	// ErrStarted reports a second call to Start.
	ErrStarted = errors.New("server: already started")
	// ErrClosed reports a Start after Close.
	ErrClosed = errors.New("server: closed")
	// ErrInvalidLimitsFile is wrapped by the errors of a namespace limits
	// file (Config.NamespaceLimitsFile) that does not parse or validate.
	ErrInvalidLimitsFile = errors.New("server: invalid namespace limits file")
)

// Server is one timerd node: the gRPC services and HTTP endpoints in
// front of a node.Node, which hosts the shards. Its methods may be called
// concurrently; Start is called once, and Close ends it.
type Server struct {
	cfg Config
	log *slog.Logger
	// owner is what this process writes in its shard leases: NodeName, a
	// slash and the incarnation, fresh for every Server, so that two
	// processes of one name never take over each other's live leases.
	owner string
	// incarnation is the random part of owner.
	incarnation string

	reg     *prometheus.Registry
	metrics *metrics
	hub     *hub
	limits  *limiter
	// relays bring the peers' deliveries to this node's one-address
	// subscribers; they run only in a cluster.
	relays *relays
	// peerRelays are the relay streams the peers opened here, which end
	// when their peer leaves the membership.
	peerRelays *peerRelays

	grpc    *grpc.Server
	health  *health.Server
	http    *http.Server
	grpcLis net.Listener
	httpLis net.Listener

	// node hosts the shards; router says where each shard lives. Both are
	// set by New and never change.
	node   *node.Node
	router router
	// peers are the connections to the nodes this one forwards to.
	peers *peers
	// tls is the node's TLS material, nil without TLS; authz checks
	// bearer tokens, nil when the node runs open. Both are set by New.
	tls   *tlsFiles
	authz *authorizer

	// killed makes Close stop as a crash would (see Kill).
	killed atomic.Bool
	// member is this node's membership when Config.Cluster is set, nil
	// for a single node; set by Start. view is the membership view the
	// node last acted on (see followMembers). handover is closed when a
	// graceful Close begins to hand the shards over (see leaving).
	member   *cluster.Cluster
	view     atomic.Pointer[cluster.View]
	handover chan struct{}

	// serving is set once Start has loaded its shards: from then on the
	// health service follows Ready.
	serving  atomic.Bool
	healthMu sync.Mutex // serializes updateHealth

	// quit is closed when Close begins: loops stop, and streams end with
	// UNAVAILABLE.
	quit <-chan struct{}
	// quitCtx is done when quit is closed (it is quit's source), for the
	// calls that take a context; stopQuit closes it.
	quitCtx  context.Context
	stopQuit context.CancelFunc
	// startDone is closed when Start's work has returned; Close waits for
	// it before undoing what Start did.
	startDone chan struct{}

	// failed is closed, with failErr set, when serving stops on its own.
	failed   chan struct{}
	failOnce sync.Once
	failErr  error
	wg       sync.WaitGroup // serving loops, watchers, stream receivers

	mu sync.Mutex
	// started and closed are guarded by mu: Start runs once, and not
	// after Close.
	started bool
	closed  bool
	// closeErr is Close's result, for later calls. Guarded by mu.
	closeErr error
	closing  sync.WaitGroup // Close in progress; later callers wait
}

// New returns a Server for cfg. It checks cfg and reads its TLS and token
// files, but opens nothing; Start opens the store and begins serving.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.NodeName == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "timerd"
		}
		cfg.NodeName = host
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	inc, err := newIncarnation()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:         cfg,
		log:         cfg.Logger,
		owner:       cfg.NodeName + "/" + inc,
		incarnation: inc,
		reg:         prometheus.NewRegistry(),
		startDone:   make(chan struct{}),
		failed:      make(chan struct{}),
	}
	s.quitCtx, s.stopQuit = context.WithCancel(context.Background())
	s.quit = s.quitCtx.Done()
	s.metrics = newMetrics(s.reg, cfg.MetricNamespaces, s.shardStats, s.commitQueue)
	registerBuildInfo(s.reg, cfg.Version, cfg.Revision)
	s.hub = newHub()
	if s.limits, err = newLimiter(cfg.Limits, cfg.NamespaceLimitsFile, s.shardShare, s.metrics, s.log); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.reg.MustRegister(limitsCollector{s.limits})
	s.hub.pace = newPacer(s.limits, s.readyShard)
	s.relays = newRelays(s)
	s.peerRelays = newPeerRelays()
	nc := node.DefaultConfig(s.owner, cfg.DataDir)
	nc.Shards = cfg.Shards
	nc.LoadParallelism = cfg.LoadParallelism
	nc.RedisURL, nc.RedisPrefix, nc.AllowVolatileRedis = cfg.RedisURL, cfg.RedisPrefix, cfg.AllowVolatileRedis
	nc.RedisWaitReplicas, nc.RedisWaitTimeout = cfg.RedisWaitReplicas, cfg.RedisWaitTimeout
	nc.Shard = cfg.Shard
	if cfg.Wall != nil {
		nc.SteadyClock.Wall = cfg.Wall
	}
	nc.Shard.Dispatcher = s.hub
	nc.Shard.Events = s.metrics
	nc.Shard.Census = s.limits.census()
	nc.Commit = cfg.Commit
	nc.Commit.OnCommit = s.metrics.commit
	nc.Observer = s.metrics
	nc.Logger = s.log
	if s.node, err = node.New(nc); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	registerClock(s.reg, s.node.Clock)
	s.router = localRouter{s.node}
	if cfg.Cluster != nil {
		s.router = clusterRouter{n: s.node, self: cfg.NodeName, view: &s.view}
	}
	s.handover = make(chan struct{})
	if s.tls, err = loadTLS(cfg.TLS, s.log); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if s.authz, err = newAuthorizer(cfg.AuthFile, s.log); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.peers = newPeers(cfg.ForwardTimeout, s.tls.peerDialOptions())
	return s, nil
}

// newIncarnation returns 64 random bits in hex: a process's incarnation,
// which no earlier or concurrent process of the same name has.
func newIncarnation() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("server: incarnation: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// Owner returns what this Server writes in its shard leases as their
// owner: the node name and this process's incarnation.
func (s *Server) Owner() string { return s.owner }

// Start listens on both addresses, opens the store, begins serving and
// loads every shard. It returns once every shard is loaded and the node
// is ready, or with an error (after undoing what it did) when a listener,
// the store or ctx fails. Readiness (/readyz, gRPC health) turns on when
// Start returns nil; until then requests for shards still loading fail
// with UNAVAILABLE.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return ErrClosed
	case s.started:
		s.mu.Unlock()
		return ErrStarted
	}
	s.started = true
	s.mu.Unlock()
	err := s.start(ctx)
	close(s.startDone)
	if err != nil {
		// Undo, within a bound: the caller's ctx may be what failed.
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), startUndoTimeout)
		defer cancel()
		return errors.Join(err, s.Close(closeCtx))
	}
	return nil
}

// startUndoTimeout bounds the Close that undoes a failed Start.
const startUndoTimeout = 30 * time.Second

// start does Start's work. Close may run meanwhile: it closes quit and
// waits for start to return before it undoes anything, and start stops
// at its next step once quit is closed.
func (s *Server) start(ctx context.Context) error {
	var err error
	if s.grpcLis, err = net.Listen("tcp", s.cfg.GRPCAddr); err != nil {
		return fmt.Errorf("server: listen on the gRPC address %s: %w", s.cfg.GRPCAddr, err)
	}
	if s.cfg.HTTPAddr != "" {
		if s.httpLis, err = net.Listen("tcp", s.cfg.HTTPAddr); err != nil {
			return fmt.Errorf("server: listen on the HTTP address %s: %w", s.cfg.HTTPAddr, err)
		}
	}
	if s.quitting() {
		return ErrClosed
	}
	if err := s.node.Open(ctx); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if s.cfg.Cluster != nil {
		if err := s.newMember(); err != nil {
			return err
		}
	}

	s.grpc = grpc.NewServer(append(append(append(s.tls.serverOptions(), newTarpit(s.cfg, s.metrics).serverOptions()...),
		grpc.MaxRecvMsgSize(s.cfg.MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(s.cfg.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: s.cfg.KeepaliveMinTime}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: s.cfg.KeepaliveTime, Timeout: s.cfg.KeepaliveTimeout}),
		grpc.ForceServerCodecV2(newWireCodec()),
		grpc.ChainUnaryInterceptor(s.metrics.grpc.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(s.metrics.grpc.StreamServerInterceptor(), s.limits.stream)),
		s.authz.serverOptions()...)...,
	)
	s.warnIfOpen()
	pb.RegisterTimerServiceServer(s.grpc, &timerService{s: s})
	pb.RegisterClusterServiceServer(s.grpc, &clusterService{s: s})
	s.health = health.NewServer()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	s.health.SetServingStatus(pb.TimerService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	if s.quitting() {
		return ErrClosed
	}
	s.serve("gRPC", func() error { return s.grpc.Serve(s.grpcLis) })
	if s.httpLis != nil {
		s.http = &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
		s.serve("HTTP", func() error {
			if err := s.http.Serve(s.httpLis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	s.log.Info("serving", "grpc", s.GRPCAddr(), "http", s.HTTPAddr(), "node", s.cfg.NodeName,
		"owner", s.owner, "shards", s.cfg.Shards, "store", s.storeName())

	began := time.Now()
	s.watch()
	if s.cfg.Cluster != nil {
		if err := s.joinCluster(ctx); err != nil {
			return err
		}
	} else {
		s.node.HoldAll()
	}
	if err := s.waitSettled(ctx); err != nil {
		return err
	}
	s.serving.Store(true)
	s.updateHealth()
	_, n := s.node.Counts()
	var timers, dead int
	for _, st := range s.shardStats() {
		timers, dead = timers+st.stats.Timers, dead+st.stats.Dead
	}
	s.log.Info("ready", "shards", n, "timers", timers, "dead_letters", dead, "took", time.Since(began).Round(time.Millisecond))
	return nil
}

// waitSettled waits until the node serves the shards it should hold, or
// ctx ends, serving fails or Close begins.
func (s *Server) waitSettled(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(s.quitCtx, func() { cancel(ErrClosed) })()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-s.failed:
			cancel(s.failErr)
		case <-stop:
		}
	}()
	if err := s.node.WaitSettled(ctx); err != nil {
		if errors.Is(context.Cause(ctx), ErrClosed) {
			return ErrClosed
		}
		if ferr := s.Err(); ferr != nil {
			return ferr
		}
		return fmt.Errorf("server: loading shards: %w", err)
	}
	return nil
}

// watch follows the node's shards: the health service follows them.
func (s *Server) watch() {
	s.wg.Go(func() {
		for {
			ch := s.node.Changed()
			s.updateHealth()
			select {
			case <-ch:
			case <-s.quit:
				return
			}
		}
	})
}

// updateHealth makes the gRPC health service agree with /readyz: SERVING
// once Start has loaded every shard, and whenever every shard is loaded
// again after one stopped.
func (s *Server) updateHealth() {
	if !s.serving.Load() {
		return
	}
	// Read and set under one lock, or two shards changing at once could
	// leave the older answer standing.
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if s.Ready() {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(pb.TimerService_ServiceDesc.ServiceName, st)
}

func (s *Server) storeName() string {
	if s.cfg.RedisURL != "" {
		return "redis"
	}
	return "embedded:" + s.cfg.DataDir
}

// serve runs a serving loop; its failure stops the server (see Done).
func (s *Server) serve(what string, loop func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := loop(); err != nil && !s.quitting() {
			s.fail(fmt.Errorf("server: %s serving stopped: %w", what, err))
		}
	}()
}

func (s *Server) fail(err error) {
	s.failOnce.Do(func() {
		s.failErr = err
		s.log.Error("server failed", "err", err)
		close(s.failed)
	})
}

func (s *Server) quitting() bool {
	select {
	case <-s.quit:
		return true
	default:
		return false
	}
}

// GRPCAddr returns the address the gRPC services listen on, or "" before
// Start.
func (s *Server) GRPCAddr() string {
	if s.grpcLis == nil {
		return ""
	}
	return s.grpcLis.Addr().String()
}

// GossipAddr returns the address of the node's membership gossip, or ""
// for a single node or before Start.
func (s *Server) GossipAddr() string {
	if s.member == nil {
		return ""
	}
	return s.member.GossipAddr()
}

// HTTPAddr returns the address of the HTTP endpoints, or "" when there is
// none.
func (s *Server) HTTPAddr() string {
	if s.httpLis == nil {
		return ""
	}
	return s.httpLis.Addr().String()
}

// Ready reports whether the server serves every shard it should hold.
func (s *Server) Ready() bool {
	wanted, serving := s.node.Counts()
	return s.serving.Load() && !s.quitting() && !s.leaving() && serving == wanted
}

// Done is closed when the server stops serving on its own (a listener
// failed); Err then says why. A Server stopped by Close does not close
// Done.
func (s *Server) Done() <-chan struct{} { return s.failed }

// Err returns why the server stopped on its own, after Done is closed.
func (s *Server) Err() error {
	select {
	case <-s.failed:
		return s.failErr
	default:
		return nil
	}
}

// Close shuts the server down gracefully: it stops taking RPCs, ends the
// Subscribe streams with UNAVAILABLE, waits for RPCs in progress (until
// ctx ends, then cuts them), closes every shard (flushing its writes and
// releasing its lease), then the group commit and the store. It is safe
// to call twice; the second call waits for the first and returns its
// result.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.closing.Wait()
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.closeErr
	}
	s.closed = true
	started := s.started
	s.closing.Add(1)
	s.mu.Unlock()
	defer s.closing.Done()

	var errs []error
	if s.serving.Load() && !s.killed.Load() && s.member != nil {
		// Started, and a cluster member: hand the shards over while
		// requests are still served and forwarded.
		errs = append(errs, s.handOver(ctx))
	}
	s.stopQuit()
	if started {
		<-s.startDone // start stops at its next step, then undoes nothing itself
	}
	err := errors.Join(append(errs, s.shutdown(ctx))...)
	s.mu.Lock()
	s.closeErr = err
	s.mu.Unlock()
	return err
}

func (s *Server) shutdown(ctx context.Context) error {
	if s.health != nil {
		s.health.Shutdown()
	}
	var errs []error
	if s.killed.Load() {
		if s.member != nil {
			errs = append(errs, s.member.Close()) // no leave: the peers find the node dead
		}
		if s.grpc != nil {
			s.grpc.Stop()
		}
		s.node.Abandon()
	}
	if s.grpc != nil {
		stopped := make(chan struct{})
		go func() {
			s.grpc.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-ctx.Done():
			s.grpc.Stop()
			<-stopped
		}
	} else if s.grpcLis != nil {
		errs = append(errs, s.grpcLis.Close())
	}
	if s.http != nil {
		errs = append(errs, s.http.Shutdown(ctx))
	} else if s.httpLis != nil {
		errs = append(errs, s.httpLis.Close())
	}
	s.wg.Wait()
	s.peers.close()
	if s.member != nil {
		errs = append(errs, s.member.Close()) // no-op after a leave
	}
	// The shards close last, so that the RPCs let finish above found them
	// open: each flushes its writes and releases its lease.
	errs = append(errs, s.node.Close(ctx))
	s.hub.pace.close()
	if s.grpc != nil { // it said it was serving; a failed start says only why
		s.log.Info("stopped")
	}
	return errors.Join(errs...)
}

// CutPeers closes this node's connections to its peers, as a network
// cut would, for fault injection in tests: the forwarded calls and relay
// streams on them fail, and the next ones connect again.
func (s *Server) CutPeers() { s.peers.keep(nil) }

// Kill stops the node as a crash of its process would, for fault
// injection in tests: it leaves the gossip without a goodbye, cuts every
// RPC and stream, and stops its shards without flushing their writes or
// releasing their leases, so that their next owners wait for the leases
// to lapse. It returns once everything the node started has stopped.
func (s *Server) Kill() error {
	s.killed.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.Close(ctx)
}
