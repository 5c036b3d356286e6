package server

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/shard"
	"github.com/timerd/timerd/store"
)

var (
	// ErrInvalidConfig is wrapped by Config.Validate errors.
	ErrInvalidConfig = errors.New("server: invalid config")
	// ErrStarted reports a second call to Start.
	ErrStarted = errors.New("server: already started")
	// ErrClosed reports a Start after Close.
	ErrClosed = errors.New("server: closed")
)

// Server is one timerd node. Its methods may be called concurrently;
// Start is called once, and Close ends it.
type Server struct {
	cfg Config
	log *slog.Logger
	// owner is what this process writes in its shard leases: NodeName, a
	// slash and the incarnation, fresh for every Server, so that two
	// processes of one name never take over each other's live leases.
	owner string

	reg     *prometheus.Registry
	metrics *metrics
	hub     *hub

	grpc    *grpc.Server
	health  *health.Server
	http    *http.Server
	grpcLis net.Listener
	httpLis net.Listener

	rdb redis.UniversalClient // nil with the embedded store
	st  store.Store
	com *store.Committer

	// slots holds the shards by id. A nil slot is a shard this node does
	// not hold right now (loading, or reopening after it stopped); its
	// requests get UNAVAILABLE.
	slots []atomic.Pointer[shard.Shard]
	// loaded counts the non-nil slots; version counts changes to slots,
	// for ShardMapResponse.version. serving is set once Start has loaded
	// every shard: from then on the health service follows loaded.
	loaded   atomic.Int32
	version  atomic.Uint64
	serving  atomic.Bool
	healthMu sync.Mutex // serializes updateHealth

	// quit is closed when Close begins: supervisors close their shards
	// and stop, and streams end with UNAVAILABLE. closeCtx, Close's
	// context, is set before quit is closed and read after.
	quit <-chan struct{}
	// quitCtx is done when quit is closed (it is quit's source), for the
	// calls that take a context; stopQuit closes it.
	quitCtx  context.Context
	stopQuit context.CancelFunc
	closeCtx context.Context
	// release is closed once gRPC has stopped: the supervisors then close
	// their shards, so RPCs that were let finish found them open.
	release chan struct{}
	// startDone is closed when Start's work has returned; Close waits for
	// it before undoing what Start did.
	startDone chan struct{}

	closeErrMu sync.Mutex
	closeErrs  []error // guarded by closeErrMu: failures of the shutdown
	// failed is closed, with failErr set, when serving stops on its own.
	failed   chan struct{}
	failOnce sync.Once
	failErr  error
	wg       sync.WaitGroup // serving loops, supervisors, stream receivers

	mu sync.Mutex
	// started and closed are guarded by mu: Start runs once, and not
	// after Close.
	started bool
	closed  bool
	// closeErr is Close's result, for later calls. Guarded by mu.
	closeErr error
	closing  sync.WaitGroup // Close in progress; later callers wait
}

// New returns a Server for cfg. It checks cfg but does no I/O; Start
// opens the store and begins serving.
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
		cfg:       cfg,
		log:       cfg.Logger,
		owner:     cfg.NodeName + "/" + inc,
		reg:       prometheus.NewRegistry(),
		slots:     make([]atomic.Pointer[shard.Shard], cfg.Shards),
		release:   make(chan struct{}),
		startDone: make(chan struct{}),
		failed:    make(chan struct{}),
	}
	s.quitCtx, s.stopQuit = context.WithCancel(context.Background())
	s.quit = s.quitCtx.Done()
	s.metrics = newMetrics(s.reg, cfg.MetricNamespaces, s.shardStats, s.commitQueue)
	s.hub = newHub()
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
	if err := s.openStore(ctx); err != nil {
		return err
	}
	if err := s.st.ClaimShards(ctx, s.cfg.Shards); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	cc := s.cfg.Commit
	cc.Logger = s.log
	cc.OnCommit = s.metrics.commit
	if s.com, err = store.NewCommitter(s.st, cc); err != nil {
		return fmt.Errorf("server: %w", err)
	}

	s.grpc = grpc.NewServer(
		grpc.MaxRecvMsgSize(s.cfg.MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(s.cfg.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: s.cfg.KeepaliveMinTime}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: s.cfg.KeepaliveTime, Timeout: s.cfg.KeepaliveTimeout}),
	)
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
	loaded := make(chan struct{}, s.cfg.Shards)
	sem := make(chan struct{}, s.cfg.LoadParallelism)
	for id := range s.cfg.Shards {
		s.wg.Add(1)
		go s.supervise(id, sem, loaded)
	}
	for range s.cfg.Shards {
		select {
		case <-loaded:
		case <-ctx.Done():
			return fmt.Errorf("server: loading shards: %w", context.Cause(ctx))
		case <-s.failed:
			return s.failErr
		case <-s.quit:
			return ErrClosed
		}
	}
	s.serving.Store(true)
	s.updateHealth()
	s.log.Info("ready", "shards", s.cfg.Shards, "took", time.Since(began))
	return nil
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

