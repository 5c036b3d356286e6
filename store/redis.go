package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
)

// Redis is the Store of a cluster: shards' records and leases in Redis,
// reached through any redis.UniversalClient (standalone, Sentinel or
// Cluster).
//
// # Key layout
//
// Every key of one shard carries the hash tag {s<shard>}, so that a shard
// lives in one Cluster slot and its Lua scripts may touch all its keys:
//
//	<prefix>:{s<shard>}:r      HASH   field Key(namespace, id), value an encoded Record
//	<prefix>:{s<shard>}:epoch  STRING the current Grant, "<epoch>:<token>" (token in hex)
//	<prefix>:{s<shard>}:lease  STRING "<epoch>:<token>:<owner>" of the holder, with a PX ttl
//
// # Epochs that survive a forgetful Redis
//
// Redis acknowledges a write before it is durable unless it runs with
// appendfsync always, and a replica promoted by a failover may lack the
// master's last writes. An Acquire it forgot would hand the next owner an
// epoch it had handed out before. Two things keep that harmless. Every
// script fences on the whole Grant, and the token is random (crypto/rand),
// so no restart can repeat it. And the acquire script makes the new epoch
// max(counter + 1, Redis's TIME in ms): after a restart from an older
// state the counter is behind, but the clock is not, so the next epoch is
// still above every epoch handed out before, as long as Redis's clock
// (after a restart, or the new master's after a failover) has not fallen
// behind the epochs it handed out; epochs run ahead of it only by the
// acquires of one shard within one millisecond. Epochs stay below 2^53,
// so Lua's doubles hold them exactly.
// There is deliberately no sorted set of due times: the owning shard loads
// every record into its in-memory timing wheel, which is the due-time
// index, so a ZSET would double the cost of every write for an index that
// is never read.
//
// # Invariants
//
// Every write (commit, acquire, renew, release) is one Lua script that
// checks the shard's current Grant or lease value first and changes
// nothing when the check fails; Redis runs a script atomically, so the check and the
// writes cannot interleave with another owner's. Scripts are sent by
// EVALSHA and loaded again after a NOSCRIPT reply (a restarted server, a
// SCRIPT FLUSH). The client belongs to the caller: Close only marks the
// store closed. All methods may be called concurrently. Load runs one
// helper goroutine that fetches the next page while the caller's goroutine
// decodes the last; it ends before Load returns.
type Redis struct {
	client redis.UniversalClient
	// cluster is client as a Redis Cluster client, nil for any other: its
	// commits go to each master in a pipeline of their own.
	cluster *redis.ClusterClient
	cfg     RedisConfig
	closed  atomic.Bool
	// parts maps each slot to its partition (see Partition); nil until
	// the first commit through a cluster client has read the slot map.
	parts atomic.Pointer[partMap]
	// partsStale is set when a commit failed in a way that a change of the
	// slot map (a failover, a resharding) may explain.
	partsStale atomic.Bool
	// partsMu is held while the slot map is read into parts.
	partsMu sync.Mutex

	commit  *redis.Script
	acquire *redis.Script
	renew   *redis.Script
	release *redis.Script
	lease   *redis.Script
}

var _ Store = (*Redis)(nil)

