package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// embeddedSuitePageSize is the Load page of the suite's embedded stores:
// small, so that paging is exercised.
const embeddedSuitePageSize = 7

// TestEmbedded runs the conformance suite, each subtest on a database of
// its own, on the real clock (the suite waits for short leases to lapse).
func TestEmbedded(t *testing.T) {
	testStore(t, func(t *testing.T) Store {
		cfg := DefaultEmbeddedConfig(t.TempDir())
		cfg.PageSize = embeddedSuitePageSize
		return openTestEmbedded(t, cfg)
	})
}

// openTestEmbedded opens cfg and closes the store when the test ends.
func openTestEmbedded(t testing.TB, cfg EmbeddedConfig) *Embedded {
	t.Helper()
	s, err := OpenEmbedded(cfg)
	if err != nil {
		t.Fatalf("OpenEmbedded(%q): %v", cfg.Dir, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// fakeClock is a clock that moves only when told, so that leases lapse
// exactly when a test says.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// openClocked opens a store in dir whose leases expire by clock.
func openClocked(t *testing.T, dir string, clock *fakeClock) *Embedded {
	t.Helper()
	cfg := DefaultEmbeddedConfig(dir)
	cfg.PageSize = embeddedSuitePageSize
	cfg.Now = clock.Now
	return openTestEmbedded(t, cfg)
}

func TestEmbeddedConfig(t *testing.T) {
	dir := t.TempDir()
	if err := DefaultEmbeddedConfig(dir).Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	tests := []struct {
		name  string
		edit  func(*EmbeddedConfig)
		field string
	}{
		{"empty dir", func(c *EmbeddedConfig) { c.Dir = "" }, "Dir"},
		{"zero page", func(c *EmbeddedConfig) { c.PageSize = 0 }, "PageSize"},
		{"negative page", func(c *EmbeddedConfig) { c.PageSize = -1 }, "PageSize"},
		{"huge page", func(c *EmbeddedConfig) { c.PageSize = maxEmbeddedPageSize + 1 }, "PageSize"},
	}
	for _, tt := range tests {
		cfg := DefaultEmbeddedConfig(dir)
		tt.edit(&cfg)
		err := cfg.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "EmbeddedConfig."+tt.field) {
			t.Errorf("%s: Validate = %v, want ErrInvalidConfig naming %s", tt.name, err, tt.field)
		}
		if _, err := OpenEmbedded(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: OpenEmbedded = %v, want ErrInvalidConfig", tt.name, err)
		}
	}
	// A nil clock means time.Now.
	cfg := DefaultEmbeddedConfig(dir)
	cfg.Now = nil
	s := openTestEmbedded(t, cfg)
	if _, err := s.Acquire(t.Context(), 0, "a", time.Minute); err != nil {
		t.Fatalf("Acquire with the default clock: %v", err)
	}
	if l := mustLease(t, s, 0); l.Owner != "a" || l.TTL <= 0 || l.TTL > time.Minute {
		t.Fatalf("Lease with the default clock = %+v", l)
	}
}

// TestEmbeddedLogger: Pebble's messages go to the configured logger, its
// information at debug.
func TestEmbeddedLogger(t *testing.T) {
	for _, tc := range []struct {
		level slog.Level
		want  bool
	}{{slog.LevelDebug, true}, {slog.LevelInfo, false}} {
		var buf bytes.Buffer
		cfg := DefaultEmbeddedConfig(t.TempDir())
		cfg.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: tc.level}))
		s, err := OpenEmbedded(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		// Pebble reports the WALs it finds when it opens a database.
		out := buf.String()
		if got := strings.Contains(out, "component=pebble") && strings.Contains(out, "WAL"); got != tc.want {
			t.Errorf("at %v the logger got %q; want Pebble's messages: %v", tc.level, out, tc.want)
		}
	}
}

