package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Embedded is the Store of a single node: every shard's records and epochs
// in one Pebble database in a local directory, which it owns exclusively
// (Pebble's directory lock keeps a second store, in this process or
// another, out).
//
// # Key layout
//
//	'r' shard(4 bytes, big-endian) Key(namespace, id)  an encoded Record
//	'e' shard(4 bytes, big-endian)                     the shard's epoch, uint64 big-endian
//
// The big-endian shard makes each shard's records one contiguous key
// range, which Load iterates.
//
// # Invariants
//
//   - Epochs are persisted with a synced write before Acquire returns, so
//     they keep growing across restarts. The in-memory copy in epochs is
//     changed only after that write succeeded, so it never runs ahead of
//     the disk.
//   - Tokens live only in memory (tokens): a reopened store knows none, so
//     no Grant handed out before the reopen is current; the next Acquire
//     makes one that is.
//   - Leases live only in memory: one process owns the directory, so the
//     owners that compete for a lease are all inside it (for example two
//     shard instances in a test). A restart drops every lease, which is
//     right because their holders died with the process; the persisted
//     epochs still fence anything they had queued.
//   - Commit checks epochs and writes its Pebble batch under mu's read
//     lock; Acquire changes an epoch under the write lock. So no Acquire
//     can fall between a batch's epoch check and its write.
//   - Every Commit is one Pebble batch committed with pebble.Sync: one
//     fsync of the WAL makes all of its batches durable at once.
//
// Embedded is safe for concurrent use. Concurrent Commits proceed in
// parallel (Pebble merges their WAL syncs); Acquire, Renew and Release
// wait for Commits in flight.
type Embedded struct {
	cfg  EmbeddedConfig
	db   *pebble.DB
	lock *pebble.Lock

	// loads counts Loads that hold an iterator without holding mu; Close
	// waits for them before closing the database. Add is called only
	// under mu with closed false, so every Add happens before Close's
	// Wait.
	loads sync.WaitGroup

	// mu guards the fields below. Commit, Load's checks and Lease take it
	// for reading; Acquire, Renew, Release and Close take it for writing.
	mu     sync.RWMutex
	closed bool
	// epochs is the current epoch of every shard ever acquired, mirroring
	// the 'e' keys on disk. A missing shard has epoch 0.
	epochs map[uint32]uint64
	// tokens is the token of each shard's current epoch, for the shards
	// acquired since the store was opened. Invariant: a Grant is current
	// iff its epoch is epochs[shard] and its token tokens[shard].
	tokens map[uint32]Token
	// leases holds the lease of every shard acquired and not released; an
	// entry whose expiry has passed is a lapsed lease.
	leases map[uint32]embeddedLease
}

var _ Store = (*Embedded)(nil)

// embeddedLease is a lease held in memory.
type embeddedLease struct {
	owner   string
	grant   Grant
	expires time.Time // by EmbeddedConfig.Now
}

// EmbeddedConfig configures an Embedded store. The zero value is not valid;
// start from DefaultEmbeddedConfig.
type EmbeddedConfig struct {
	// Dir is the database directory; required. OpenEmbedded creates it
	// (and its parents) if needed. One store at a time may use it.
	Dir string
	// PageSize is how many records one call of Load's fn receives, 1 to
	// 1,000,000. Default 1,000: the page is a buffer of decoded records
	// (~200 B of memory each at typical sizes), and at 1,000 per page the
	// per-call overhead of fn is already negligible next to decoding.
	PageSize int
	// Now is the clock that leases expire by. Default (and nil) time.Now;
	// tests inject a clock they advance instead of sleeping.
	Now func() time.Time
	// Logger receives Pebble's log messages. Default (and nil): discard.
	Logger *slog.Logger
}

// DefaultEmbeddedConfig returns the defaults documented on EmbeddedConfig
// for a database in dir.
func DefaultEmbeddedConfig(dir string) EmbeddedConfig {
	return EmbeddedConfig{Dir: dir, PageSize: 1000, Now: time.Now}
}