func (s *Server) openStore(ctx context.Context) error {
	if s.cfg.RedisURL == "" {
		ec := store.DefaultEmbeddedConfig(s.cfg.DataDir)
		ec.Logger = s.log
		st, err := store.OpenEmbedded(ec)
		if err != nil {
			return fmt.Errorf("server: data dir: %w", err)
		}
		s.st = st
		return nil
	}
	opts, err := redis.ParseURL(s.cfg.RedisURL)
	if err != nil {
		return fmt.Errorf("server: Redis URL: %w", err)
	}
	redisTimeouts(opts, s.cfg.Commit)
	s.rdb = redis.NewClient(opts)
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("server: Redis at %s: %w", opts.Addr, err)
	}
	if err := s.checkRedisPersistence(ctx, opts.Addr); err != nil {
		return err
	}
	rc := store.DefaultRedisConfig()
	rc.Prefix = s.cfg.RedisPrefix
	if s.st, err = store.NewRedis(s.rdb, rc); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}

// redisPersistence is what a Redis server says of its persistence.
type redisPersistence struct {
	aof bool
	// fsync is the appendfsync policy ("always", "everysec", "no"), or ""
	// when only INFO answered, which does not tell it.
	fsync string
	// source is the command that answered.
	source string
}

// readRedisPersistence asks Redis whether it keeps an append-only file:
// CONFIG GET first, and INFO persistence where CONFIG is refused (managed
// services often disable it), which says whether the AOF is on but not
// its fsync policy.
func readRedisPersistence(ctx context.Context, rdb redis.UniversalClient) (redisPersistence, error) {
	cfg, cfgErr := rdb.ConfigGet(ctx, "append*").Result()
	if cfgErr == nil && cfg["appendonly"] != "" {
		return redisPersistence{aof: cfg["appendonly"] == "yes", fsync: cfg["appendfsync"], source: "CONFIG GET"}, nil
	}
	info, err := rdb.Info(ctx, "persistence").Result()
	if err != nil {
		return redisPersistence{}, errors.Join(fmt.Errorf("CONFIG GET appendonly: %w", cfgErr), fmt.Errorf("INFO persistence: %w", err))
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "aof_enabled:"); ok {
			return redisPersistence{aof: v == "1", source: "INFO persistence"}, nil
		}
	}
	return redisPersistence{}, fmt.Errorf("INFO persistence has no aof_enabled field (and CONFIG GET: %v)", cfgErr)
}

