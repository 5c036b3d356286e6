package server

import (
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/node"
	"github.com/timerd/timerd/shard"
	"github.com/timerd/timerd/store"
)

// Config configures a Server. Start from DefaultConfig (production) or
// LocalConfig (tests), change what you need, and pass it to New.
type Config struct {
	// GRPCAddr is the host:port the gRPC services listen on (default
	// 127.0.0.1:7070). Port 0 picks a free port; Server.GRPCAddr tells
	// which.
	GRPCAddr string
	// HTTPAddr is the host:port of /metrics, /healthz and /readyz (default
	// 127.0.0.1:7071). Empty disables HTTP.
	HTTPAddr string
	// PProf also serves Go's profiles under /debug/pprof/ on HTTPAddr
	// (default false). They show the process's internals (goroutine
	// stacks, the command line) and a CPU profile costs CPU while it
	// runs, so turn it on where HTTPAddr is reachable only by operators.
	PProf bool

	// DataDir is the embedded store's directory (default ./timerd-data).
	// It is used when RedisURL is empty.
	DataDir string
	// RedisURL, when set, keeps the shards in that Redis instead of the
	// embedded store: redis://[user:password@]host:port[/db] for one
	// server, redis://host1:port1,host2:port2 for a Redis Cluster,
	// redis-sentinel://host1:port1,host2:port2?master=name for a master
	// behind Sentinel (node.ParseRedisURL tells every form).
	RedisURL string
	// RedisPrefix prefixes every Redis key (default "td").
	RedisPrefix string
	// AllowVolatileRedis lets the node start on a Redis that runs without
	// its append-only file (appendonly no), or whose persistence settings
	// it cannot read; default false, which refuses to start there. Such a
	// Redis answers writes it may lose whole on a restart, so "durable"
	// then means only "in Redis's memory" (and its RDB snapshots, if any).
	AllowVolatileRedis bool
	// RedisWaitReplicas, when above 0, makes every commit wait until that
	// many replicas of its Redis master have it (Redis's WAIT), so that a
	// failover which promotes a replica loses no acknowledged timer; it
	// must not exceed the replicas each master has. Default 0.
	// RedisWaitTimeout bounds each wait (default 1s); see
	// store.RedisConfig.
	RedisWaitReplicas int
	RedisWaitTimeout  time.Duration

	// NodeName names this node in shard leases and in ClusterService
	// (default: the host name). With Redis it should be unique per node
	// and stable across restarts. Each process adds a fresh incarnation
	// to it in its leases (see Server.Owner), so a second process started
	// with the same name never takes over a live lease of the first: it
	// waits until the first releases its shards (a graceful stop) or
	// their leases lapse (a crash, at most Shard.LeaseTTL).
	NodeName string
	// Shards is the number of shards (default 64). It is fixed when a
	// store is first used; a node started with another count refuses to
	// start (store.ErrShardCount).
	Shards uint32
	// LoadParallelism bounds how many shards load at once (default 8).
	LoadParallelism int

	// Shard is the template of every shard's configuration: its limits,
	// ack timeout, attempts, backoff and lease TTL (see shard.Config). Its
	// ID, Owner, Store, Committer, Dispatcher, Events and Logger are set
	// by the server.
	Shard shard.Config
	// Wall is the wall clock the node's steady clock is anchored at and
	// slews toward (see shard.SteadyClock). Default (nil) time.Now; a
	// test hook of timerd (TIMERD_TEST_WALL_OFFSET_FILE) moves it to
	// step one node's clock without stepping the machine's.
	Wall func() time.Time
	// Commit configures the group commit (see store.CommitterConfig); its
	// Logger and OnCommit are set by the server. Its MaxQueueOps must be
	// at least MaxBatch, since a call reserves room for all its writes at
	// once; its CommitTimeout also sizes the Redis client's socket
	// timeouts (see redisTimeouts).
	Commit store.CommitterConfig

	// MaxBatch is the most items one batch RPC (or one Ack message) may
	// carry (default 10,000).
	MaxBatch int
	// DefaultInFlight is a subscription's max_in_flight when it gives 0
	// (default 100); MaxInFlight is the most it may ask for (default
	// 10,000).
	DefaultInFlight, MaxInFlight uint32
	// MinAckTimeout and MaxAckTimeout bound a subscription's ack_timeout
	// (defaults 1s and 15m). A subscription that gives none gets
	// Shard.AckTimeout.
	MinAckTimeout, MaxAckTimeout time.Duration
	// SubscriptionTimeout is how long a new Subscribe stream may take to
	// send its first message, the subscription, before the server ends it
	// with DEADLINE_EXCEEDED (default 10s): a client that opens streams
	// and sends nothing must not hold the server's goroutines.
	SubscriptionTimeout time.Duration

	// MaxRecvMsgSize is the largest request message in bytes (default
	// 16 MiB); a bigger one fails with RESOURCE_EXHAUSTED.
	MaxRecvMsgSize int
	// MaxConcurrentStreams bounds the concurrent RPCs of one client
	// connection (default 1,024); a client's further calls on that
	// connection wait for one to end.
	MaxConcurrentStreams uint32
	// BadCallRate and BadCallBurst slow down a client address that keeps
	// making calls the node refuses as malformed, unauthenticated or
	// forbidden: after BadCallBurst of them (default 100), its bad calls
	// are answered at BadCallRate a second (default 50), each waiting at
	// most BadCallDelay (default 1s) for its turn. Calls that succeed are
	// never delayed. A BadCallRate of 0 turns this off. See tarpit.
	BadCallRate  float64
	BadCallBurst int
	BadCallDelay time.Duration
	// Limits bounds what one namespace may take (pending timers, schedule
	// rate; off by default) and the Subscribe streams of the node (see
	// Limits).
	Limits Limits
	// NamespaceLimitsFile, when set, is a JSON file that gives chosen
	// namespaces their own pending, rate and burst limits in place of
	// Limits' (the format is in nslimits.go and docs/SECURITY.md). It is
	// read again when it changes (looked at at most once per
	// LimitsReloadInterval) and on Server.Reload; a version that does not
	// parse or validate keeps the previous one and is logged, and New
	// fails on one. Every node of a cluster should have the same file:
	// each enforces its share of the limits it reads. Empty (the
	// default): Limits for every namespace.
	NamespaceLimitsFile string
	// KeepaliveMinTime is the shortest interval at which clients may ping
	// (default 10s, which the Go client's 30s pings respect); a client
	// that pings more often is disconnected. KeepaliveTime is how long a
	// quiet connection goes before the server pings it (default 60s), and
	// KeepaliveTimeout how long it waits for the answer before closing
	// the connection (default 20s): a subscriber that vanished without a
	// goodbye gets its deliveries back within these two.
	KeepaliveMinTime, KeepaliveTime, KeepaliveTimeout time.Duration

	// Cluster, when set, makes the node a member of a cluster, which
	// needs RedisURL (the store the members share): it gossips on
	// Cluster.BindAddr, joins Cluster.Seeds and holds the shards the ring
	// assigns to it, and requests for other shards are forwarded to
	// their owners. Its NodeName, Incarnation, Shards, GRPCAddr and Logger
	// are set by the server. Nil (the default): a single node that holds
	// every shard.
	Cluster *cluster.Config
	// AdvertiseAddr is the gRPC host:port that peers and clients reach
	// this node at, announced to the cluster (default: the address
	// GRPCAddr listens on, which must then be reachable by the peers).
	AdvertiseAddr string
	// ForwardTimeout bounds a request this node forwards to the owner of
	// a shard when its caller set no deadline (default 30s).
	ForwardTimeout time.Duration
	// MetricNamespaces caps how many namespaces get their own metric
	// series (default 1,000): the first ones seen since the start keep
	// theirs, and the rest are counted under the label "(other)", which
	// no namespace can have, so a flood of tenants cannot flood the
	// metrics. 0 counts every namespace under "(other)".
	MetricNamespaces int

	// TLS, when set, serves the gRPC API over TLS 1.3 (mutual TLS with
	// TLS.ClientCAFile) and makes this node's calls to its peers use it
	// too. Nil (the default): plaintext. The HTTP address stays
	// plaintext either way: keep it on loopback or an operators' network.
	TLS *TLSConfig
	// AuthFile, when set, is the token file (see package auth): every RPC
	// but the health checks must carry "authorization: Bearer <token>",
	// and may touch only its token's namespaces with its roles. The file
	// is read again when it changes (looked at at most once per
	// AuthReloadInterval) and on Server.Reload. Empty (the default): no
	// tokens; anyone who reaches GRPCAddr may do anything, and the node
	// warns at start when that address is not loopback.
	AuthFile string
	// NodeToken is the token this node presents on the calls it makes to
	// its peers on no caller's behalf (see Server.NodeContext); the
	// peers' token file gives it the role node. Forwarded requests carry
	// their caller's token instead. Empty: none.
	NodeToken string

	// Logger receives the server's events. Default: discard.
	Logger *slog.Logger

	// Version and Revision say what the node was built from: a release
	// or module version, and the VCS commit. The metric
	// timerd_build_info{version,commit,goversion} carries them with the
	// Go version. cmd/timerd sets them from its binary's build (see
	// internal/cli.ReadBuild). Empty, they read "devel" and "unknown".
	Version, Revision string
}