// TestEmbeddedEpochsSurviveReopen: epochs are on disk, so a restarted
// process never hands out an epoch again; leases are not, so their
// holders (gone with the process) hold nothing.
func TestEmbeddedEpochsSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	s := openClocked(t, dir, clock)
	var last Grant
	for range 3 {
		last = mustAcquire(t, s, 1, "a", time.Hour)
	}
	other := mustAcquire(t, s, math.MaxUint32, "a", time.Hour)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = openClocked(t, dir, clock)
	if l := mustLease(t, s, 1); l != (Lease{Epoch: last.Epoch}) {
		t.Fatalf("Lease after reopen = %+v, want %+v", l, Lease{Epoch: last.Epoch})
	}
	if l := mustLease(t, s, math.MaxUint32); l != (Lease{Epoch: other.Epoch}) {
		t.Fatalf("Lease of the last shard after reopen = %+v, want %+v", l, Lease{Epoch: other.Epoch})
	}
	// The tokens died with the process: a grant from before is current
	// no more, though its epoch still is.
	b := []Batch{{Shard: 1, Grant: last, Ops: []Op{put(rec("n", "ghost"))}}}
	if err := s.Commit(t.Context(), b); err != nil || !errors.Is(b[0].Err, ErrFenced) {
		t.Fatalf("Commit after reopen under the grant from before: %v, %v; want ErrFenced", err, b[0].Err)
	}
	if l := mustLease(t, s, 2); l != (Lease{}) {
		t.Fatalf("Lease of a shard never acquired = %+v, want the zero Lease", l)
	}
	// Another owner takes the shard at once: the old lease died with the
	// process.
	if e := mustAcquire(t, s, 1, "b", time.Hour); e.Epoch != last.Epoch+1 {
		t.Fatalf("epoch after reopen = %d, want %d", e.Epoch, last.Epoch+1)
	}
}

// TestEmbeddedLeaseClock walks a lease through its life on an injected
// clock, so that lapses are exact and nothing sleeps.
func TestEmbeddedLeaseClock(t *testing.T) {
	ctx := t.Context()
	clock := newFakeClock()
	s := openClocked(t, t.TempDir(), clock)
	const ttl = 10 * time.Second

	e1 := mustAcquire(t, s, 0, "a", ttl)
	if _, err := s.Acquire(ctx, 0, "b", ttl); !errors.Is(err, ErrLeaseHeld) || !strings.Contains(err.Error(), `"a"`) {
		t.Fatalf("Acquire by b while a holds: %v, want ErrLeaseHeld naming a", err)
	}
	clock.Advance(9 * time.Second)
	if l := mustLease(t, s, 0); l != (Lease{Owner: "a", Epoch: e1.Epoch, TTL: time.Second}) {
		t.Fatalf("Lease 9s into a 10s lease = %+v", l)
	}
	if err := s.Renew(ctx, 0, e1, ttl); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	clock.Advance(9 * time.Second) // 18s after Acquire: alive only thanks to Renew
	if _, err := s.Acquire(ctx, 0, "b", ttl); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("Acquire by b of a renewed lease: %v, want ErrLeaseHeld", err)
	}
	clock.Advance(time.Second) // expiry is exclusive: the lease lapses at exactly its ttl
	if l := mustLease(t, s, 0); l != (Lease{Epoch: e1.Epoch}) {
		t.Fatalf("Lease after the lapse = %+v, want %+v", l, Lease{Epoch: e1.Epoch})
	}
	err := s.Renew(ctx, 0, e1, ttl)
	if !errors.Is(err, ErrFenced) || !strings.Contains(err.Error(), "lapsed") {
		t.Fatalf("Renew of a lapsed lease: %v, want ErrFenced saying it lapsed", err)
	}

	e2 := mustAcquire(t, s, 0, "b", ttl)
	if e2.Epoch <= e1.Epoch {
		t.Fatalf("b's epoch %d, want > %d", e2.Epoch, e1.Epoch)
	}
	mustRelease(t, s, 0, e1) // stale: a no-op
	if l := mustLease(t, s, 0); l != (Lease{Owner: "b", Epoch: e2.Epoch, TTL: ttl}) {
		t.Fatalf("Lease after a's stale release = %+v", l)
	}
	e3 := mustAcquire(t, s, 0, "b", ttl) // same owner: a new epoch
	if e3.Epoch <= e2.Epoch {
		t.Fatalf("b's re-acquire: epoch %d, want > %d", e3.Epoch, e2.Epoch)
	}
	for _, g := range append([]namedGrant{{"b's superseded grant", e2}}, forgedGrants(e3)...) {
		if err := s.Renew(ctx, 0, g.grant, ttl); !errors.Is(err, ErrFenced) {
			t.Errorf("Renew under %s (b holds epoch %d): %v, want ErrFenced", g.name, e3.Epoch, err)
		}
	}
	mustRelease(t, s, 0, e3)
	if e4 := mustAcquire(t, s, 0, "a", ttl); e4.Epoch <= e3.Epoch { // at once, no wait
		t.Fatalf("a's acquire after b's release: epoch %d, want > %d", e4.Epoch, e3.Epoch)
	}
	for _, ttl := range []time.Duration{0, -time.Second} {
		if _, err := s.Acquire(ctx, 5, "a", ttl); err == nil {
			t.Errorf("Acquire with ttl %v succeeded", ttl)
		}
	}
	if _, err := s.Acquire(ctx, 5, "", ttl); err == nil {
		t.Error("Acquire by the empty owner succeeded")
	}
	if l := mustLease(t, s, 5); l != (Lease{}) {
		t.Errorf("refused Acquires changed the lease: %+v", l)
	}
}