// RedisConfig configures a Redis store. The zero value is not valid; start
// from DefaultRedisConfig.
type RedisConfig struct {
	// Prefix begins every key, so that several clusters (or tests) can
	// share one Redis. It must be non-empty and must not contain '{' or
	// '}', which would change the keys' hash tag. Default "td".
	Prefix string
	// PageSize is the COUNT hint of each HSCAN by Load: about how many
	// records one round trip fetches and one call of fn receives (Redis
	// may return more or fewer). 1 to 1,000,000. Default 5,000, measured
	// (BenchmarkRedisLoad, a million records of ~100 B on loopback, 2-core
	// VM): 1.6 s at 5,000 against 1.8 s at 1,000 and 1.7 s at 10,000,
	// within 6% of a bare HSCAN walk, which is Redis's own limit there. A
	// page costs Redis's one thread ~1.5 µs per record (~8 ms at 5,000),
	// during which other shards' commits wait.
	PageSize int
	// WaitReplicas, when above 0, makes every commit wait until that many
	// replicas of the master it wrote to have the writes: each pipeline
	// to a master (the one pipeline of a standalone server, one per
	// master of a Redis Cluster) ends with WAIT WaitReplicas WaitTimeout
	// on the same connection, and a round trip that fewer replicas
	// acknowledged fails with ErrReplicas, so the Committer retries it
	// and its writers are not answered. Default 0: a commit is acknowledged
	// once the master has applied it, and a failover that promotes a
	// replica lacking the master's last writes loses them. With
	// WaitReplicas n an acknowledged write is on the master and n
	// replicas, so it survives the failure of the master (a promoted
	// replica that acknowledged it has it) as long as no more than n-1
	// of those replicas fail with it; Redis still promotes the replica
	// with the most data but does not guarantee it is one that
	// acknowledged, so n should be every replica of a master. Replicas
	// are in memory: what survives a crash of all of them is up to their
	// appendfsync. It trades availability for that: a master with fewer
	// live replicas (a promoted replica, until its old master rejoins as
	// its replica) cannot commit, and its shards' writes wait, then fail
	// after CommitterConfig.GiveUpAfter. It must not exceed the replicas
	// each master has, or every commit fails. 0 to 16.
	WaitReplicas int
	// WaitTimeout bounds each WAIT (default 1s, at least 1ms, whole ms).
	// It must stay below the client's ReadTimeout (go-redis's default is
	// 3s) and well below CommitterConfig.CommitTimeout, since the WAIT
	// rides in the commit's round trip.
	WaitTimeout time.Duration
}

// DefaultRedisConfig returns the defaults documented on RedisConfig.
func DefaultRedisConfig() RedisConfig {
	return RedisConfig{Prefix: "td", PageSize: 5000, WaitTimeout: time.Second}
}

// maxWaitReplicas bounds RedisConfig.WaitReplicas.
const maxWaitReplicas = 16

// maxPageSize bounds PageSize: a bigger HSCAN COUNT only holds Redis's one
// thread longer per call.
const maxPageSize = 1_000_000

// Validate reports the first invalid field. The error wraps
// ErrInvalidConfig.
func (c RedisConfig) Validate() error {
	switch {
	case c.Prefix == "":
		return fmt.Errorf("%w: RedisConfig.Prefix is empty", ErrInvalidConfig)
	case strings.ContainsAny(c.Prefix, "{}"):
		return fmt.Errorf("%w: RedisConfig.Prefix %q contains '{' or '}', which would change the keys' hash tag", ErrInvalidConfig, c.Prefix)
	case c.PageSize < 1 || c.PageSize > maxPageSize:
		return fmt.Errorf("%w: RedisConfig.PageSize %d is outside [1, %d]", ErrInvalidConfig, c.PageSize, maxPageSize)
	case c.WaitReplicas < 0 || c.WaitReplicas > maxWaitReplicas:
		return fmt.Errorf("%w: RedisConfig.WaitReplicas %d is outside [0, %d]", ErrInvalidConfig, c.WaitReplicas, maxWaitReplicas)
	case c.WaitReplicas > 0 && (c.WaitTimeout < time.Millisecond || c.WaitTimeout%time.Millisecond != 0):
		return fmt.Errorf("%w: RedisConfig.WaitTimeout %v must be a whole number of ms, at least 1ms, when WaitReplicas is set (WAIT 0 would block forever)", ErrInvalidConfig, c.WaitTimeout)
	}
	return nil
}