// DefaultConfig returns the production defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		GRPCAddr:             "127.0.0.1:7070",
		HTTPAddr:             "127.0.0.1:7071",
		DataDir:              "timerd-data",
		RedisPrefix:          "td",
		RedisWaitTimeout:     store.DefaultRedisConfig().WaitTimeout,
		Shards:               64,
		LoadParallelism:      8,
		Shard:                shard.DefaultConfig(0, ""),
		Commit:               store.DefaultCommitterConfig(),
		MaxBatch:             10_000,
		DefaultInFlight:      100,
		MaxInFlight:          10_000,
		MinAckTimeout:        time.Second,
		MaxAckTimeout:        15 * time.Minute,
		SubscriptionTimeout:  10 * time.Second,
		MaxRecvMsgSize:       16 << 20,
		MaxConcurrentStreams: 1024,
		BadCallRate:          50,
		BadCallBurst:         100,
		BadCallDelay:         time.Second,
		Limits:               DefaultLimits(),
		KeepaliveMinTime:     10 * time.Second,
		KeepaliveTime:        60 * time.Second,
		KeepaliveTimeout:     20 * time.Second,
		MetricNamespaces:     1000,
		ForwardTimeout:       30 * time.Second,
	}
}

// LocalConfig returns a configuration for tests: the embedded store in
// dir, free loopback ports, 4 shards, and the short ack timeouts and
// backoffs of shard.LocalConfig (ack timeout 1s, backoff 100ms to 1s,
// 3 attempts), so redelivery and dead letters happen within seconds.
func LocalConfig(dir string) Config {
	c := DefaultConfig()
	c.GRPCAddr = "127.0.0.1:0"
	c.HTTPAddr = "127.0.0.1:0"
	c.DataDir = dir
	c.NodeName = "local"
	c.Shards = 4
	c.Shard = shard.LocalConfig(0, "")
	return c
}

