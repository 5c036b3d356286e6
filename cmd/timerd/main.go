// Command timerd runs one timerd node.
//
// With no flags it serves gRPC on 127.0.0.1:7070 and metrics on
// 127.0.0.1:7071, with its timers in an embedded store in ./timerd-data.
// With --redis and --join (or --gossip-addr) it is a member of a cluster
// whose nodes share that Redis: it gossips with the others and holds the
// shards the ring assigns to it.
// Every flag has a TIMERD_* environment variable (the flag's name in
// upper case with dashes as underscores); a flag given on the command
// line wins over the environment. It stops gracefully on SIGINT or
// SIGTERM: a cluster member first hands its shards over to the others
// and leaves the cluster; then it stops taking requests, flushes,
// releases what it still holds and exits 0.
//
// SIGHUP reads the TLS certificate, the CA files, the token file and the
// namespace limits file again (they are also read again when they change
// on disk); one that comes while the node starts is handled once it has
// started.
//
// This package only parses flags; the node is package server.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/internal/cli"
	"github.com/timerd/timerd/node"
	"github.com/timerd/timerd/server"
	"github.com/timerd/timerd/shard"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main with its arguments and output, for tests. It returns the
// exit code: 0 after a graceful stop, 2 for a bad flag, 1 otherwise.
// --help and --version print on stdout, everything else on stderr.
func run(args []string, stdout, stderr io.Writer) int {
	cfg, logLevel, shutdownTimeout, err := parse(args, stdout)
	switch {
	case errors.Is(err, flag.ErrHelp), errors.Is(err, errVersion):
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "timerd: %v\nRun 'timerd --help' for usage.\n", err)
		return 2
	}
	// SIGHUP is caught before anything is logged: one that comes while
	// the node starts (its default action is to exit) waits for the start
	// to end, and then reloads.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	build := cli.ReadBuild()
	cfg.Version, cfg.Revision = build.Version, build.CommitLabel()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))
	cfg.Logger = log
	srv, err := server.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "timerd: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := srv.Start(ctx); err != nil {
		signalled := ctx.Err() != nil
		stop()         // cancels ctx too, so read it first
		if signalled { // a signal while starting: stopped as asked
			log.Info("signal received while starting; stopped")
			return 0
		}
		fmt.Fprintf(stderr, "timerd: %v\n", err)
		return 1
	}
	code := 0
wait:
	for {
		select {
		case <-hup:
			if err := srv.Reload(); err != nil {
				log.Error("SIGHUP: reload; what failed keeps its previous version", "err", err)
			} else {
				log.Info("SIGHUP: TLS, token and namespace limits files reloaded")
			}
		case <-ctx.Done():
			log.Info("signal received; shutting down", "timeout", shutdownTimeout)
			break wait
		case <-srv.Done():
			log.Error("stopped serving", "err", srv.Err())
			code = 1
			break wait
		}
	}
	stop() // a second signal now kills the process
	closeCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Close(closeCtx); err != nil {
		log.Error("shutdown", "err", err)
		return 1
	}
	return code
}

// errVersion is parse's answer to --version, which it printed.
var errVersion = errors.New("version printed")