// NewRedis returns a store on client, which stays the caller's to close.
// It does no I/O: scripts are loaded on first use.
func NewRedis(client redis.UniversalClient, cfg RedisConfig) (*Redis, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: redis client is nil", ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cluster, _ := client.(*redis.ClusterClient)
	return &Redis{
		client:  client,
		cluster: cluster,
		cfg:     cfg,
		commit:  redis.NewScript(commitScript),
		acquire: redis.NewScript(acquireScript),
		renew:   redis.NewScript(renewScript),
		release: redis.NewScript(releaseScript),
		lease:   redis.NewScript(leaseScript),
	}, nil
}

// Error replies of the scripts. A reply starting with fencedReply is
// "FENCED <current epoch> <lease value or nothing>"; one starting with
// heldReply is "HELD <remaining ms> <lease value>".
const (
	fencedReply = "FENCED "
	heldReply   = "HELD "
)

// commitScript applies one Batch. KEYS[1] is the epoch key, KEYS[2] the
// records hash. ARGV[1] is the batch's Grant as "<epoch>:<token>", which
// must be the epoch key's value exactly; then come runs of ops, each a
// kind ("p" put or "d" delete), a count n, and n field-value pairs (put)
// or n fields (delete), in the batch's order. Runs are applied in order,
// each in calls of at most 1,000 ops (2,000 values to unpack): Lua's
// unpack fails beyond ~8,000 values. The zero Grant never matches: no
// stored Grant has epoch 0 or the zero token.
const commitScript = `
local cur = redis.call('GET', KEYS[1]) or '0'
if cur ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. cur)
end
local h = KEYS[2]
local i, n = 2, #ARGV
while i <= n do
  local kind, cnt = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  if kind == 'p' then
    local last = i + 2 * cnt - 1
    while i <= last do
      local j = math.min(i + 1999, last)
      redis.call('HSET', h, unpack(ARGV, i, j))
      i = j + 1
    end
  elseif kind == 'd' then
    local last = i + cnt - 1
    while i <= last do
      local j = math.min(i + 999, last)
      redis.call('HDEL', h, unpack(ARGV, i, j))
      i = j + 1
    end
  else
    return redis.error_reply('ERR timerd commit: bad op kind ' .. tostring(kind))
  end
end
return 0
`

// acquireScript takes the lease. KEYS[1] is the lease key, KEYS[2] the
// epoch key; ARGV[1] the owner, ARGV[2] the ttl in ms, ARGV[3] the new
// token. The same owner may take it again (and gets a new Grant); another
// owner gets HELD. The new epoch is max(counter + 1, TIME in ms), returned
// as a decimal string. A lease value of another layout (an older version's)
// names no owner and so is held until it lapses. The epoch key's value is
// read by its leading digits, so an older version's plain counter counts.
// TIME makes the script non-deterministic; Redis 5 and later replicate a
// script's effects, not the script, and replicate_commands asks older
// ones to.
const acquireScript = `
if redis.replicate_commands then redis.replicate_commands() end
local v = redis.call('GET', KEYS[1])
if v then
  local owner = string.match(v, '^%d+:' .. string.rep('%x', 32) .. ':(.*)$')
  if owner ~= ARGV[1] then
    return redis.error_reply('HELD ' .. redis.call('PTTL', KEYS[1]) .. ' ' .. v)
  end
end
local cur = tonumber(string.match(redis.call('GET', KEYS[2]) or '', '^%d+') or '0')
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local e = string.format('%d', math.max(cur + 1, ms))
redis.call('SET', KEYS[2], e .. ':' .. ARGV[3])
redis.call('SET', KEYS[1], e .. ':' .. ARGV[3] .. ':' .. ARGV[1], 'PX', ARGV[2])
return e
`

// renewScript extends the lease. KEYS[1] is the lease key, KEYS[2] the
// epoch key; ARGV[1] the Grant "<epoch>:<token>", ARGV[2] the ttl in ms.
// Both the lease and the epoch key must name the Grant.
const renewScript = `
local v = redis.call('GET', KEYS[1])
local cur = redis.call('GET', KEYS[2]) or '0'
if v and cur == ARGV[1] and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return redis.error_reply('FENCED ' .. cur .. ' ' .. (v or ''))
`