// checkRedisPersistence logs what a durable write means on this Redis,
// and refuses a Redis without an append-only file (or one that does not
// say) unless Config.AllowVolatileRedis.
func (s *Server) checkRedisPersistence(ctx context.Context, addr string) error {
	p, err := readRedisPersistence(ctx, s.rdb)
	if err != nil {
		if !s.cfg.AllowVolatileRedis {
			return fmt.Errorf("server: Redis at %s: cannot tell whether it keeps an append-only file (%w); "+
				"start with --allow-volatile-redis to run without knowing", addr, err)
		}
		s.log.Warn("Redis persistence unknown; writes are durable only as far as its settings make them",
			"redis", addr, "err", err)
		return nil
	}
	switch {
	case !p.aof && !s.cfg.AllowVolatileRedis:
		return fmt.Errorf("server: Redis at %s runs without an append-only file (appendonly no, per %s), so a restart of Redis "+
			"would lose timers it acknowledged: turn it on (appendonly yes; appendfsync always to survive a crash of its machine) "+
			"or start with --allow-volatile-redis", addr, p.source)
	case !p.aof:
		s.log.Warn("Redis runs without an append-only file: durable means in Redis's memory only, "+
			"and a restart of Redis loses what it acknowledged since its last RDB snapshot, if any",
			"redis", addr, "appendonly", "no", "source", p.source)
	case p.fsync == "always":
		s.log.Info("Redis fsyncs its append-only file before it answers: durable means on Redis's disk",
			"redis", addr, "appendonly", "yes", "appendfsync", p.fsync)
	case p.fsync == "everysec":
		s.log.Info("Redis fsyncs its append-only file about once a second: durable means in Redis's memory and "+
			"on its disk within ~1 s; a crash of Redis or its machine may lose up to ~2 s of acknowledged writes",
			"redis", addr, "appendonly", "yes", "appendfsync", p.fsync)
	default:
		fsync := cmp.Or(p.fsync, "unknown")
		s.log.Warn("Redis keeps an append-only file but its fsync policy is not always or everysec (or not known): "+
			"durable means written to Redis's AOF, which its machine's crash may lose",
			"redis", addr, "appendonly", "yes", "appendfsync", fsync, "source", p.source)
	}
	return nil
}

// redisTimeouts sizes the Redis client's socket timeouts for the group
// commit. Its largest round trip is one cycle, at most Commit.MaxCycleOps
// writes, which the committer allows Commit.CommitTimeout: go-redis's
// default read timeout of 3 s would cut a long cycle short every time it
// was retried, wedging its lane. So the read and write timeouts are at
// least CommitTimeout (a longer one in the URL stands, and so does a
// negative one, which means none), and the client honours the contexts'
// deadlines, which bound every other call (a lease renewal's OpTimeout)
// more tightly.
func redisTimeouts(opts *redis.Options, commit store.CommitterConfig) {
	if opts.ReadTimeout >= 0 {
		opts.ReadTimeout = max(opts.ReadTimeout, commit.CommitTimeout)
	}
	if opts.WriteTimeout >= 0 {
		opts.WriteTimeout = max(opts.WriteTimeout, commit.CommitTimeout)
	}
	opts.ContextTimeoutEnabled = true
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

// supervise owns shard id: it opens it (retrying with backoff while that
// fails), publishes it in its slot, and opens it again if it stops while
// the server runs (a lost lease, a fenced write). It reports the first
// successful open on loaded, and closes the shard on release.
//
// A lease held by another owner (another node, or another process of this
// node's name) is waited out the same way: the shard is this node's once
// the holder releases it or lets it lapse. The first failure of a streak
// is logged as a warning, the rest at debug level, so that a node waiting
// for its predecessor's leases does not flood the log; /readyz reports
// the shards still missing meanwhile.
func (s *Server) supervise(id uint32, sem chan struct{}, loaded chan<- struct{}) {
	defer s.wg.Done()
	first := true
	// maxWait keeps a node that waits for a lapsing lease within a fifth
	// of the TTL of taking the shard.
	minWait := 100 * time.Millisecond
	maxWait := max(minWait, min(5*time.Second, s.cfg.Shard.LeaseTTL/5))
	wait := minWait // doubles with every failure in a row
	failures := 0   // in a row
	for {
		sh, err := s.openShard(id, sem)
		if err != nil {
			if s.quitting() {
				return
			}
			level, msg := slog.LevelWarn, "shard open failed; retrying"
			if errors.Is(err, store.ErrLeaseHeld) {
				msg = "shard lease held by another owner; waiting until it is released or lapses"
			}
			if failures > 0 {
				level = slog.LevelDebug
			}
			failures++
			s.log.Log(context.Background(), level, msg, "shard", id, "owner", s.owner, "attempt", failures, "in", wait, "err", err)
			if !s.sleep(wait) {
				return
			}
			wait = min(2*wait, maxWait)
			continue
		}
		if failures > 0 {
			s.log.Info("shard acquired", "shard", id, "epoch", sh.Epoch(), "after_attempts", failures+1)
		}
		wait, failures = minWait, 0
		s.slots[id].Store(sh)
		s.loaded.Add(1)
		s.version.Add(1)
		s.updateHealth()
		if first {
			first = false
			loaded <- struct{}{}
		}
		select {
		case <-s.release:
			s.slots[id].Store(nil)
			if err := sh.Close(s.closeCtx); err != nil {
				s.closeFailed(fmt.Errorf("server: close shard %d: %w", id, err))
			}
			return
		case <-sh.Done():
		}
		s.slots[id].Store(nil)
		s.loaded.Add(-1)
		s.version.Add(1)
		s.updateHealth()
		s.log.Error("shard stopped; reopening", "shard", id, "err", sh.Err())
		_ = sh.Close(context.Background()) // stopped already: nothing to flush
		if !s.sleep(wait) {
			return
		}
	}
}

func (s *Server) openShard(id uint32, sem chan struct{}) (*shard.Shard, error) {
	select {
	case sem <- struct{}{}:
	case <-s.quit:
		return nil, ErrClosed
	}
	defer func() { <-sem }()
	cfg := s.cfg.Shard
	cfg.ID = id
	cfg.Owner = s.owner
	cfg.Store = s.st
	cfg.Committer = s.com
	cfg.Dispatcher = s.hub
	cfg.Events = s.metrics
	cfg.Logger = s.log
	return shard.Open(s.quitCtx, cfg) // Close cuts a load short
}

// sleep waits d, or until Close begins (then it returns false).
func (s *Server) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.quit:
		return false
	}
}