// maxEmbeddedPageSize bounds PageSize: a page is held in memory whole.
const maxEmbeddedPageSize = 1_000_000

// Validate reports the first invalid field. The error wraps
// ErrInvalidConfig.
func (c EmbeddedConfig) Validate() error {
	switch {
	case c.Dir == "":
		return fmt.Errorf("%w: EmbeddedConfig.Dir is empty", ErrInvalidConfig)
	case c.PageSize < 1 || c.PageSize > maxEmbeddedPageSize:
		return fmt.Errorf("%w: EmbeddedConfig.PageSize %d is outside [1, %d]", ErrInvalidConfig, c.PageSize, maxEmbeddedPageSize)
	}
	return nil
}

// Pebble tuning for timerd's workload: many small writes (~40 B keys,
// ~100 B values), each Commit synced, and whole-shard scans on load.
const (
	// embeddedMemTableSize is Pebble's memtable size in bytes (Pebble's
	// default is 4 MiB). Every flush of a memtable adds an L0 file whose
	// keys, being random, overlap all others; a scan merges them all
	// until compaction catches up. Measured on a 2-core VM, iterating 1M
	// records right after writing them took ~0.64 s with 4 MiB memtables
	// and ~0.22 s with 64 MiB (commit throughput unchanged). Memtables
	// start at 256 KiB and grow to this size, so a small store stays
	// small; at most MemTableStopWritesThreshold (Pebble default 2) of
	// them are held, so up to 128 MiB.
	embeddedMemTableSize = 64 << 20
)

// OpenEmbedded opens, or creates, the store in cfg.Dir.
func OpenEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("store: embedded: cannot create directory %q: %w", cfg.Dir, err)
	}
	// Probe writability first, so that a read-only directory is reported
	// as such rather than as a failure to take the lock.
	probe, err := os.CreateTemp(cfg.Dir, ".probe-*")
	if err != nil {
		return nil, fmt.Errorf("store: embedded: directory %q is not writable: %w", cfg.Dir, err)
	}
	_ = probe.Close()
	_ = os.Remove(probe.Name())

	// Taking the lock ourselves, before Open, tells a directory in use
	// apart from every other reason Open may fail.
	lock, err := pebble.LockDirectory(cfg.Dir, vfs.Default)
	if err != nil {
		return nil, fmt.Errorf("store: embedded: directory %q is in use by another store (one process, and one store, per directory): %w", cfg.Dir, err)
	}
	opts := &pebble.Options{
		FS:           vfs.Default,
		Lock:         lock,
		Logger:       pebbleLogger{l: cfg.Logger},
		MemTableSize: embeddedMemTableSize,
		// The WAL stays on (the default): it is what makes a synced
		// Commit durable with one sequential write and one fsync, and
		// WALMinSyncInterval stays 0 because batching already happens
		// above, in the Committer, and a sync delay would only add
		// latency. Bloom filters stay off (the default): the store never
		// looks records up by key, it only scans shards.
	}
	db, err := pebble.Open(cfg.Dir, opts)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("store: embedded: open %q: %w", cfg.Dir, err), lock.Close())
	}
	e := &Embedded{
		cfg:    cfg,
		db:     db,
		lock:   lock,
		epochs: map[uint32]uint64{},
		tokens: map[uint32]Token{},
		leases: map[uint32]embeddedLease{},
	}
	if err := e.readEpochs(); err != nil {
		return nil, errors.Join(err, db.Close(), lock.Close())
	}
	return e, nil
}

// readEpochs fills e.epochs from the 'e' keys. It runs before e is shared.
func (e *Embedded) readEpochs() error {
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'e'}, UpperBound: []byte{'e' + 1}})
	if err != nil {
		return fmt.Errorf("store: embedded: read epochs: %w", err)
	}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		v, err := it.ValueAndErr()
		if err != nil {
			return errors.Join(fmt.Errorf("store: embedded: read epoch %q: %w", k, err), it.Close())
		}
		if len(k) != 5 || len(v) != 8 {
			return errors.Join(fmt.Errorf("%w: embedded: epoch key %q (%d bytes) holds %d bytes; want a 5-byte key holding 8", ErrCorrupt, k, len(k), len(v)), it.Close())
		}
		e.epochs[binary.BigEndian.Uint32(k[1:])] = binary.BigEndian.Uint64(v)
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("store: embedded: read epochs: %w", err)
	}
	return nil
}

