// Package store owns the durable state of shards: each shard's timer
// records and its lease, the fencing epoch that guards every write, and the
// group commit that carries many shards' writes to the store in one round
// trip.
//
// Two implementations share one contract and one test suite: Redis (a
// cluster's store; any redis.UniversalClient, so standalone, Sentinel and
// Cluster deployments all work) and Embedded (the single-node default, a
// Pebble database on local disk with synced batches).
//
// # Invariants
//
//   - Every Acquire hands out a Grant: the shard's new epoch and a random
//     Token (128 bits from crypto/rand) that no other Acquire has.
//   - A shard's epoch only grows. Acquire moves it past every epoch the
//     shard had before, whoever calls it, so two successive owners never
//     share an epoch, even across restarts of the store's process (see
//     Redis for a store that may lose acknowledged writes).
//   - Every write names the Grant it was made under and is applied only if
//     that is still the shard's current Grant, epoch and token both;
//     otherwise it is refused with ErrFenced and changes nothing. The zero
//     Grant is never current: a writer must have acquired the shard. A
//     node that lost its lease can therefore never overwrite, delete or
//     resurrect what the new owner has, and since the token is checked
//     too, not even when a store that lost writes hands the new owner an
//     epoch it had handed out before.
//   - A Commit that returns nil with a nil Batch.Err has made that batch
//     durable: in Redis (as durable as the server's persistence settings
//     make it) or fsynced to the embedded store's disk.
//   - The writes of one Batch are applied in order and, per shard, atomically
//     with the epoch check.
//
// The package knows records only as encoded bytes under a key; what a timer
// means, when it fires and who receives it belong to package shard. Its
// goroutines are the Committer's lanes and, during a Redis Load, one that
// fetches the next page while the last is decoded; each ends before the
// call that owns it returns. It reads the clock only to measure commit
// latency and, in the embedded store, to expire leases.
package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"
)

var (
	// ErrFenced means the Grant a write or lease operation named is no
	// longer the shard's current one (its epoch or its token differs), or
	// the lease is held under another Grant: another owner has the shard
	// now. Nothing was changed.
	ErrFenced = errors.New("store: fenced: the shard's epoch has moved on")
	// ErrLeaseHeld means Acquire found the shard's lease held by another
	// owner that has not let it lapse.
	ErrLeaseHeld = errors.New("store: lease held by another owner")
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("store: closed")
	// ErrCorrupt is wrapped when a stored record cannot be decoded.
	ErrCorrupt = errors.New("store: corrupt record")
	// ErrInvalidConfig is wrapped by configuration errors, which name the
	// bad field.
	ErrInvalidConfig = errors.New("store: invalid config")
	// ErrShardCount means a node asked for a shard count other than the
	// one the store was created with. Timers are placed by hashing modulo
	// the count, so a store serves one count for its whole life.
	ErrShardCount = errors.New("store: shard count differs from the stored one")
	// ErrUnavailable means the group commit gave writes up because the
	// store kept failing (CommitterConfig.GiveUpAfter); whether they were
	// applied is unknown.
	ErrUnavailable = errors.New("store: unavailable")
	// ErrOverloaded means the group commit holds as many writes as it may
	// (CommitterConfig.MaxQueueOps) and refused to take more. Nothing was
	// queued.
	ErrOverloaded = errors.New("store: group commit queue full")
	// ErrReplicas means fewer replicas than RedisConfig.WaitReplicas
	// acknowledged a commit within WaitTimeout. The writes are applied on
	// the master but may be lost in a failover; the commit is retried.
	ErrReplicas = errors.New("store: too few replicas acknowledged the commit")
)