// shard returns shard id when this node holds it, or nil; callers turn
// nil into UNAVAILABLE (see unavailable).
func (s *Server) shard(id uint32) *shard.Shard {
	return s.slots[id].Load()
}

// GRPCAddr returns the address the gRPC services listen on, or "" before
// Start.
func (s *Server) GRPCAddr() string {
	if s.grpcLis == nil {
		return ""
	}
	return s.grpcLis.Addr().String()
}

// HTTPAddr returns the address of the HTTP endpoints, or "" when there is
// none.
func (s *Server) HTTPAddr() string {
	if s.httpLis == nil {
		return ""
	}
	return s.httpLis.Addr().String()
}

// Ready reports whether the server serves every shard.
func (s *Server) Ready() bool {
	return !s.quitting() && int(s.loaded.Load()) == len(s.slots)
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

	s.stopQuit()
	if started {
		<-s.startDone // start stops at its next step, then undoes nothing itself
	}
	err := s.shutdown(ctx)
	s.mu.Lock()
	s.closeErr = err
	s.mu.Unlock()
	return err
}

func (s *Server) shutdown(ctx context.Context) error {
	s.closeCtx = ctx
	if s.health != nil {
		s.health.Shutdown()
	}
	var errs []error
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
	close(s.release)
	if s.http != nil {
		s.closeFailed(s.http.Shutdown(ctx))
	} else if s.httpLis != nil {
		s.closeFailed(s.httpLis.Close())
	}
	s.wg.Wait() // the supervisors close their shards
	errs = append(errs, s.closeErrs...)
	if s.com != nil {
		errs = append(errs, s.com.Close())
	}
	if s.st != nil {
		errs = append(errs, s.st.Close())
	}
	if s.rdb != nil {
		errs = append(errs, s.rdb.Close())
	}
	s.log.Info("stopped")
	return errors.Join(errs...)
}

// closeFailed records an error of the shutdown, from any goroutine.
func (s *Server) closeFailed(err error) {
	if err == nil {
		return
	}
	s.closeErrMu.Lock()
	defer s.closeErrMu.Unlock()
	s.closeErrs = append(s.closeErrs, err)
}