// epochKey returns the key of shard's epoch.
func epochKey(shard uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{'e'}, shard)
}

// appendRecordKey appends the key of a record of shard to b.
func appendRecordKey(b []byte, shard uint32, key string) []byte {
	b = append(b, 'r')
	b = binary.BigEndian.AppendUint32(b, shard)
	return append(b, key...)
}

// shardBounds returns the key range [lower, upper) of shard's records.
func shardBounds(shard uint32) (lower, upper []byte) {
	lower = appendRecordKey(nil, shard, "")
	if shard == math.MaxUint32 {
		return lower, []byte{'r' + 1}
	}
	return lower, appendRecordKey(nil, shard+1, "")
}

// checkLocked returns ErrClosed after Close. mu must be held (read or
// write).
func (e *Embedded) checkLocked() error {
	if e.closed {
		return ErrClosed
	}
	return nil
}

// leaseLocked returns shard's lease if it is held and has not lapsed at
// now. mu must be held.
func (e *Embedded) leaseLocked(shard uint32, now time.Time) (embeddedLease, bool) {
	l, ok := e.leases[shard]
	if !ok || !now.Before(l.expires) {
		return embeddedLease{}, false
	}
	return l, true
}

// Acquire implements Store. The new epoch is on disk (synced) before it
// is returned.
func (e *Embedded) Acquire(ctx context.Context, shard uint32, owner string, ttl time.Duration) (Grant, error) {
	if err := ctx.Err(); err != nil {
		return Grant{}, err
	}
	if owner == "" {
		return Grant{}, fmt.Errorf("store: acquire shard %d: empty owner", shard)
	}
	if ttl <= 0 {
		return Grant{}, fmt.Errorf("store: acquire shard %d: lease ttl %v is not positive", shard, ttl)
	}
	token, err := newToken()
	if err != nil {
		return Grant{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.checkLocked(); err != nil {
		return Grant{}, err
	}
	now := e.cfg.Now()
	if l, ok := e.leaseLocked(shard, now); ok && l.owner != owner {
		return Grant{}, fmt.Errorf("%w: shard %d: held by %q under epoch %d for another %v", ErrLeaseHeld, shard, l.owner, l.grant.Epoch, l.expires.Sub(now))
	}
	g := Grant{Epoch: e.epochs[shard] + 1, Token: token}
	if err := e.db.Set(epochKey(shard), binary.BigEndian.AppendUint64(nil, g.Epoch), pebble.Sync); err != nil {
		return Grant{}, fmt.Errorf("store: acquire shard %d: persist epoch %d: %w", shard, g.Epoch, err)
	}
	e.epochs[shard] = g.Epoch
	e.tokens[shard] = g.Token
	e.leases[shard] = embeddedLease{owner: owner, grant: g, expires: now.Add(ttl)}
	return g, nil
}

// currentLocked reports whether g is shard's current Grant. mu must be
// held.
func (e *Embedded) currentLocked(shard uint32, g Grant) bool {
	return g.valid() && g.Epoch == e.epochs[shard] && g.Token == e.tokens[shard]
}

// Renew implements Store.
func (e *Embedded) Renew(ctx context.Context, shard uint32, g Grant, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if ttl <= 0 {
		return fmt.Errorf("store: renew shard %d: lease ttl %v is not positive", shard, ttl)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.checkLocked(); err != nil {
		return err
	}
	now := e.cfg.Now()
	l, ok := e.leaseLocked(shard, now)
	if !ok || l.grant != g || !e.currentLocked(shard, g) {
		held := "the lease has lapsed"
		if ok {
			held = fmt.Sprintf("held by %q under epoch %d", l.owner, l.grant.Epoch)
		}
		return fmt.Errorf("%w: shard %d: renew under %v; current epoch %d, %s", ErrFenced, shard, g, e.epochs[shard], held)
	}
	l.expires = now.Add(ttl)
	e.leases[shard] = l
	return nil
}

// Release implements Store. The epoch stays: the next owner's Acquire
// moves it on.
func (e *Embedded) Release(ctx context.Context, shard uint32, g Grant) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.checkLocked(); err != nil {
		return err
	}
	if l, ok := e.leases[shard]; ok && l.grant == g {
		delete(e.leases, shard)
	}
	return nil
}

// Lease implements Store.
func (e *Embedded) Lease(ctx context.Context, shard uint32) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if err := e.checkLocked(); err != nil {
		return Lease{}, err
	}
	now := e.cfg.Now()
	l := Lease{Epoch: e.epochs[shard]}
	if h, ok := e.leaseLocked(shard, now); ok {
		l.Owner, l.TTL = h.owner, h.expires.Sub(now)
	}
	return l, nil
}

// Commit implements Store: every batch whose epoch is current goes into
// one Pebble batch, committed with one fsync.
func (e *Embedded) Commit(ctx context.Context, batches []Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if err := e.checkLocked(); err != nil {
		return err
	}
	pb := e.db.NewBatch()
	defer pb.Close()
	var key []byte
	for i := range batches {
		b := &batches[i]
		if !e.currentLocked(b.Shard, b.Grant) {
			b.Err = fmt.Errorf("%w: shard %d: commit under %v; current epoch %d", ErrFenced, b.Shard, b.Grant, e.epochs[b.Shard])
			continue
		}
		// Pebble gives each entry of a batch its own sequence number, in
		// order, so a later op on the same key wins.
		for _, op := range b.Ops {
			key = appendRecordKey(key[:0], b.Shard, op.Key)
			var err error
			if op.Value == nil {
				err = pb.Delete(key, nil)
			} else {
				err = pb.Set(key, op.Value, nil)
			}
			if err != nil {
				return fmt.Errorf("store: commit: shard %d: %w", b.Shard, err)
			}
		}
	}
	if !pb.Empty() {
		if err := pb.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("store: commit of %d batches: %w", len(batches), err)
		}
	}
	for i := range batches {
		if b := &batches[i]; e.currentLocked(b.Shard, b.Grant) {
			b.Err = nil
		}
	}
	return nil
}