// TestEmbeddedFencing: A's lease lapses by the clock, B takes the shard,
// and every write A still makes is refused, alone or beside B's writes in
// one Commit, before and after a restart.
func TestEmbeddedFencing(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	clock := newFakeClock()
	s := openClocked(t, dir, clock)
	const shard, ttl = 3, 5 * time.Second

	k1, k2 := rec("n", "k1"), rec("n", "k2")
	eA := mustAcquire(t, s, shard, "a", ttl)
	mustCommit(t, s, Batch{Shard: shard, Grant: eA, Ops: []Op{put(k1), put(k2)}})
	clock.Advance(ttl)
	eB := mustAcquire(t, s, shard, "b", ttl)
	k1b, k3b := k1, rec("n", "k3")
	k1b.Topic = "b"
	mustCommit(t, s, Batch{Shard: shard, Grant: eB, Ops: []Op{put(k1b), del(k2), put(k3b)}})
	want := recordMap(k1b, k3b)

	k1a, k2a := k1, k2
	k1a.Topic, k2a.Topic = "a-again", "a-again"
	attempts := []struct {
		name string
		ops  []Op
	}{
		{"put", []Op{put(rec("n", "k4"))}},
		{"overwrite", []Op{put(k1a)}},
		{"delete", []Op{del(k3b)}},
		{"resurrect", []Op{put(k2a)}},
	}
	try := func(s *Embedded, eB Grant) {
		t.Helper()
		eC := mustAcquire(t, s, shard+1, "c", longTTL)
		for _, tt := range attempts {
			k5 := rec("n", "k5")
			batches := []Batch{
				{Shard: shard, Grant: eA, Ops: tt.ops},
				{Shard: shard + 1, Grant: eC, Ops: []Op{put(k5)}},
			}
			if err := s.Commit(ctx, batches); err != nil {
				t.Fatalf("A's commit (%s): %v", tt.name, err)
			}
			err := batches[0].Err
			msg := fmt.Sprintf("shard %d: commit under epoch %d; current epoch %d", shard, eA.Epoch, eB.Epoch)
			if !errors.Is(err, ErrFenced) || !strings.Contains(err.Error(), msg) {
				t.Errorf("A's commit (%s): Err %v, want ErrFenced saying %q", tt.name, err, msg)
			}
			if batches[1].Err != nil {
				t.Errorf("batch beside A's: Err %v, want nil", batches[1].Err)
			}
		}
		if got := loadAll(t, s, shard, eB); !reflect.DeepEqual(got, want) {
			t.Fatalf("B's records: %v, want %v", got, want)
		}
		if err := s.Load(ctx, shard, eA, func([]Record) error { return nil }); !errors.Is(err, ErrFenced) {
			t.Errorf("A's Load: %v, want ErrFenced", err)
		}
	}
	try(s, eB)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// B, restarted with the store, acquires the shard again; A's writes
	// stay refused.
	s = openClocked(t, dir, clock)
	try(s, mustAcquire(t, s, shard, "b", ttl))
}