// Validate reports the first invalid field, by name. Errors wrap
// ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
	}
	switch {
	case c.GRPCAddr == "":
		return bad("GRPCAddr", "must be set")
	case c.RedisURL == "" && c.DataDir == "":
		return bad("DataDir", "must be set when RedisURL is empty")
	case c.RedisURL != "" && c.RedisPrefix == "":
		return bad("RedisPrefix", "must be set")
	case c.Shards < 1 || c.Shards > maxShards:
		return bad("Shards", "must be in [1, %d], got %d", maxShards, c.Shards)
	case c.Cluster != nil && c.RedisURL == "":
		return bad("Cluster", "needs RedisURL: the members share their shards through Redis")
	case c.ForwardTimeout <= 0:
		return bad("ForwardTimeout", "must be positive, got %v", c.ForwardTimeout)
	case c.LoadParallelism < 1:
		return bad("LoadParallelism", "must be >= 1, got %d", c.LoadParallelism)
	case c.MaxBatch < 1:
		return bad("MaxBatch", "must be >= 1, got %d", c.MaxBatch)
	case c.MaxInFlight < 1:
		return bad("MaxInFlight", "must be >= 1, got %d", c.MaxInFlight)
	case c.DefaultInFlight < 1 || c.DefaultInFlight > c.MaxInFlight:
		return bad("DefaultInFlight", "must be in [1, MaxInFlight=%d], got %d", c.MaxInFlight, c.DefaultInFlight)
	case c.MinAckTimeout < time.Millisecond:
		return bad("MinAckTimeout", "must be >= 1ms, got %v", c.MinAckTimeout)
	case c.MaxAckTimeout < c.MinAckTimeout:
		return bad("MaxAckTimeout", "must be >= MinAckTimeout=%v, got %v", c.MinAckTimeout, c.MaxAckTimeout)
	case c.Shard.AckTimeout < c.MinAckTimeout || c.Shard.AckTimeout > c.MaxAckTimeout:
		return bad("Shard.AckTimeout", "must be in [MinAckTimeout, MaxAckTimeout] = [%v, %v], got %v", c.MinAckTimeout, c.MaxAckTimeout, c.Shard.AckTimeout)
	case c.SubscriptionTimeout <= 0:
		return bad("SubscriptionTimeout", "must be > 0, got %v", c.SubscriptionTimeout)
	case c.MaxRecvMsgSize < 1<<20:
		return bad("MaxRecvMsgSize", "must be >= 1 MiB, got %d", c.MaxRecvMsgSize)
	case c.MaxConcurrentStreams < 1:
		return bad("MaxConcurrentStreams", "must be >= 1, got %d", c.MaxConcurrentStreams)
	case c.BadCallRate < 0 || math.IsNaN(c.BadCallRate) || math.IsInf(c.BadCallRate, 0):
		return bad("BadCallRate", "must be a number >= 0 (0: off), got %v", c.BadCallRate)
	case c.BadCallRate > 0 && c.BadCallBurst < 1:
		return bad("BadCallBurst", "must be >= 1 with BadCallRate, got %d", c.BadCallBurst)
	case c.BadCallRate > 0 && c.BadCallDelay <= 0:
		return bad("BadCallDelay", "must be > 0 with BadCallRate, got %v", c.BadCallDelay)
	case c.KeepaliveMinTime <= 0:
		return bad("KeepaliveMinTime", "must be > 0, got %v", c.KeepaliveMinTime)
	case c.KeepaliveTime <= 0:
		return bad("KeepaliveTime", "must be > 0, got %v", c.KeepaliveTime)
	case c.KeepaliveTimeout <= 0:
		return bad("KeepaliveTimeout", "must be > 0, got %v", c.KeepaliveTimeout)
	case c.Commit.MaxQueueOps < c.MaxBatch:
		// A call reserves room for all its writes before it applies any.
		return bad("Commit.MaxQueueOps", "must be >= MaxBatch=%d, or a full batch could never be taken; got %d", c.MaxBatch, c.Commit.MaxQueueOps)
	case c.MetricNamespaces < 0:
		return bad("MetricNamespaces", "must be >= 0, got %d", c.MetricNamespaces)
	}
	if err := c.Limits.validate(bad); err != nil {
		return err
	}
	if c.RedisURL != "" {
		if _, err := node.ParseRedisURL(c.RedisURL); err != nil {
			return fmt.Errorf("%w: RedisURL: %w", ErrInvalidConfig, err)
		}
	}
	if c.TLS != nil {
		if err := c.TLS.validate(); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	// The shard template is checked as a shard would check it, with the
	// dependencies the server supplies standing in.
	tmpl := c.Shard
	tmpl.Owner = "validate"
	tmpl.Store = (*store.Embedded)(nil)
	tmpl.Committer = new(store.Committer)
	tmpl.Dispatcher = (*hub)(nil)
	if err := tmpl.Validate(); err != nil {
		return bad("Shard", "is invalid: %v", err)
	}
	return nil
}

// maxShards bounds Config.Shards: each shard costs two goroutines and a
// lease renewal every LeaseTTL/3.
const maxShards = 1 << 16