// releaseScript deletes the lease if it is still held under ARGV[1]
// ("<epoch>:<token>"). KEYS[1] is the lease key.
const releaseScript = `
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
  redis.call('DEL', KEYS[1])
end
return 0
`

// leaseScript reads the lease value (or ""), its remaining ms (0 when
// there is none) and the epoch key (or "0") at one instant. KEYS[1] is
// the lease key, KEYS[2] the epoch key.
const leaseScript = `
local v = redis.call('GET', KEYS[1]) or ''
local ttl = 0
if v ~= '' then ttl = redis.call('PTTL', KEYS[1]) end
return {v, ttl, redis.call('GET', KEYS[2]) or '0'}
`

// key returns the key of one of the shard's structures: "r", "epoch" or
// "lease".
func (r *Redis) key(shard uint32, what string) string {
	return r.cfg.Prefix + ":{s" + strconv.FormatUint(uint64(shard), 10) + "}:" + what
}

// ttlMillis converts a lease ttl to whole ms, rounding up so that a lease
// never lasts less than asked.
func ttlMillis(ttl time.Duration) (int64, error) {
	if ttl <= 0 {
		return 0, fmt.Errorf("store: lease ttl %v is not positive", ttl)
	}
	return int64((ttl + time.Millisecond - 1) / time.Millisecond), nil
}

// grantValue renders g as the epoch key holds it: "<epoch>:<token>".
func grantValue(g Grant) string {
	return strconv.FormatUint(g.Epoch, 10) + ":" + g.Token.String()
}

// parseEpoch reads the epoch of an epoch key's value: its leading digits
// ("<epoch>:<token>", or an older version's plain counter).
func parseEpoch(v string) (uint64, error) {
	e, _, _ := strings.Cut(v, ":")
	return strconv.ParseUint(e, 10, 64)
}

// epochOf renders the epoch of an epoch key's value for an error message,
// leaving the current holder's token out.
func epochOf(v string) string {
	e, _, _ := strings.Cut(v, ":")
	return e
}

// parseLeaseValue splits "<epoch>:<token>:<owner>".
func parseLeaseValue(v string) (owner string, epoch uint64, ok bool) {
	e, rest, ok := strings.Cut(v, ":")
	if !ok {
		return "", 0, false
	}
	_, owner, ok = strings.Cut(rest, ":")
	if !ok {
		return "", 0, false
	}
	epoch, err := strconv.ParseUint(e, 10, 64)
	return owner, epoch, err == nil
}

// describeLease renders a lease value for an error message, without its
// token.
func describeLease(v string) string {
	if v == "" {
		return "the lease has lapsed"
	}
	if owner, epoch, ok := parseLeaseValue(v); ok {
		return fmt.Sprintf("held by %q under epoch %d", owner, epoch)
	}
	return fmt.Sprintf("held under a lease value of another layout, %q", v)
}

// replyBody returns the text after prefix when err is a Redis error reply
// starting with it.
func replyBody(err error, prefix string) (string, bool) {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return "", false
	}
	return strings.CutPrefix(rerr.Error(), prefix)
}

func isNoScript(err error) bool {
	return errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT")
}

// eval runs a lease script by EVALSHA, loading it first if the server does
// not have it.
func (r *Redis) eval(ctx context.Context, s *redis.Script, keys []string, args ...any) (any, error) {
	res, err := s.EvalSha(ctx, r.client, keys, args...).Result()
	if isNoScript(err) {
		if err := s.Load(ctx, r.client).Err(); err != nil {
			return nil, fmt.Errorf("load script: %w", err)
		}
		res, err = s.EvalSha(ctx, r.client, keys, args...).Result()
	}
	return res, err
}