// Load implements Store. It reads a consistent snapshot of the shard as of
// the call, in key order, and stops with ErrFenced if the shard's epoch
// moves on (or ErrClosed if the store closes) between two pages.
func (e *Embedded) Load(ctx context.Context, shard uint32, g Grant, fn func(page []Record) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	it, err := e.startLoad(shard, g)
	if err != nil {
		return err
	}
	// fn runs without mu held: it may call back into the store, and a
	// read lock held across it would deadlock against a waiting writer.
	defer e.loads.Done()
	defer it.Close()

	page := make([]Record, 0, min(e.cfg.PageSize, 16384))
	flush := func() error {
		if err := fn(page); err != nil {
			return err
		}
		page = page[:0]
		if err := ctx.Err(); err != nil {
			return err
		}
		return e.loadCheck(shard, g)
	}
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("store: load shard %d: key %q: %w", shard, it.Key(), err)
		}
		page = append(page, Record{})
		r := &page[len(page)-1]
		k := it.Key()[5:] // past 'r' and the shard
		if err := r.UnmarshalBinary(v); err != nil {
			return fmt.Errorf("store: load shard %d: record %q: %w", shard, k, err)
		}
		if !keyMatches(k, r) {
			return fmt.Errorf("%w: load shard %d: record %q holds %q", ErrCorrupt, shard, k, Key(r.Namespace, r.ID))
		}
		if len(page) == e.cfg.PageSize {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("store: load shard %d: %w", shard, err)
	}
	if len(page) > 0 {
		return fn(page)
	}
	return nil
}