// TestEmbeddedDurableAfterReopen commits to several shards, the first and
// last among them, closes, reopens and finds exactly what was committed,
// each shard's records in its own range.
func TestEmbeddedDurableAfterReopen(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	s := openClocked(t, dir, clock)
	shards := []uint32{0, 1, 256, math.MaxUint32 - 1, math.MaxUint32}
	want := map[uint32]map[string]Record{}
	var batches []Batch
	for _, sh := range shards {
		e := mustAcquire(t, s, sh, "a", time.Hour)
		want[sh] = map[string]Record{}
		b := Batch{Shard: sh, Grant: e}
		for i := range 50 {
			r := rec("n", fmt.Sprintf("%d-%d", sh, i))
			b.Ops = append(b.Ops, put(r))
			if i%5 == 0 { // deleted again in the same batch
				b.Ops = append(b.Ops, del(r))
				continue
			}
			want[sh][Key(r.Namespace, r.ID)] = r
		}
		batches = append(batches, b)
	}
	if err := s.Commit(t.Context(), batches); err != nil {
		t.Fatal(err)
	}
	for _, b := range batches {
		if b.Err != nil {
			t.Fatalf("shard %d: %v", b.Shard, b.Err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openClocked(t, dir, clock)
	for _, sh := range shards {
		e := mustAcquire(t, s, sh, "b", time.Hour)
		if got := loadAll(t, s, sh, e); !reflect.DeepEqual(got, want[sh]) {
			t.Errorf("shard %d after reopen: %d records, want %d (or they differ)", sh, len(got), len(want[sh]))
		}
	}
}

func TestEmbeddedDirInUse(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenEmbedded(DefaultEmbeddedConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	_, err = OpenEmbedded(DefaultEmbeddedConfig(dir))
	if err == nil || !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second OpenEmbedded of %q: %v, want an error saying it is in use", dir, err)
	}
	// The failed open left the first store's lock alone, and Close
	// releases it.
	e := mustAcquire(t, s, 0, "a", time.Hour)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTestEmbedded(t, DefaultEmbeddedConfig(dir))
	if l := mustLease(t, s, 0); l.Epoch != e.Epoch {
		t.Fatalf("epoch after reopen: %d, want %d", l.Epoch, e.Epoch)
	}
}

func TestEmbeddedDirCannotBeCreated(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(file, "db") // under a regular file
	_, err := OpenEmbedded(DefaultEmbeddedConfig(dir))
	if !errors.Is(err, syscall.ENOTDIR) || !strings.Contains(err.Error(), "cannot create directory") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("OpenEmbedded(%q): %v, want ENOTDIR saying the directory cannot be created", dir, err)
	}
}

// TestEmbeddedCloseDuringLoad: Close waits for a Load in progress, which
// stops with ErrClosed at its next page.
func TestEmbeddedCloseDuringLoad(t *testing.T) {
	cfg := DefaultEmbeddedConfig(t.TempDir())
	cfg.PageSize = 10
	s, err := OpenEmbedded(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	e := mustAcquire(t, s, 0, "a", time.Hour)
	var ops []Op
	for i := range 100 {
		ops = append(ops, put(rec("n", strconv.Itoa(i))))
	}
	mustCommit(t, s, Batch{Shard: 0, Grant: e, Ops: ops})

	closed := make(chan error, 1)
	pages := 0
	err = s.Load(ctx, 0, e, func([]Record) error {
		pages++
		if pages == 1 {
			go func() { closed <- s.Close() }()
			// Wait until Close has begun, so that the next page sees it.
			for !s.isClosed() {
				time.Sleep(time.Millisecond)
			}
		}
		return nil
	})
	if !errors.Is(err, ErrClosed) || pages != 1 {
		t.Fatalf("Load interrupted by Close: %v after %d pages, want ErrClosed after 1", err, pages)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func (e *Embedded) isClosed() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.closed
}

// TestEmbeddedLoadStops: Load returns on a cancelled context or a moved
// epoch at the next page.
func TestEmbeddedLoadStops(t *testing.T) {
	cfg := DefaultEmbeddedConfig(t.TempDir())
	cfg.PageSize = 10
	s := openTestEmbedded(t, cfg)
	e := mustAcquire(t, s, 0, "a", time.Hour)
	var ops []Op
	for i := range 100 {
		ops = append(ops, put(rec("n", strconv.Itoa(i))))
	}
	mustCommit(t, s, Batch{Shard: 0, Grant: e, Ops: ops})

	ctx, cancel := context.WithCancel(t.Context())
	pages := 0
	err := s.Load(ctx, 0, e, func([]Record) error { pages++; cancel(); return nil })
	if !errors.Is(err, context.Canceled) || pages != 1 {
		t.Errorf("Load with ctx cancelled in fn: %v after %d pages, want context.Canceled after 1", err, pages)
	}

	pages = 0
	err = s.Load(t.Context(), 0, e, func([]Record) error {
		pages++
		mustAcquire(t, s, 0, "a", time.Hour) // the shard moves on mid-load
		return nil
	})
	if !errors.Is(err, ErrFenced) || pages != 1 {
		t.Errorf("Load whose epoch moved on: %v after %d pages, want ErrFenced after 1", err, pages)
	}
}

// TestEmbeddedCorrupt: a record that does not decode, or that does not
// belong under its key, fails Load with ErrCorrupt naming the key.
func TestEmbeddedCorrupt(t *testing.T) {
	for _, tt := range []struct {
		name  string
		key   string
		value []byte
	}{
		{"garbage", "n\x00bad", []byte{0xff, 1, 2}},
		{"truncated", "n\x00bad", func() []byte { r := rec("n", "bad"); v := r.AppendBinary(nil); return v[:len(v)-3] }()},
		{"wrong key", "n\x00bad", func() []byte { r := rec("n", "other"); return r.AppendBinary(nil) }()},
	} {
		s := openTestEmbedded(t, DefaultEmbeddedConfig(t.TempDir()))
		e := mustAcquire(t, s, 2, "a", time.Hour)
		if err := s.db.Set(appendRecordKey(nil, 2, tt.key), tt.value, pebble.Sync); err != nil {
			t.Fatal(err)
		}
		err := s.Load(t.Context(), 2, e, func([]Record) error { return nil })
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), strconv.Quote(tt.key)) {
			t.Errorf("%s: Load = %v, want ErrCorrupt naming %q", tt.name, err, tt.key)
		}
	}
}

// benchRecords returns n puts with random 40-byte keys and ~100-byte
// encoded records.
func benchRecords(r *rand.Rand, n int) []Op {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	ops := make([]Op, n)
	id := make([]byte, 37) // Key("ns", id) is 2 + 1 + 37 = 40 bytes
	for i := range ops {
		for j := range id {
			id[j] = letters[r.IntN(len(letters))]
		}
		ops[i] = put(rec("ns", string(id)))
	}
	return ops
}

// BenchmarkEmbeddedCommit measures synced commits of 1,000 records of one
// shard: one fsync per Commit.
func BenchmarkEmbeddedCommit(b *testing.B) {
	const (
		perCommit = 1000
		sets      = 64 // distinct record sets cycled through
	)
	s := openTestEmbedded(b, DefaultEmbeddedConfig(b.TempDir()))
	ctx := b.Context()
	e, err := s.Acquire(ctx, 0, "bench", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	ops := make([][]Op, sets)
	for i := range ops {
		ops[i] = benchRecords(r, perCommit)
	}
	b.ReportAllocs()
	i := 0
	batches := make([]Batch, 1)
	for b.Loop() {
		batches[0] = Batch{Shard: 0, Grant: e, Ops: ops[i%sets]}
		i++
		if err := s.Commit(ctx, batches); err != nil || batches[0].Err != nil {
			b.Fatal(err, batches[0].Err)
		}
	}
	b.ReportMetric(float64(i*perCommit)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkEmbeddedLoad measures loading (iterating and decoding) a shard
// of -store.loadn records (default 1,000,000), from a store closed and
// reopened after the fill, as after a restart.
func BenchmarkEmbeddedLoad(b *testing.B) {
	n := *benchLoadN
	dir := b.TempDir()
	ctx := b.Context()
	s, err := OpenEmbedded(DefaultEmbeddedConfig(dir))
	if err != nil {
		b.Fatal(err)
	}
	e, err := s.Acquire(ctx, 0, "bench", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for done := 0; done < n; done += 10_000 {
		batches := []Batch{{Shard: 0, Grant: e, Ops: benchRecords(r, min(10_000, n-done))}}
		if err := s.Commit(ctx, batches); err != nil || batches[0].Err != nil {
			b.Fatal(err, batches[0].Err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	s = openTestEmbedded(b, DefaultEmbeddedConfig(dir))
	e, err = s.Acquire(ctx, 0, "bench", time.Hour)
	if err != nil {
		b.Fatal(err)
	}

	b.Run("load", func(b *testing.B) {
		b.ReportAllocs()
		total := 0
		for b.Loop() {
			got := 0
			if err := s.Load(ctx, 0, e, func(p []Record) error { got += len(p); return nil }); err != nil {
				b.Fatal(err)
			}
			if got != n {
				b.Fatalf("loaded %d records, want %d", got, n)
			}
			total += got
		}
		b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "load-s")
		b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "records/s")
	})
	// The peer: Pebble's iteration of the same range without decoding,
	// the floor under Load.
	b.Run("peer=raw-iter", func(b *testing.B) {
		lower, upper := shardBounds(0)
		total := 0
		for b.Loop() {
			it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
			if err != nil {
				b.Fatal(err)
			}
			got := 0
			for it.First(); it.Valid(); it.Next() {
				if _, err := it.ValueAndErr(); err != nil {
					b.Fatal(err)
				}
				got++
			}
			if err := it.Close(); err != nil || got != n {
				b.Fatalf("iterated %d records (%v), want %d", got, err, n)
			}
			total += got
		}
		b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "load-s")
		b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "records/s")
	})
}