// Acquire implements Store.
func (r *Redis) Acquire(ctx context.Context, shard uint32, owner string, ttl time.Duration) (Grant, error) {
	if r.closed.Load() {
		return Grant{}, ErrClosed
	}
	if owner == "" {
		return Grant{}, fmt.Errorf("store: acquire shard %d: empty owner", shard)
	}
	ms, err := ttlMillis(ttl)
	if err != nil {
		return Grant{}, err
	}
	token, err := newToken()
	if err != nil {
		return Grant{}, err
	}
	if r.cluster != nil {
		// A shard acquires before it writes, so Partition knows its
		// master by its first Submit.
		r.readPartsIfDue(ctx)
	}
	res, err := r.eval(ctx, r.acquire, []string{r.key(shard, "lease"), r.key(shard, "epoch")}, owner, ms, token.String())
	if body, ok := replyBody(err, heldReply); ok {
		pttl, v, _ := strings.Cut(body, " ")
		left, _ := strconv.ParseInt(pttl, 10, 64)
		return Grant{}, fmt.Errorf("%w: shard %d: %s for another %d ms", ErrLeaseHeld, shard, describeLease(v), left)
	}
	if err != nil {
		return Grant{}, fmt.Errorf("store: acquire shard %d: %w", shard, err)
	}
	e, _ := res.(string)
	epoch, err := strconv.ParseUint(e, 10, 64)
	if err != nil || epoch == 0 {
		return Grant{}, fmt.Errorf("store: acquire shard %d: unexpected reply %v", shard, res)
	}
	return Grant{Epoch: epoch, Token: token}, nil
}

// Renew implements Store.
func (r *Redis) Renew(ctx context.Context, shard uint32, g Grant, ttl time.Duration) error {
	if r.closed.Load() {
		return ErrClosed
	}
	ms, err := ttlMillis(ttl)
	if err != nil {
		return err
	}
	_, err = r.eval(ctx, r.renew, []string{r.key(shard, "lease"), r.key(shard, "epoch")}, grantValue(g), ms)
	if body, ok := replyBody(err, fencedReply); ok {
		cur, v, _ := strings.Cut(body, " ")
		return fmt.Errorf("%w: shard %d: renew under %v; current epoch %s, %s", ErrFenced, shard, g, epochOf(cur), describeLease(v))
	}
	if err != nil {
		return fmt.Errorf("store: renew shard %d: %w", shard, err)
	}
	return nil
}

// Release implements Store.
func (r *Redis) Release(ctx context.Context, shard uint32, g Grant) error {
	if r.closed.Load() {
		return ErrClosed
	}
	if _, err := r.eval(ctx, r.release, []string{r.key(shard, "lease")}, grantValue(g)); err != nil {
		return fmt.Errorf("store: release shard %d: %w", shard, err)
	}
	return nil
}

// Lease implements Store.
func (r *Redis) Lease(ctx context.Context, shard uint32) (Lease, error) {
	if r.closed.Load() {
		return Lease{}, ErrClosed
	}
	res, err := r.eval(ctx, r.lease, []string{r.key(shard, "lease"), r.key(shard, "epoch")})
	if err != nil {
		return Lease{}, fmt.Errorf("store: lease of shard %d: %w", shard, err)
	}
	vals, _ := res.([]any)
	if len(vals) != 3 {
		return Lease{}, fmt.Errorf("store: lease of shard %d: unexpected reply %v", shard, res)
	}
	v, _ := vals[0].(string)
	pttl, _ := vals[1].(int64)
	cur, _ := vals[2].(string)
	epoch, err := parseEpoch(cur)
	if err != nil {
		return Lease{}, fmt.Errorf("store: lease of shard %d: bad epoch %q: %w", shard, cur, err)
	}
	l := Lease{Epoch: epoch}
	if owner, _, ok := parseLeaseValue(v); ok && v != "" {
		l.Owner = owner
		l.TTL = time.Duration(max(pttl, 0)) * time.Millisecond
	}
	return l, nil
}