// parse reads flags, with TIMERD_* environment variables as defaults. It
// prints --help and --version on stdout, and nothing else: the caller
// reports its errors.
func parse(args []string, stdout io.Writer) (server.Config, slog.Level, time.Duration, error) {
	cfg := server.DefaultConfig()
	fs := flag.NewFlagSet("timerd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // the flag package calls it on every error
	usage := func() {
		fmt.Fprint(stdout, `Usage: timerd [flags]

timerd is a timer service node. Clients schedule timers over gRPC and
subscribers receive each one when it is due: at least once, never early.
With no flags it runs one node on an embedded store in ./timerd-data.
With --redis and --join (or --gossip-addr) it is a member of a cluster
that shares that Redis.

Every flag can also be set by an environment variable: TIMERD_ and the
flag's name in upper case, dashes as underscores (--grpc-addr is
TIMERD_GRPC_ADDR). Flags win over the environment.

Durations are written as Go writes them (30s, 1m30s, 2h) or with days
and years: 7d is 168h, 1y is 365d.

Flags:
`)
		cli.PrintFlags(stdout, fs, nil)
	}
	var (
		level    = slog.LevelInfo
		shutdown = 30 * time.Second
		shards   = uint(cfg.Shards)
		maxIn    = uint(cfg.MaxInFlight)
		defIn    = uint(cfg.DefaultInFlight)
		streams  = uint(cfg.MaxConcurrentStreams)
		attempts = uint(cfg.Shard.MaxAttempts)
		cc       = cluster.DefaultConfig()
		join     string
		version  bool
		tlsc     server.TLSConfig
		keyFile  string
		nodeTok  string
	)
	fs.BoolVar(&version, "version", false, "print the version, the commit and the Go version timerd was built from, and exit")
	fs.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "`host:port` of the gRPC API (TimerService, ClusterService, health, reflection)")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "`host:port` of /metrics, /healthz and /readyz; empty disables HTTP")
	fs.BoolVar(&cfg.PProf, "pprof", cfg.PProf, "also serve Go's profiles under /debug/pprof/ on --http-addr (expose only to operators)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "`directory` of the embedded store (used when --redis is not set)")
	fs.StringVar(&cfg.RedisURL, "redis", cfg.RedisURL, "Redis `URL` to keep the shards in, instead of the embedded store: "+
		"redis://[user:pass@]host:port[/db] (one server; rediss:// with TLS), "+
		"redis://host1:port1,host2:port2,... (a Redis Cluster; redis+cluster://host:port with one seed), "+
		"redis-sentinel://[user:pass@]host1:port1,host2:port2[/db]?master=name[&sentinel_password=pw] (the master behind Sentinel); "+
		"go-redis's options may follow, as ?dial_timeout=3s")
	fs.StringVar(&cfg.RedisPrefix, "redis-prefix", cfg.RedisPrefix, "`prefix` of every Redis key")
	fs.IntVar(&cfg.RedisWaitReplicas, "redis-wait-replicas", cfg.RedisWaitReplicas, "make every commit wait until this many replicas of its Redis master have it (WAIT), so a failover loses no acknowledged timer; at most the replicas each master has (0: do not wait)")
	fs.DurationVar(&cfg.RedisWaitTimeout, "redis-wait-timeout", cfg.RedisWaitTimeout, "how long each commit waits for --redis-wait-replicas replicas before it is retried")
	fs.BoolVar(&cfg.AllowVolatileRedis, "allow-volatile-redis", cfg.AllowVolatileRedis, "start on a Redis without an append-only file (appendonly no), or whose persistence cannot be read; a restart of such a Redis loses acknowledged timers")
	fs.StringVar(&cfg.NodeName, "node-name", cfg.NodeName, "this node's `name` in shard leases (default: the host name); unique and stable per node (each process adds its own incarnation, so a second process of one name waits for the first's leases)")
	fs.UintVar(&shards, "shards", shards, "shard `count`; fixed when a store is first used (default 64 for a single node, 1024 for a cluster)")
	fs.StringVar(&join, "join", join, "gossip addresses (`host:port,...`) of cluster members to join; with --redis, makes this node a cluster member (its own address may be in the list)")
	fs.StringVar(&cc.BindAddr, "gossip-addr", cc.BindAddr, "`host:port` (an IP) of this node's membership gossip, TCP and UDP; set, it makes the node a cluster member")
	fs.StringVar(&cc.AdvertiseAddr, "gossip-advertise-addr", cc.AdvertiseAddr, "`host:port` (an IP) peers reach the gossip at (default: --gossip-addr)")
	fs.StringVar(&cfg.AdvertiseAddr, "advertise-addr", cfg.AdvertiseAddr, "`host:port` peers and clients reach this node's gRPC at (default: --grpc-addr)")
	fs.DurationVar(&cc.RejoinInterval, "rejoin-interval", cc.RejoinInterval, "how often a cluster member joins the --join members again, which heals a long partition")
	fs.IntVar(&cfg.Shard.MaxPayload, "max-payload", cfg.Shard.MaxPayload, "largest timer payload in `bytes`")
	fs.DurationVar(&cfg.Shard.MaxHorizon, "max-horizon", cfg.Shard.MaxHorizon, "how far ahead a timer may be due")
	fs.DurationVar(&cfg.Shard.MinInterval, "min-interval", cfg.Shard.MinInterval, "shortest repeat interval")
	fs.DurationVar(&cfg.Shard.AckTimeout, "ack-timeout", cfg.Shard.AckTimeout, "how long a delivery waits for its ack when the subscription does not say")
	fs.DurationVar(&cfg.MinAckTimeout, "min-ack-timeout", cfg.MinAckTimeout, "shortest ack timeout a subscription may ask for")
	fs.DurationVar(&cfg.MaxAckTimeout, "max-ack-timeout", cfg.MaxAckTimeout, "longest ack timeout a subscription may ask for")
	fs.DurationVar(&cfg.SubscriptionTimeout, "subscription-timeout", cfg.SubscriptionTimeout, "how long a new Subscribe stream may take to send its subscription")
	fs.UintVar(&attempts, "max-attempts", attempts, "delivery `attempts` of one occurrence before the timer becomes a dead letter")
	fs.DurationVar(&cfg.Shard.BackoffMin, "backoff-min", cfg.Shard.BackoffMin, "wait before the first redelivery; doubles with each attempt")
	fs.DurationVar(&cfg.Shard.BackoffMax, "backoff-max", cfg.Shard.BackoffMax, "longest wait before a redelivery")
	fs.DurationVar(&cfg.Shard.LeaseTTL, "lease-ttl", cfg.Shard.LeaseTTL, "time to live of shard leases")
	fs.IntVar(&cfg.MaxBatch, "max-batch", cfg.MaxBatch, "most `items` in one batch RPC or ack message")
	fs.UintVar(&defIn, "default-in-flight", defIn, "a subscription's max_in_flight when it gives none")
	fs.UintVar(&maxIn, "max-in-flight", maxIn, "largest max_in_flight a subscription may ask for")
	fs.IntVar(&cfg.MaxRecvMsgSize, "max-recv-msg-size", cfg.MaxRecvMsgSize, "largest request message in `bytes`")
	fs.UintVar(&streams, "max-concurrent-streams", streams, "most concurrent `calls` (streams included) on one client connection; more wait for one to end")
	fs.Float64Var(&cfg.BadCallRate, "bad-call-rate", cfg.BadCallRate, "bad `calls` per second (malformed, unauthenticated, forbidden) a client address may make past --bad-call-burst before their answers are slowed to that rate (0: never slowed)")
	fs.IntVar(&cfg.BadCallBurst, "bad-call-burst", cfg.BadCallBurst, "bad `calls` a client address may make at once before --bad-call-rate applies")
	fs.DurationVar(&cfg.BadCallDelay, "bad-call-delay", cfg.BadCallDelay, "the longest a bad call's answer is held back (`duration`)")
	fs.IntVar(&cfg.Limits.MaxSubscribeStreams, "max-subscribe-streams", cfg.Limits.MaxSubscribeStreams, "most Subscribe `streams` this node serves at once; more fail with RESOURCE_EXHAUSTED")
	fs.IntVar(&cfg.Limits.MaxPending, "ns-max-pending", cfg.Limits.MaxPending, "most `timers` one namespace may hold across the cluster (0: no limit); past it Schedule items fail with RESOURCE_EXHAUSTED")
	fs.Float64Var(&cfg.Limits.ScheduleRate, "ns-schedule-rate", cfg.Limits.ScheduleRate, "most timers per second (`rate`) one namespace may schedule across the cluster (0: no limit)")
	fs.IntVar(&cfg.Limits.ScheduleBurst, "ns-schedule-burst", cfg.Limits.ScheduleBurst, "most `timers` one namespace may schedule at once above --ns-schedule-rate (0: one second's worth)")
	fs.Float64Var(&cfg.Limits.DeliverRate, "ns-deliver-rate", cfg.Limits.DeliverRate, "most of one namespace's timers per second (`rate`) the cluster delivers (0: no limit); those past it wait, in order, and leave the processors to other namespaces")
	fs.IntVar(&cfg.Limits.DeliverBurst, "ns-deliver-burst", cfg.Limits.DeliverBurst, "most of one namespace's `timers` delivered at once above --ns-deliver-rate (0: a hundredth of a second's worth)")
	fs.StringVar(&cfg.NamespaceLimitsFile, "ns-limits-file", cfg.NamespaceLimitsFile, "JSON `file` of per-namespace max_pending, schedule_rate, schedule_burst, deliver_rate and deliver_burst (see docs/SECURITY.md); a namespace it omits, or a field, has the --ns-* flags' limit; reloaded when it changes or on SIGHUP")
	fs.IntVar(&cfg.Commit.Lanes, "commit-lanes", cfg.Commit.Lanes, "group commit `lanes` whose round trips overlap")
	fs.DurationVar(&cfg.Commit.Linger, "commit-linger", cfg.Commit.Linger, "how long a group commit waits for more writes before it starts (0: none)")
	fs.DurationVar(&cfg.Commit.GiveUpAfter, "commit-give-up", cfg.Commit.GiveUpAfter, "how long a failing store is retried before writes fail with UNAVAILABLE")
	fs.IntVar(&cfg.Commit.MaxQueueOps, "commit-max-queue", cfg.Commit.MaxQueueOps, "most `writes` a group commit lane holds; past it calls fail with RESOURCE_EXHAUSTED")
	fs.StringVar(&tlsc.CertFile, "tls-cert", "", "PEM `file` of this node's TLS certificate (chain); with --tls-key, serves gRPC over TLS 1.3 and calls peers over TLS; reloaded when it changes or on SIGHUP")
	fs.StringVar(&tlsc.KeyFile, "tls-key", "", "PEM `file` of the key of --tls-cert")
	fs.StringVar(&tlsc.ClientCAFile, "tls-client-ca", "", "PEM `file` of the CAs client (and peer) certificates must chain to: mutual TLS")
	fs.StringVar(&tlsc.PeerCAFile, "tls-peer-ca", "", "PEM `file` of the CAs peers' certificates are verified against (default: --tls-client-ca, else the system's); reloaded when it changes or on SIGHUP, for the next connection to each peer")
	fs.StringVar(&cfg.AuthFile, "auth-file", "", "JSON token `file` (see docs/SECURITY.md): every RPC must carry a bearer token, limited to its namespaces and roles; reloaded when it changes or on SIGHUP")
	fs.StringVar(&nodeTok, "node-token-file", "", "`file` holding the token (role node) this node presents on its own calls to peers")
	fs.StringVar(&keyFile, "gossip-key-file", "", "`file` of the gossip encryption key: 16, 24 or 32 bytes, base64 or raw; every member needs the same")
	fs.StringVar(&cc.Label, "gossip-label", cc.Label, "`label` on every gossip message; members of one cluster share it, and drop other labels")
	fs.TextVar(&level, "log-level", level, "log `level`: debug, info, warn or error")
	fs.DurationVar(&shutdown, "shutdown-timeout", shutdown, "how long a graceful stop may take before RPCs in progress are cut")
	cli.HumanDurations(fs)

	// The environment supplies defaults, then the command line overrides.
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "version" {
			return // a question to the command line, not a setting
		}
		name := "TIMERD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok && envErr == nil {
			if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("environment variable %s=%q: %w", name, v, err)
			}
		}
	})
	if envErr != nil {
		return cfg, level, shutdown, envErr
	}
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		usage()
		return cfg, level, shutdown, err
	} else if err != nil {
		return cfg, level, shutdown, cli.FlagError(fs, err)
	}
	if version {
		fmt.Fprintln(stdout, cli.ReadBuild().Line("timerd"))
		return cfg, level, shutdown, errVersion
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, name := range []string{"join", "gossip-addr"} {
		if _, ok := os.LookupEnv("TIMERD_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); ok {
			set[name] = true
		}
	}
	if cfg.RedisURL != "" {
		if _, err := node.ParseRedisURL(cfg.RedisURL); err != nil {
			return cfg, level, shutdown, fmt.Errorf("--redis: %w", err)
		}
	}
	if join != "" || set["gossip-addr"] {
		if cfg.RedisURL == "" {
			return cfg, level, shutdown, errors.New("--join and --gossip-addr make a cluster member, which needs --redis: the members share their shards through Redis")
		}
		for a := range strings.SplitSeq(join, ",") {
			if a = strings.TrimSpace(a); a != "" {
				cc.Seeds = append(cc.Seeds, a)
			}
		}
		cfg.Cluster = &cc
		if !set["shards"] {
			if _, ok := os.LookupEnv("TIMERD_SHARDS"); !ok {
				shards = 1024
			}
		}
	}
	if fs.NArg() > 0 {
		return cfg, level, shutdown, fmt.Errorf("unexpected argument %q (timerd takes flags only; see --help)", fs.Arg(0))
	}
	for _, v := range []struct {
		name string
		n    uint
	}{{"shards", shards}, {"max-attempts", attempts}, {"max-in-flight", maxIn}, {"default-in-flight", defIn}, {"max-concurrent-streams", streams}} {
		if v.n > 1<<32-1 {
			return cfg, level, shutdown, fmt.Errorf("--%s %d is too large", v.name, v.n)
		}
	}
	if tlsc != (server.TLSConfig{}) {
		if tlsc.CertFile == "" || tlsc.KeyFile == "" {
			return cfg, level, shutdown, errors.New("--tls-cert and --tls-key go together (and --tls-client-ca and --tls-peer-ca need them)")
		}
		cfg.TLS = &tlsc
	}
	if keyFile != "" {
		if cfg.Cluster == nil {
			return cfg, level, shutdown, errors.New("--gossip-key-file needs a cluster member (--join or --gossip-addr)")
		}
		k, err := cluster.ReadKeyFile(keyFile)
		if err != nil {
			return cfg, level, shutdown, fmt.Errorf("--gossip-key-file: %w", err)
		}
		cfg.Cluster.SecretKey = k
	}
	if nodeTok != "" {
		b, err := os.ReadFile(nodeTok)
		if err != nil {
			return cfg, level, shutdown, fmt.Errorf("--node-token-file: %w", err)
		}
		if cfg.NodeToken = strings.TrimSpace(string(b)); cfg.NodeToken == "" {
			return cfg, level, shutdown, fmt.Errorf("--node-token-file: %s is empty", nodeTok)
		}
	}
	if path := os.Getenv(wallOffsetEnv); path != "" {
		w, err := newOffsetWall(path)
		if err != nil {
			return cfg, level, shutdown, err
		}
		cfg.Wall = w.Now
	}
	cfg.Shards = uint32(shards)
	cfg.Shard.MaxAttempts = uint32(attempts)
	// The drift allowance follows the lease's TTL (shard.ClockDriftFor).
	cfg.Shard.ClockDrift = shard.ClockDriftFor(cfg.Shard.LeaseTTL)
	cfg.MaxInFlight = uint32(maxIn)
	cfg.DefaultInFlight = uint32(defIn)
	cfg.MaxConcurrentStreams = uint32(streams)
	return cfg, level, shutdown, nil
}