// Store is the durable home of shards' records and leases. All methods may
// be called concurrently from many goroutines.
type Store interface {
	// Acquire takes the lease of shard for owner for ttl and returns its
	// Grant: the shard's new epoch, which is greater than every epoch the
	// shard had before, and a new token. It fails with ErrLeaseHeld when
	// another owner holds an unexpired lease. An owner that already holds
	// the lease gets a new Grant, and the old one is fenced from then on.
	// Owners that must not take over each other's leases (two processes)
	// must therefore use different owner strings.
	Acquire(ctx context.Context, shard uint32, owner string, ttl time.Duration) (Grant, error)

	// Renew extends the lease held under g to ttl from now. It fails with
	// ErrFenced when the lease has lapsed, or is held under another Grant,
	// or g is no longer the shard's current Grant.
	Renew(ctx context.Context, shard uint32, g Grant, ttl time.Duration) error

	// Release gives the lease held under g back so that another owner can
	// acquire it at once. Releasing a lease that has already lapsed or
	// moved on is not an error; it changes nothing.
	Release(ctx context.Context, shard uint32, g Grant) error

	// Lease reports who holds the shard's lease now. A shard with no
	// unexpired lease has Owner "" and the epoch of its last owner.
	Lease(ctx context.Context, shard uint32) (Lease, error)

	// Commit applies every batch. It returns a non-nil error when the
	// round trip as a whole failed; then nothing is known about any
	// batch and the caller retries them all (every write is idempotent).
	// Otherwise each batch's Err is nil (durable) or wraps ErrFenced (not
	// applied at all).
	Commit(ctx context.Context, batches []Batch) error

	// Load streams every record of the shard to fn, a page at a time, in no
	// particular order. It fails with ErrFenced when g is not the shard's
	// current Grant. The page slice is reused after fn returns; the
	// records' strings and payloads are not and may be kept. A record may
	// be passed twice (a Redis scan can repeat keys); the later copy is
	// the same record.
	Load(ctx context.Context, shard uint32, g Grant, fn func(page []Record) error) error

	// ClaimShards records shards as the deployment's shard count when the
	// store has none yet, and fails with ErrShardCount, naming both
	// counts, when it holds another. Every node calls it before acquiring
	// any shard. shards must be at least 1.
	ClaimShards(ctx context.Context, shards uint32) error

	// Close releases the store's resources. It is safe to call twice.
	Close() error
}

// Timekeeper is a Store with a clock of its own, which its nodes share
// and by which it expires leases: a node's clock (shard.SteadyClock) asks
// it to settle a step of the node's wall clock. The Redis store is one;
// the embedded store, on the node's own machine, is not.
type Timekeeper interface {
	// Time returns the store's current time.
	Time(ctx context.Context) (time.Time, error)
}

// shardCountError is the ErrShardCount failure of ClaimShards.
func shardCountError(stored, asked uint32) error {
	return fmt.Errorf("%w: the store holds %d shards and this node was started with %d; "+
		"start it with the stored count (the shard count is fixed when a deployment is created)", ErrShardCount, stored, asked)
}

// Lease is a snapshot of a shard's lease.
type Lease struct {
	// Owner holds the lease, or "" when the lease has lapsed or was
	// released.
	Owner string
	// Epoch is the shard's current epoch: the holder's, or the last
	// holder's when Owner is "". Zero when the shard was never acquired.
	Epoch uint64
	// TTL is what remains of the lease; zero when Owner is "".
	TTL time.Duration
}

// Grant is one Acquire of a shard's lease: what its holder names in every
// later call, and what the store fences writes by.
type Grant struct {
	// Epoch is the shard's epoch from this Acquire on; never 0.
	Epoch uint64
	// Token is this Acquire's own random token; never zero.
	Token Token
}

// String renders g for logs and errors without its token, which is the
// holder's secret.
func (g Grant) String() string {
	return "epoch " + strconv.FormatUint(g.Epoch, 10)
}

// valid reports whether g can be a current Grant: the zero Grant, and
// any with epoch 0 or the zero token, never is.
func (g Grant) valid() bool { return g.Epoch != 0 && g.Token != Token{} }

// Token is the random part of a Grant: 128 bits from crypto/rand, so two
// Acquires never share one, whatever the store forgot in between.
type Token [16]byte

// newToken returns a fresh, non-zero Token.
func newToken() (Token, error) {
	var t Token
	for t == (Token{}) {
		if _, err := rand.Read(t[:]); err != nil {
			return Token{}, fmt.Errorf("store: lease token: %w", err)
		}
	}
	return t, nil
}

// String returns t in hex, as the Redis store keeps it.
func (t Token) String() string { return hex.EncodeToString(t[:]) }

// Batch is one shard's writes in one Commit.
type Batch struct {
	Shard uint32
	// Grant is the one the writes were made under.
	Grant Grant
	// Ops are applied in order.
	Ops []Op
	// Err is set by Commit: nil when the batch is durable, wrapping
	// ErrFenced when it was refused.
	Err error
}

// Op is one write: it stores Value under Key, or deletes Key when Value is
// nil.
type Op struct {
	// Key identifies the timer within its shard: see Key.
	Key string
	// Value is an encoded Record (Record.AppendBinary), or nil to delete.
	Value []byte
}

// Key returns the key of a timer within its shard: namespace, a zero byte,
// id. Namespaces cannot contain a zero byte, so keys never collide.
func Key(namespace, id string) string {
	return namespace + "\x00" + id
}