// Commit implements Store: one pipeline carries one EVALSHA of
// commitScript per batch, so a commit of many shards costs one round trip;
// through a Redis Cluster client there is one pipeline per master, sent
// concurrently, each on one connection of that master. With WaitReplicas
// each pipeline ends with a WAIT. Batches that found the script missing
// (NOSCRIPT) are sent once more after loading it; that is safe because
// every write is idempotent.
func (r *Redis) Commit(ctx context.Context, batches []Batch) error {
	if r.closed.Load() {
		return ErrClosed
	}
	if len(batches) == 0 {
		return nil
	}
	if r.cluster != nil {
		r.readPartsIfDue(ctx)
	}
	cmds := make([]*redis.Cmd, len(batches))
	all := make([]int, len(batches))
	for i := range all {
		all[i] = i
	}
	noScript, err := r.commitRound(ctx, batches, all, cmds)
	if err != nil || len(noScript) == 0 {
		return err
	}
	if err := r.commit.Load(ctx, r.client).Err(); err != nil {
		return fmt.Errorf("store: commit: load script: %w", err)
	}
	retry, err := r.commitRound(ctx, batches, resend(batches, noScript), cmds)
	if err == nil && len(retry) > 0 {
		err = fmt.Errorf("store: commit: shard %d: script still missing after loading it: %w", batches[retry[0]].Shard, redis.ErrNoScript)
	}
	return err
}

// resend returns the batches to send again after those at the indexes
// noScript (ascending) met NOSCRIPT: each of them and every later batch of
// the same shard, in order. A later batch may have been applied already
// (the script was loaded in between by another caller); applying it again
// after the earlier one keeps the shard's writes in order, and since puts
// and deletes are blind writes, the outcome is as if each had been applied
// once, in order.
func resend(batches []Batch, noScript []int) []int {
	first := make(map[uint32]int, len(noScript))
	for _, i := range noScript {
		if _, ok := first[batches[i].Shard]; !ok {
			first[batches[i].Shard] = i
		}
	}
	var again []int
	for j := range batches {
		if f, ok := first[batches[j].Shard]; ok && j >= f {
			again = append(again, j)
		}
	}
	return again
}

// commitRound sends batches[which], in one pipeline or, through a
// cluster client, in one per master, and returns, ascending, the indexes
// of those that met NOSCRIPT.
func (r *Redis) commitRound(ctx context.Context, batches []Batch, which []int, cmds []*redis.Cmd) ([]int, error) {
	if r.cluster == nil {
		return r.commitOnce(ctx, r.client.Pipeline(), batches, which, cmds)
	}
	groups, err := r.byMaster(ctx, batches, which)
	if err != nil {
		return nil, err
	}
	if len(groups) == 1 {
		noScript, err := r.commitOnce(ctx, groups[0].client.Pipeline(), batches, groups[0].which, cmds)
		r.noteClusterErr(err)
		return noScript, err
	}
	type result struct {
		noScript []int
		err      error
	}
	results := make([]result, len(groups))
	var wg sync.WaitGroup
	for g := range groups {
		wg.Go(func() {
			ns, err := r.commitOnce(ctx, groups[g].client.Pipeline(), batches, groups[g].which, cmds)
			results[g] = result{ns, err}
		})
	}
	wg.Wait()
	var noScript []int
	for _, res := range results {
		if res.err != nil {
			r.noteClusterErr(res.err)
			return nil, res.err
		}
		noScript = append(noScript, res.noScript...)
	}
	slices.Sort(noScript)
	return noScript, nil
}

