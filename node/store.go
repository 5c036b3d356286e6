package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/timerd/timerd/store"
)

// openStore opens the embedded store in Config.DataDir, or, when
// Config.RedisURL is set, connects to Redis, checks its persistence and
// opens the Redis store there.
func (n *Node) openStore(ctx context.Context) error {
	if n.cfg.RedisURL == "" {
		ec := store.DefaultEmbeddedConfig(n.cfg.DataDir)
		ec.Logger = n.log
		st, err := store.OpenEmbedded(ec)
		if err != nil {
			return fmt.Errorf("node: data dir: %w", err)
		}
		n.st = st
		return nil
	}
	opts, err := ParseRedisURL(n.cfg.RedisURL)
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	RedisTimeouts(opts, n.cfg.Commit)
	n.rdb = opts.NewClient()
	if err := n.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("node: Redis at %s: %w", opts, err)
	}
	if err := checkRedisPersistence(ctx, n.rdb, opts.String(), n.cfg.AllowVolatileRedis, n.log); err != nil {
		return err
	}
	if n.st, err = store.NewRedis(n.rdb, n.cfg.redisConfig()); err != nil {
		return fmt.Errorf("node: %w", err)
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

// checkRedisPersistence checks the persistence of every server that
// answers writes: each master of a Redis Cluster, and otherwise the one
// server (a Sentinel client's master). A write is only as durable as the
// master of its shard's slot keeps it, so one master without an
// append-only file is reason enough to refuse.
func checkRedisPersistence(ctx context.Context, rdb redis.UniversalClient, addr string, allowVolatile bool, log *slog.Logger) error {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return checkServerPersistence(ctx, rdb, addr, allowVolatile, log)
	}
	return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		return checkServerPersistence(ctx, c, "cluster master "+c.Options().Addr, allowVolatile, log)
	})
}

// checkServerPersistence logs what a durable write means on one Redis
// server, and refuses a server without an append-only file (or one that
// does not say) unless allowVolatile.
func checkServerPersistence(ctx context.Context, rdb redis.UniversalClient, addr string, allowVolatile bool, log *slog.Logger) error {
	p, err := readRedisPersistence(ctx, rdb)
	if err != nil {
		if !allowVolatile {
			return fmt.Errorf("node: Redis at %s: cannot tell whether it keeps an append-only file (%w); "+
				"start with --allow-volatile-redis to run without knowing", addr, err)
		}
		log.Warn("Redis persistence unknown; writes are durable only as far as its settings make them",
			"redis", addr, "err", err)
		return nil
	}
	switch {
	case !p.aof && !allowVolatile:
		return fmt.Errorf("node: Redis at %s runs without an append-only file (appendonly no, per %s), so a restart of Redis "+
			"would lose timers it acknowledged: turn it on (appendonly yes; appendfsync always to survive a crash of its machine) "+
			"or start with --allow-volatile-redis", addr, p.source)
	case !p.aof:
		log.Warn("Redis runs without an append-only file: durable means in Redis's memory only, "+
			"and a restart of Redis loses what it acknowledged since its last RDB snapshot, if any",
			"redis", addr, "appendonly", "no", "source", p.source)
	case p.fsync == "always":
		log.Info("Redis fsyncs its append-only file before it answers: durable means on Redis's disk",
			"redis", addr, "appendonly", "yes", "appendfsync", p.fsync)
	case p.fsync == "everysec":
		log.Info("Redis fsyncs its append-only file about once a second: durable means in Redis's memory and "+
			"on its disk within ~1 s; a crash of Redis or its machine may lose up to ~2 s of acknowledged writes",
			"redis", addr, "appendonly", "yes", "appendfsync", p.fsync)
	default:
		fsync := cmp.Or(p.fsync, "unknown")
		log.Warn("Redis keeps an append-only file but its fsync policy is not always or everysec (or not known): "+
			"durable means written to Redis's AOF, which its machine's crash may lose",
			"redis", addr, "appendonly", "yes", "appendfsync", fsync, "source", p.source)
	}
	return nil
}

// RedisTimeouts sizes the Redis client's socket timeouts for the group
// commit, whichever client the options are of. Its largest round trip is
// one cycle, at most Commit.MaxCycleOps writes, which the committer allows
// Commit.CommitTimeout: go-redis's default read timeout of 3 s would cut a
// long cycle short every time it was retried, wedging its lane. So the
// read and write timeouts are at least CommitTimeout (a longer one in the
// URL stands, and so does a negative one, which means none), and the
// client honours the contexts' deadlines, which bound every other call (a
// lease renewal's OpTimeout) more tightly.
func RedisTimeouts(opts RedisOptions, commit store.CommitterConfig) {
	var read, write *time.Duration
	var contextDeadlines *bool
	switch {
	case opts.Cluster != nil:
		read, write, contextDeadlines = &opts.Cluster.ReadTimeout, &opts.Cluster.WriteTimeout, &opts.Cluster.ContextTimeoutEnabled
	case opts.Failover != nil:
		read, write, contextDeadlines = &opts.Failover.ReadTimeout, &opts.Failover.WriteTimeout, &opts.Failover.ContextTimeoutEnabled
	case opts.Simple != nil:
		read, write, contextDeadlines = &opts.Simple.ReadTimeout, &opts.Simple.WriteTimeout, &opts.Simple.ContextTimeoutEnabled
	default:
		return
	}
	for _, d := range []*time.Duration{read, write} {
		if *d >= 0 {
			*d = max(*d, commit.CommitTimeout)
		}
	}
	*contextDeadlines = true
}

// redisConfig is the Redis store's configuration this node's asks for.
func (c Config) redisConfig() store.RedisConfig {
	rc := store.DefaultRedisConfig()
	rc.Prefix = c.RedisPrefix
	rc.WaitReplicas, rc.WaitTimeout = c.RedisWaitReplicas, c.RedisWaitTimeout
	return rc
}