// startLoad checks the epoch and opens an iterator over the shard,
// registering it in e.loads. The caller closes the iterator and calls
// e.loads.Done.
func (e *Embedded) startLoad(shard uint32, g Grant) (*pebble.Iterator, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if err := e.loadCheckLocked(shard, g); err != nil {
		return nil, err
	}
	lower, upper := shardBounds(shard)
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, fmt.Errorf("store: load shard %d: %w", shard, err)
	}
	e.loads.Add(1)
	return it, nil
}

func (e *Embedded) loadCheck(shard uint32, g Grant) error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.loadCheckLocked(shard, g)
}

// loadCheckLocked returns ErrClosed or ErrFenced if a Load may not go
// on. mu must be held.
func (e *Embedded) loadCheckLocked(shard uint32, g Grant) error {
	if err := e.checkLocked(); err != nil {
		return err
	}
	if !e.currentLocked(shard, g) {
		return fmt.Errorf("%w: shard %d: load under %v; current epoch %d", ErrFenced, shard, g, e.epochs[shard])
	}
	return nil
}

// keyMatches reports whether k is Key(r.Namespace, r.ID), without
// building that string.
func keyMatches(k []byte, r *Record) bool {
	n := len(r.Namespace)
	return len(k) == n+1+len(r.ID) &&
		string(k[:n]) == r.Namespace && k[n] == 0 && string(k[n+1:]) == r.ID
}

// Close implements Store. It waits for Commits in flight and for Loads to
// reach their next page (a Load blocked inside fn holds Close up), then
// flushes the memtable, so that the next open need not replay the WAL,
// and closes the database and its lock. Later calls return nil.
func (e *Embedded) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	e.loads.Wait()

	var flushErr error
	if err := e.db.Flush(); err != nil {
		flushErr = fmt.Errorf("store: embedded: flush: %w", err)
	}
	var closeErr error
	if err := e.db.Close(); err != nil {
		closeErr = fmt.Errorf("store: embedded: close: %w", err)
	}
	// The database released its reference to the lock; this releases
	// ours and with it the directory.
	return errors.Join(flushErr, closeErr, e.lock.Close())
}

// pebbleLogger routes Pebble's log messages to a slog.Logger (or nowhere
// when l is nil), never to the process's global logger.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) log(level slog.Level, format string, args []any) {
	if p.l == nil || !p.l.Enabled(context.Background(), level) {
		return
	}
	p.l.Log(context.Background(), level, fmt.Sprintf(format, args...), "component", "pebble")
}

// Infof logs at debug: Pebble's information (the WALs it replays, its
// compactions) is about its own workings, not the node's.
func (p pebbleLogger) Infof(format string, args ...any) { p.log(slog.LevelDebug, format, args) }

func (p pebbleLogger) Errorf(format string, args ...any) { p.log(slog.LevelError, format, args) }

// Fatalf logs and panics. Pebble calls it on states it cannot continue
// from (its own default logger exits the process) and does not expect it
// to return; a panic at least unwinds with a stack trace.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.log(slog.LevelError, format, args)
	panic(fmt.Sprintf("pebble: "+format, args...))
}

// shardsKey holds the deployment's shard count, a big-endian uint32.
var shardsKey = []byte("cshards")

// ClaimShards implements Store.
func (e *Embedded) ClaimShards(ctx context.Context, shards uint32) error {
	if shards < 1 {
		return fmt.Errorf("store: claim shards: count must be at least 1")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.checkLocked(); err != nil {
		return err
	}
	v, closer, err := e.db.Get(shardsKey)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		if err := e.db.Set(shardsKey, binary.BigEndian.AppendUint32(nil, shards), pebble.Sync); err != nil {
			return fmt.Errorf("store: embedded: record shard count: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("store: embedded: read shard count: %w", err)
	}
	defer closer.Close()
	if len(v) != 4 {
		return fmt.Errorf("%w: embedded: shard count holds %d bytes; want 4", ErrCorrupt, len(v))
	}
	if stored := binary.BigEndian.Uint32(v); stored != shards {
		return shardCountError(stored, shards)
	}
	return nil
}