// commitOnce sends batches[which] in pipe, ending with a WAIT when
// WaitReplicas is set, sets their Err, and returns the indexes of those
// that met NOSCRIPT. It fails with ErrReplicas when fewer replicas
// acknowledged the pipeline's writes.
func (r *Redis) commitOnce(ctx context.Context, pipe redis.Pipeliner, batches []Batch, which []int, cmds []*redis.Cmd) (noScript []int, err error) {
	sha := r.commit.Hash()
	for _, i := range which {
		cmd := redis.NewCmd(ctx, r.commitArgs(sha, &batches[i])...)
		cmd.SetFirstKeyPos(3) // EVALSHA sha numkeys key...: route by the shard's first key
		cmds[i] = cmd
		_ = pipe.Process(ctx, cmd)
	}
	var wait *redis.IntCmd
	if r.cfg.WaitReplicas > 0 {
		wait = redis.NewIntCmd(ctx, "wait", r.cfg.WaitReplicas, r.cfg.WaitTimeout.Milliseconds())
		_ = pipe.Process(ctx, wait)
	}
	// Exec's error is the first failed command's; each is examined below.
	_, _ = pipe.Exec(ctx)
	for _, i := range which {
		b := &batches[i]
		err := cmds[i].Err()
		b.Err = nil
		if err == nil {
			continue
		}
		if body, ok := replyBody(err, fencedReply); ok {
			b.Err = fmt.Errorf("%w: shard %d: commit under %v; current epoch %s", ErrFenced, b.Shard, b.Grant, epochOf(body))
			continue
		}
		if isNoScript(err) {
			noScript = append(noScript, i)
			continue
		}
		return nil, fmt.Errorf("store: commit of %d batches: shard %d: %w", len(which), b.Shard, err)
	}
	if wait != nil {
		n, err := wait.Result()
		if err != nil {
			return nil, fmt.Errorf("store: commit of %d batches: WAIT: %w", len(which), err)
		}
		if n < int64(r.cfg.WaitReplicas) {
			return nil, fmt.Errorf("%w: commit of %d batches: %d of %d replicas within %v",
				ErrReplicas, len(which), n, r.cfg.WaitReplicas, r.cfg.WaitTimeout)
		}
	}
	return noScript, nil
}

// commitArgs returns the whole EVALSHA command of one batch, in the layout
// commitScript reads, built in one exactly sized slice.
func (r *Redis) commitArgs(sha string, b *Batch) []any {
	n := 6 // evalsha, sha, numkeys, epoch key, hash key, grant
	for j := 0; j < len(b.Ops); {
		k := runEnd(b.Ops, j)
		n += 2 + k - j // kind, count, fields
		if b.Ops[j].Value != nil {
			n += k - j // values
		}
		j = k
	}
	args := make([]any, 0, n)
	args = append(args, "evalsha", sha, 2, r.key(b.Shard, "epoch"), r.key(b.Shard, "r"), grantValue(b.Grant))
	for j := 0; j < len(b.Ops); {
		k := runEnd(b.Ops, j)
		if b.Ops[j].Value != nil {
			args = append(args, "p", k-j)
			for _, op := range b.Ops[j:k] {
				args = append(args, op.Key, op.Value)
			}
		} else {
			args = append(args, "d", k-j)
			for _, op := range b.Ops[j:k] {
				args = append(args, op.Key)
			}
		}
		j = k
	}
	return args
}

// runEnd returns the end of the run of puts, or of deletes, that starts at
// ops[j]: commitScript applies each run with one HSET or HDEL.
func runEnd(ops []Op, j int) int {
	put := ops[j].Value != nil
	k := j + 1
	for k < len(ops) && (ops[k].Value != nil) == put {
		k++
	}
	return k
}

// Load implements Store: it checks the Grant, then walks the records hash
// with HSCAN, PageSize records at a time. The Grant is checked once, at
// the start: a Load that races a change of owner may complete, but the
// loader's writes are fenced from then on.
func (r *Redis) Load(ctx context.Context, shard uint32, g Grant, fn func(page []Record) error) error {
	if r.closed.Load() {
		return ErrClosed
	}
	cur, err := r.client.Get(ctx, r.key(shard, "epoch")).Result()
	if errors.Is(err, redis.Nil) {
		cur, err = "0", nil
	}
	if err != nil {
		return fmt.Errorf("store: load shard %d: read epoch: %w", shard, err)
	}
	if !g.valid() || cur != grantValue(g) {
		return fmt.Errorf("%w: shard %d: load under %v; current epoch %s", ErrFenced, shard, g, epochOf(cur))
	}
	// A helper goroutine fetches the next page while this one decodes the
	// last: Redis's time to scan and the decoding here then overlap
	// instead of adding up. It exits before Load returns.
	ctx, cancel := context.WithCancel(ctx)
	pages := make(chan scanPage, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.scan(ctx, r.key(shard, "r"), pages)
	}()
	defer func() {
		cancel()
		for range pages { // unblock the scanner, which closes pages
		}
		<-done
	}()
	page := make([]Record, 0, min(r.cfg.PageSize, 16384))
	for p := range pages {
		if p.err != nil {
			return fmt.Errorf("store: load shard %d: hscan: %w", shard, p.err)
		}
		page = page[:0]
		for j := 0; j+1 < len(p.kv); j += 2 {
			page = append(page, Record{})
			if err := page[len(page)-1].UnmarshalBinary(bytesOf(p.kv[j+1])); err != nil {
				return fmt.Errorf("store: load shard %d: record %q: %w", shard, p.kv[j], err)
			}
		}
		if len(page) > 0 {
			if err := fn(page); err != nil {
				return err
			}
		}
	}
	// The scanner also stops, without a word, when ctx ends.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: load shard %d: %w", shard, err)
	}
	return nil
}

// scanPage is one HSCAN reply: fields and values alternating, or the
// error that ended the scan.
type scanPage struct {
	kv  []string
	err error
}

// scan walks the hash with HSCAN, PageSize at a time, sends each reply to
// out and closes it after the last page, an error, or ctx's end.
func (r *Redis) scan(ctx context.Context, hash string, out chan<- scanPage) {
	defer close(out)
	var cursor uint64
	for {
		kv, next, err := r.client.HScan(ctx, hash, cursor, "", int64(r.cfg.PageSize)).Result()
		select {
		case out <- scanPage{kv: kv, err: err}:
		case <-ctx.Done():
			return
		}
		if err != nil || next == 0 {
			return
		}
		cursor = next
	}
}

// bytesOf views s as bytes without copying it. UnmarshalBinary neither
// modifies nor keeps its input, so the view is safe there, and it saves a
// copy of every record on the load path.
func bytesOf(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// Time implements Timekeeper with Redis TIME. On a Redis Cluster it asks
// one master, whose clock the others' should agree with.
func (r *Redis) Time(ctx context.Context) (time.Time, error) {
	if r.closed.Load() {
		return time.Time{}, ErrClosed
	}
	t, err := r.client.Time(ctx).Result()
	if err != nil {
		return time.Time{}, fmt.Errorf("store: TIME: %w", err)
	}
	return t, nil
}

// Close implements Store. It does not close the client, which is the
// caller's.
func (r *Redis) Close() error {
	r.closed.Store(true)
	return nil
}

// ClaimShards implements Store. The count lives in "<prefix>:shards".
func (r *Redis) ClaimShards(ctx context.Context, shards uint32) error {
	if r.closed.Load() {
		return ErrClosed
	}
	if shards < 1 {
		return fmt.Errorf("store: claim shards: count must be at least 1")
	}
	key := r.cfg.Prefix + ":shards"
	set, err := r.client.SetNX(ctx, key, shards, 0).Result()
	if err != nil {
		return fmt.Errorf("store: record shard count: %w", err)
	}
	if set {
		return nil
	}
	v, err := r.client.Get(ctx, key).Result()
	if err != nil {
		return fmt.Errorf("store: read shard count: %w", err)
	}
	stored, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return fmt.Errorf("%w: %s holds %q, not a shard count", ErrCorrupt, key, v)
	}
	if uint32(stored) != shards {
		return shardCountError(uint32(stored), shards)
	}
	return nil
}
