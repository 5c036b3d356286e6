package store

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// Lease ttls of the suite. longTTL outlasts any subtest; shortTTL is for
// leases the suite lets lapse, and the suite waits for the lapse by
// polling Lease, never by sleeping a fixed time.
const (
	longTTL  = time.Minute
	shortTTL = 150 * time.Millisecond
	// lapseWait bounds the wait for a short lease to lapse.
	lapseWait = 10 * time.Second
)

// testStore is the conformance suite that every Store implementation runs.
// open returns a fresh, empty store for one subtest and arranges its
// cleanup; it is called from parallel subtests. It should configure the
// smallest Load page its store allows (a handful of records), so that
// paging is exercised.
func testStore(t *testing.T, open func(t *testing.T) Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s Store)
	}{
		{"AcquireEpochsIncrease", suiteAcquireEpochsIncrease},
		{"AcquireHeldByAnother", suiteAcquireHeld},
		{"ReacquireSameOwner", suiteReacquireSameOwner},
		{"Renew", suiteRenew},
		{"RenewAfterLapse", suiteRenewAfterLapse},
		{"ReleaseThenAcquire", suiteReleaseThenAcquire},
		{"ReleaseStaleIsNoop", suiteReleaseStale},
		{"LeaseSnapshot", suiteLeaseSnapshot},
		{"RoundTrip", suiteRoundTrip},
		{"OpsInOrder", suiteOpsInOrder},
		{"LongRuns", suiteLongRuns},
		{"StaleBatchAmongShards", suiteStaleBatch},
		{"Fencing", suiteFencing},
		{"ForgedGrant", suiteForgedGrant},
		{"LoadStaleEpoch", suiteLoadStale},
		{"LoadPages", suiteLoadPages},
		{"LoadStopsOnError", suiteLoadStops},
		{"ConcurrentCommits", suiteConcurrent},
		{"EpochZeroRefused", suiteEpochZero},
		{"ClaimShards", suiteClaimShards},
		{"Close", suiteClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.run(t, open(t))
		})
	}
}

func suiteAcquireEpochsIncrease(t *testing.T, s Store) {
	e1 := mustAcquire(t, s, 0, "node-a", longTTL)
	if e1.Epoch == 0 || e1.Token == (Token{}) {
		t.Fatalf("first Acquire returned %+v, with epoch 0 or the zero token", e1)
	}
	mustRelease(t, s, 0, e1)
	e2 := mustAcquire(t, s, 0, "node-b", longTTL)
	mustRelease(t, s, 0, e2)
	e3 := mustAcquire(t, s, 0, "node-a", longTTL)
	if e1.Epoch >= e2.Epoch || e2.Epoch >= e3.Epoch {
		t.Fatalf("epochs %d, %d, %d do not increase", e1.Epoch, e2.Epoch, e3.Epoch)
	}
	if e1.Token == e2.Token || e2.Token == e3.Token || e1.Token == e3.Token {
		t.Fatalf("two Acquires share a token: %v, %v, %v", e1.Token, e2.Token, e3.Token)
	}
	if l := mustLease(t, s, 0); l.Owner != "node-a" || l.Epoch != e3.Epoch {
		t.Fatalf("Lease = %+v, want node-a under epoch %d", l, e3)
	}
}

func suiteAcquireHeld(t *testing.T, s Store) {
	e := mustAcquire(t, s, 1, "node-a", longTTL)
	_, err := s.Acquire(t.Context(), 1, "node-b", longTTL)
	if !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("Acquire by another owner: %v, want ErrLeaseHeld", err)
	}
	if !strings.Contains(err.Error(), "node-a") {
		t.Errorf("ErrLeaseHeld %q does not name the holder node-a", err)
	}
	// The refusal changed nothing, the epoch included.
	if l := mustLease(t, s, 1); l.Owner != "node-a" || l.Epoch != e.Epoch {
		t.Fatalf("Lease after a refused Acquire = %+v, want node-a under epoch %d", l, e)
	}
}

func suiteReacquireSameOwner(t *testing.T, s Store) {
	e1 := mustAcquire(t, s, 2, "node-a", longTTL)
	e2 := mustAcquire(t, s, 2, "node-a", longTTL)
	if e2.Epoch <= e1.Epoch {
		t.Fatalf("re-acquire by the same owner: epoch %d, want > %d", e2.Epoch, e1.Epoch)
	}
	if err := s.Renew(t.Context(), 2, e1, longTTL); !errors.Is(err, ErrFenced) {
		t.Fatalf("Renew under the superseded grant: %v, want ErrFenced", err)
	}
	if err := s.Renew(t.Context(), 2, e2, longTTL); err != nil {
		t.Fatalf("Renew under the new grant: %v", err)
	}
	if l := mustLease(t, s, 2); l.Owner != "node-a" || l.Epoch != e2.Epoch {
		t.Fatalf("Lease = %+v, want node-a under epoch %d", l, e2)
	}
}

func suiteRenew(t *testing.T, s Store) {
	ctx := t.Context()
	e := mustAcquire(t, s, 3, "node-a", shortTTL)
	if err := s.Renew(ctx, 3, e, longTTL); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	// Renewed to a minute: far more than the short ttl it was taken with.
	if l := mustLease(t, s, 3); l.Owner != "node-a" || l.Epoch != e.Epoch || l.TTL <= longTTL/2 || l.TTL > longTTL {
		t.Fatalf("Lease after Renew = %+v, want node-a, epoch %d, ttl in (%v, %v]", l, e.Epoch, longTTL/2, longTTL)
	}
	for _, g := range forgedGrants(e) {
		if err := s.Renew(ctx, 3, g.grant, longTTL); !errors.Is(err, ErrFenced) {
			t.Errorf("Renew under %s (lease is node-a's): %v, want ErrFenced", g.name, err)
		}
	}
	if l := mustLease(t, s, 3); l.Owner != "node-a" || l.Epoch != e.Epoch {
		t.Fatalf("Lease after refused renewals = %+v, want node-a under epoch %d", l, e.Epoch)
	}
}

func suiteRenewAfterLapse(t *testing.T, s Store) {
	e := mustAcquire(t, s, 4, "node-a", shortTTL)
	waitLapsed(t, s, 4)
	if err := s.Renew(t.Context(), 4, e, longTTL); !errors.Is(err, ErrFenced) {
		t.Fatalf("Renew after the lease lapsed: %v, want ErrFenced", err)
	}
	if l := mustLease(t, s, 4); l != (Lease{Epoch: e.Epoch}) {
		t.Fatalf("Lease after a lapse and a refused Renew = %+v, want %+v", l, Lease{Epoch: e.Epoch})
	}
}

func suiteReleaseThenAcquire(t *testing.T, s Store) {
	e1 := mustAcquire(t, s, 5, "node-a", longTTL)
	mustRelease(t, s, 5, e1)
	if l := mustLease(t, s, 5); l != (Lease{Epoch: e1.Epoch}) {
		t.Fatalf("Lease after Release = %+v, want %+v", l, Lease{Epoch: e1.Epoch})
	}
	e2 := mustAcquire(t, s, 5, "node-b", longTTL) // at once: no wait for the ttl
	if e2.Epoch <= e1.Epoch {
		t.Fatalf("epoch after release and acquire by another owner = %d, want > %d", e2.Epoch, e1.Epoch)
	}
}

func suiteReleaseStale(t *testing.T, s Store) {
	e1 := mustAcquire(t, s, 6, "node-a", longTTL)
	e2 := mustAcquire(t, s, 6, "node-a", longTTL)
	mustRelease(t, s, 6, e1) // superseded grant
	for _, g := range forgedGrants(e2) {
		mustRelease(t, s, 6, g.grant)
	}
	if l := mustLease(t, s, 6); l.Owner != "node-a" || l.Epoch != e2.Epoch {
		t.Fatalf("Lease after stale releases = %+v, want node-a under epoch %d", l, e2.Epoch)
	}

	// A lapsed lease whose shard has moved on.
	ea := mustAcquire(t, s, 7, "node-a", shortTTL)
	waitLapsed(t, s, 7)
	eb := mustAcquire(t, s, 7, "node-b", longTTL)
	mustRelease(t, s, 7, ea)
	if l := mustLease(t, s, 7); l.Owner != "node-b" || l.Epoch != eb.Epoch {
		t.Fatalf("Lease after the old owner's release = %+v, want node-b under epoch %d", l, eb.Epoch)
	}
}

func suiteLeaseSnapshot(t *testing.T, s Store) {
	if l := mustLease(t, s, 8); l != (Lease{}) {
		t.Fatalf("Lease of a shard never acquired = %+v, want the zero Lease", l)
	}
	e := mustAcquire(t, s, 8, "node-a", longTTL)
	l := mustLease(t, s, 8)
	if l.Owner != "node-a" || l.Epoch != e.Epoch || l.TTL <= 0 || l.TTL > longTTL {
		t.Fatalf("Lease = %+v, want node-a, epoch %d, ttl in (0, %v]", l, e.Epoch, longTTL)
	}
	mustRelease(t, s, 8, e)
	if l := mustLease(t, s, 8); l != (Lease{Epoch: e.Epoch}) {
		t.Fatalf("Lease after Release = %+v, want %+v", l, Lease{Epoch: e.Epoch})
	}
}

func suiteRoundTrip(t *testing.T, s Store) {
	e := mustAcquire(t, s, 9, "node-a", longTTL)
	tests := []struct {
		name string
		rec  Record
		want Record // rec as the codec gives it back
	}{
		{
			name: "every field",
			rec: Record{
				Namespace: "orders", ID: "o-1", Topic: "orders.timeout",
				Payload: []byte{0, 1, 2, 0xff, 0},
				Due:     1_700_000_000_000, Next: 1_700_000_030_000,
				SpecDue: 1_700_000_000_000, Delay: -1, Interval: 60_000,
				Created: 1_699_999_000_000, State: Dead, Attempts: math.MaxUint32,
				LastAttempt: 1_700_000_020_000, Reason: "max attempts (5) exhausted",
				OccEpoch: math.MaxUint64, OccSeq: 1 << 40,
			},
		},
		{
			name: "minimal",
			rec:  Record{Namespace: "default", ID: "x", Topic: "t", State: Pending},
		},
		{
			name: "nil payload",
			rec:  Record{Namespace: "default", ID: "nil", Topic: "t", Payload: nil, Due: 5, Next: 5, Delay: 1000, State: Pending},
		},
		{
			// The codec does not tell an empty payload from none: both load
			// as nil.
			name: "empty payload",
			rec:  Record{Namespace: "default", ID: "empty", Topic: "t", Payload: []byte{}, Due: 5, Next: 5, State: Pending},
			want: Record{Namespace: "default", ID: "empty", Topic: "t", Payload: nil, Due: 5, Next: 5, State: Pending},
		},
		{
			name: "binary id and big payload",
			rec: Record{
				Namespace: "n", ID: "id\x00with\xffbytes and ünïcödé", Topic: "t",
				Payload: bytes.Repeat([]byte("payload!"), 8192), // 64 KiB
				Due:     -1000, Next: 1 << 50, Delay: 0, State: Pending, Attempts: 3,
			},
		},
		{
			name: "extreme times",
			rec:  Record{Namespace: "n", ID: "max", Topic: "t", Due: 1 << 62, Next: math.MaxInt64, SpecDue: math.MinInt64, Delay: math.MaxInt64, Interval: math.MaxInt64, Created: math.MinInt64, LastAttempt: math.MinInt64, State: Pending},
		},
	}
	var ops []Op
	want := map[string]Record{}
	for _, tt := range tests {
		w := tt.want
		if tt.want.ID == "" {
			w = tt.rec
		}
		ops = append(ops, put(tt.rec))
		want[Key(tt.rec.Namespace, tt.rec.ID)] = w
	}
	mustCommit(t, s, Batch{Shard: 9, Grant: e, Ops: ops})
	got := loadAll(t, s, 9, e)
	for _, tt := range tests {
		k := Key(tt.rec.Namespace, tt.rec.ID)
		if !reflect.DeepEqual(got[k], want[k]) {
			t.Errorf("%s: loaded\n%#v\nwant\n%#v", tt.name, got[k], want[k])
		}
	}
	if len(got) != len(want) {
		t.Errorf("loaded %d records, want %d", len(got), len(want))
	}
}

func suiteOpsInOrder(t *testing.T, s Store) {
	a1 := rec("a", "1")
	a2 := a1 // the same key, another value
	a2.Topic, a2.Attempts = "second", 2
	b := rec("b", "1")
	tests := []struct {
		name string
		ops  []Op
		want []Record
	}{
		{"put then delete", []Op{put(a1), del(a1)}, nil},
		{"delete then put", []Op{del(a1), put(a1)}, []Record{a1}},
		{"put twice, last wins", []Op{put(a1), put(a2)}, []Record{a2}},
		{"put, delete, put", []Op{put(a1), del(a1), put(a2)}, []Record{a2}},
		{"mixed runs", []Op{put(a1), put(b), del(a1), del(b), put(b), put(a2), del(b)}, []Record{a2}},
	}
	for i, tt := range tests {
		shard := uint32(10 + i)
		e := mustAcquire(t, s, shard, "node-a", longTTL)
		mustCommit(t, s, Batch{Shard: shard, Grant: e, Ops: tt.ops})
		got := loadAll(t, s, shard, e)
		want := map[string]Record{}
		for _, r := range tt.want {
			want[Key(r.Namespace, r.ID)] = r
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: loaded %v, want %v", tt.name, got, want)
		}
	}
}

// suiteLongRuns commits one batch with runs of thousands of puts and
// deletes, longer than any implementation would apply in one step.
func suiteLongRuns(t *testing.T, s Store) {
	e := mustAcquire(t, s, 20, "node-a", longTTL)
	var ops []Op
	model := map[string]Record{}
	apply := func(op Op, r Record) {
		ops = append(ops, op)
		if op.Value == nil {
			delete(model, op.Key)
		} else {
			model[op.Key] = r
		}
	}
	for i := range 5000 {
		r := rec("n", fmt.Sprint(i))
		apply(put(r), r)
	}
	for i := 0; i < 5000; i += 2 {
		r := rec("n", fmt.Sprint(i))
		apply(del(r), r)
	}
	for i := 3000; i < 9000; i++ {
		r := rec("n", fmt.Sprint(i))
		r.Attempts = 7
		apply(put(r), r)
	}
	apply(del(rec("n", "8999")), Record{})
	mustCommit(t, s, Batch{Shard: 20, Grant: e, Ops: ops})
	if got := loadAll(t, s, 20, e); !reflect.DeepEqual(got, model) {
		t.Fatalf("loaded %d records, want the %d of the model (or they differ)", len(got), len(model))
	}
}

func suiteStaleBatch(t *testing.T, s Store) {
	e1 := mustAcquire(t, s, 21, "node-a", longTTL)
	e2old := mustAcquire(t, s, 22, "node-a", longTTL)
	e3 := mustAcquire(t, s, 23, "node-a", longTTL)
	x, y, z, w := rec("n", "x"), rec("n", "y"), rec("n", "z"), rec("n", "w")
	mustCommit(t, s, Batch{Shard: 22, Grant: e2old, Ops: []Op{put(x)}})
	e2 := mustAcquire(t, s, 22, "node-a", longTTL) // e2old is stale now

	placeholder := errors.New("not set by Commit")
	batches := []Batch{
		{Shard: 21, Grant: e1, Ops: []Op{put(y)}, Err: placeholder},
		{Shard: 22, Grant: e2old, Ops: []Op{put(z), del(x)}, Err: placeholder},
		{Shard: 23, Grant: e3, Ops: []Op{put(w)}, Err: placeholder},
	}
	if err := s.Commit(t.Context(), batches); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if batches[0].Err != nil || batches[2].Err != nil {
		t.Fatalf("current batches: Err %v and %v, want nil", batches[0].Err, batches[2].Err)
	}
	if !errors.Is(batches[1].Err, ErrFenced) {
		t.Fatalf("stale batch: Err %v, want ErrFenced", batches[1].Err)
	}
	for _, c := range []struct {
		shard uint32
		grant Grant
		want  []Record
	}{{21, e1, []Record{y}}, {22, e2, []Record{x}}, {23, e3, []Record{w}}} {
		if got := loadAll(t, s, c.shard, c.grant); !reflect.DeepEqual(got, recordMap(c.want...)) {
			t.Errorf("shard %d: loaded %v, want %v", c.shard, got, c.want)
		}
	}
}

// suiteFencing is the scenario fencing exists for: owner A's lease lapses
// (a pause, a partition), B takes the shard, and A, unaware, keeps
// writing. None of A's writes may change what B has.
func suiteFencing(t *testing.T, s Store) {
	ctx := t.Context()
	const shard = 24
	k1a, k2a := rec("n", "k1"), rec("n", "k2")
	eA := mustAcquire(t, s, shard, "node-a", shortTTL)
	mustCommit(t, s, Batch{Shard: shard, Grant: eA, Ops: []Op{put(k1a), put(k2a)}})

	waitLapsed(t, s, shard)
	eB := mustAcquire(t, s, shard, "node-b", longTTL)
	if eB.Epoch <= eA.Epoch {
		t.Fatalf("B's epoch %d, want > A's %d", eB.Epoch, eA.Epoch)
	}
	// B finds what A had made durable.
	if got := loadAll(t, s, shard, eB); !reflect.DeepEqual(got, recordMap(k1a, k2a)) {
		t.Fatalf("B loaded %v, want A's records", got)
	}
	k1b, k3b := rec("n", "k1"), rec("n", "k3")
	k1b.Topic, k3b.Topic = "b", "b"
	mustCommit(t, s, Batch{Shard: shard, Grant: eB, Ops: []Op{put(k1b), del(k2a), put(k3b)}})
	want := recordMap(k1b, k3b)

	k4a := rec("n", "k4")
	k1a2 := k1a
	k1a2.Topic = "a-again"
	k2a2 := k2a
	k2a2.Topic = "a-again"
	for _, tt := range []struct {
		name string
		ops  []Op
	}{
		{"put a new key", []Op{put(k4a)}},
		{"overwrite", []Op{put(k1a2)}},
		{"delete", []Op{del(k3b)}},
		{"resurrect a deleted key", []Op{put(k2a2)}},
		{"all at once", []Op{put(k4a), put(k1a2), del(k3b), put(k2a2), del(k1a)}},
	} {
		b := []Batch{{Shard: shard, Grant: eA, Ops: tt.ops}}
		if err := s.Commit(ctx, b); err != nil {
			t.Fatalf("A's commit (%s): %v", tt.name, err)
		}
		if !errors.Is(b[0].Err, ErrFenced) {
			t.Errorf("A's commit (%s): Err %v, want ErrFenced", tt.name, b[0].Err)
		}
	}
	if err := s.Load(ctx, shard, eA, func([]Record) error { return nil }); !errors.Is(err, ErrFenced) {
		t.Errorf("A's Load: %v, want ErrFenced", err)
	}
	if err := s.Renew(ctx, shard, eA, longTTL); !errors.Is(err, ErrFenced) {
		t.Errorf("A's Renew: %v, want ErrFenced", err)
	}
	mustRelease(t, s, shard, eA)
	if _, err := s.Acquire(ctx, shard, "node-a", longTTL); !errors.Is(err, ErrLeaseHeld) {
		t.Errorf("A's Acquire: %v, want ErrLeaseHeld", err)
	}

	if got := loadAll(t, s, shard, eB); !reflect.DeepEqual(got, want) {
		t.Fatalf("B's records after A's attempts: %v, want %v", got, want)
	}
	if l := mustLease(t, s, shard); l.Owner != "node-b" || l.Epoch != eB.Epoch {
		t.Fatalf("Lease = %+v, want node-b under epoch %d", l, eB.Epoch)
	}
}

// namedGrant is a Grant a test case names.
type namedGrant struct {
	name  string
	grant Grant
}

// forgedGrants returns grants that differ from g, the current one, in
// its epoch or its token: every one of them must be refused.
func forgedGrants(g Grant) []namedGrant {
	other := g.Token
	other[0] ^= 0xff
	return []namedGrant{
		{"the epoch before", Grant{Epoch: g.Epoch - 1, Token: g.Token}},
		{"the epoch after", Grant{Epoch: g.Epoch + 1, Token: g.Token}},
		{"another token", Grant{Epoch: g.Epoch, Token: other}},
		{"no token", Grant{Epoch: g.Epoch}},
	}
}

// suiteForgedGrant: a write that names the shard's current epoch but not
// its token (an owner that was handed the same epoch by a store that
// forgot an Acquire) is refused like a stale one, and changes nothing.
func suiteForgedGrant(t *testing.T, s Store) {
	ctx := t.Context()
	const shard = 28
	g := mustAcquire(t, s, shard, "node-a", longTTL)
	kept := rec("n", "kept")
	mustCommit(t, s, Batch{Shard: shard, Grant: g, Ops: []Op{put(kept)}})
	evil := rec("n", "kept")
	evil.Topic = "forged"
	for _, f := range forgedGrants(g) {
		b := []Batch{{Shard: shard, Grant: f.grant, Ops: []Op{put(evil), put(rec("n", "new")), del(rec("n", "kept"))}}}
		if err := s.Commit(ctx, b); err != nil {
			t.Fatalf("Commit under %s: %v", f.name, err)
		}
		if !errors.Is(b[0].Err, ErrFenced) {
			t.Errorf("Commit under %s: Err %v, want ErrFenced", f.name, b[0].Err)
		}
		if err := s.Load(ctx, shard, f.grant, func([]Record) error { return nil }); !errors.Is(err, ErrFenced) {
			t.Errorf("Load under %s: %v, want ErrFenced", f.name, err)
		}
		if err := s.Renew(ctx, shard, f.grant, longTTL); !errors.Is(err, ErrFenced) {
			t.Errorf("Renew under %s: %v, want ErrFenced", f.name, err)
		}
		mustRelease(t, s, shard, f.grant)
	}
	if got := loadAll(t, s, shard, g); !reflect.DeepEqual(got, recordMap(kept)) {
		t.Fatalf("records after forged writes: %v, want only %v", got, kept)
	}
	if l := mustLease(t, s, shard); l.Owner != "node-a" || l.Epoch != g.Epoch {
		t.Fatalf("Lease after forged calls = %+v, want node-a under epoch %d", l, g.Epoch)
	}
}

func suiteLoadStale(t *testing.T, s Store) {
	ctx := t.Context()
	none := func([]Record) error { return nil }
	if err := s.Load(ctx, 25, Grant{Epoch: 5, Token: Token{1}}, none); !errors.Is(err, ErrFenced) {
		t.Errorf("Load of a shard never acquired under epoch 5: %v, want ErrFenced", err)
	}
	e1 := mustAcquire(t, s, 25, "node-a", longTTL)
	e2 := mustAcquire(t, s, 25, "node-a", longTTL)
	stale := []namedGrant{{"the superseded grant", e1}}
	for _, g := range append(stale, forgedGrants(e2)...) {
		if err := s.Load(ctx, 25, g.grant, none); !errors.Is(err, ErrFenced) {
			t.Errorf("Load under %s (current epoch %d): %v, want ErrFenced", g.name, e2.Epoch, err)
		}
	}
	calls := 0
	if err := s.Load(ctx, 25, e2, func([]Record) error { calls++; return nil }); err != nil || calls != 0 {
		t.Errorf("Load of an empty shard: %v after %d calls of fn, want nil after none", err, calls)
	}
}

// suiteLoadPages loads more records than a page holds and keeps them: the
// page slice is reused, the records' contents must not be.
func suiteLoadPages(t *testing.T, s Store) {
	const n = 3000
	e := mustAcquire(t, s, 26, "node-a", longTTL)
	want := map[string]Record{}
	var batch []Op
	for i := range n {
		r := rec("n", fmt.Sprint(i))
		want[Key(r.Namespace, r.ID)] = r
		batch = append(batch, put(r))
		if len(batch) == 500 {
			mustCommit(t, s, Batch{Shard: 26, Grant: e, Ops: batch})
			batch = nil
		}
	}
	var kept []Record
	pages := 0
	err := s.Load(t.Context(), 26, e, func(page []Record) error {
		pages++
		kept = append(kept, page...)
		return nil
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	got := map[string]Record{}
	for _, r := range kept {
		k := Key(r.Namespace, r.ID)
		if prev, ok := got[k]; ok && !reflect.DeepEqual(prev, r) {
			t.Fatalf("record %q passed twice, differently: %v and %v", k, prev, r)
		}
		got[k] = r
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("kept %d distinct records of %d, or they differ", len(got), len(want))
	}
	t.Logf("%d records in %d pages", len(kept), pages)
}

func suiteLoadStops(t *testing.T, s Store) {
	e := mustAcquire(t, s, 27, "node-a", longTTL)
	var ops []Op
	for i := range 100 {
		ops = append(ops, put(rec("n", fmt.Sprint(i))))
	}
	mustCommit(t, s, Batch{Shard: 27, Grant: e, Ops: ops})
	stop := errors.New("stop")
	calls := 0
	err := s.Load(t.Context(), 27, e, func([]Record) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("Load with fn failing: %v after %d calls, want fn's error after 1", err, calls)
	}
}

// suiteConcurrentCommits has several goroutines commit to their own shards
// at once while others read leases, for the race detector and to show
// that concurrent commits lose nothing.
func suiteConcurrent(t *testing.T, s Store) {
	const (
		writers = 8
		commits = 10
		perOp   = 50
	)
	epochs := make([]Grant, writers)
	for w := range writers {
		epochs[w] = mustAcquire(t, s, uint32(30+w), "node-a", longTTL)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*writers)
	for w := range writers {
		shard := uint32(30 + w)
		wg.Go(func() {
			for c := range commits {
				var ops []Op
				for i := range perOp {
					ops = append(ops, put(rec("n", fmt.Sprint(c*perOp+i))))
				}
				b := []Batch{{Shard: shard, Grant: epochs[w], Ops: ops}}
				if err := s.Commit(t.Context(), b); err != nil || b[0].Err != nil {
					errs <- fmt.Errorf("shard %d commit %d: %v, %v", shard, c, err, b[0].Err)
					return
				}
			}
		})
		wg.Go(func() {
			for range commits {
				if _, err := s.Lease(t.Context(), shard); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for w := range writers {
		if got := loadAll(t, s, uint32(30+w), epochs[w]); len(got) != commits*perOp {
			t.Errorf("shard %d: %d records, want %d", 30+w, len(got), commits*perOp)
		}
	}
}

func suiteClose(t *testing.T, s Store) {
	ctx := t.Context()
	e := mustAcquire(t, s, 40, "node-a", longTTL)
	if err := s.Commit(ctx, nil); err != nil {
		t.Fatalf("Commit of no batches: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, errAcquire := s.Acquire(ctx, 40, "node-a", longTTL)
	_, errLease := s.Lease(ctx, 40)
	for name, err := range map[string]error{
		"Acquire": errAcquire,
		"Renew":   s.Renew(ctx, 40, e, longTTL),
		"Release": s.Release(ctx, 40, e),
		"Lease":   errLease,
		"Commit":  s.Commit(ctx, []Batch{{Shard: 40, Grant: e, Ops: []Op{put(rec("n", "1"))}}}),
		"Load":    s.Load(ctx, 40, e, func([]Record) error { return nil }),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
}

// rec returns a typical record of about 100 bytes encoded.
func rec(namespace, id string) Record {
	return Record{
		Namespace: namespace, ID: id, Topic: "orders.timeout",
		Payload: []byte(`{"order":"` + id + `","cents":1999,"currency":"EUR","x":"0123456789"}`),
		Due:     1_700_000_000_000, Next: 1_700_000_000_000, Delay: 30_000,
		Created: 1_699_999_970_000, State: Pending, OccEpoch: 1, OccSeq: 42,
	}
}

func put(r Record) Op { return Op{Key: Key(r.Namespace, r.ID), Value: r.AppendBinary(nil)} }

func del(r Record) Op { return Op{Key: Key(r.Namespace, r.ID)} }

func recordMap(rs ...Record) map[string]Record {
	m := map[string]Record{}
	for _, r := range rs {
		m[Key(r.Namespace, r.ID)] = r
	}
	return m
}

func mustAcquire(t *testing.T, s Store, shard uint32, owner string, ttl time.Duration) Grant {
	t.Helper()
	e, err := s.Acquire(t.Context(), shard, owner, ttl)
	if err != nil {
		t.Fatalf("Acquire(shard %d, %s): %v", shard, owner, err)
	}
	return e
}

func mustRelease(t *testing.T, s Store, shard uint32, g Grant) {
	t.Helper()
	if err := s.Release(t.Context(), shard, g); err != nil {
		t.Fatalf("Release(shard %d, %v): %v", shard, g, err)
	}
}

func mustLease(t *testing.T, s Store, shard uint32) Lease {
	t.Helper()
	l, err := s.Lease(t.Context(), shard)
	if err != nil {
		t.Fatalf("Lease(shard %d): %v", shard, err)
	}
	return l
}

// mustCommit commits one batch and fails the test unless it is durable.
func mustCommit(t *testing.T, s Store, b Batch) {
	t.Helper()
	bs := []Batch{b}
	if err := s.Commit(t.Context(), bs); err != nil {
		t.Fatalf("Commit(shard %d): %v", b.Shard, err)
	}
	if bs[0].Err != nil {
		t.Fatalf("Commit(shard %d): batch: %v", b.Shard, bs[0].Err)
	}
}

// loadAll loads a shard into a map by key, checking that a record passed
// twice is the same record both times.
func loadAll(t *testing.T, s Store, shard uint32, g Grant) map[string]Record {
	t.Helper()
	got := map[string]Record{}
	err := s.Load(t.Context(), shard, g, func(page []Record) error {
		for _, r := range page {
			k := Key(r.Namespace, r.ID)
			if prev, ok := got[k]; ok && !reflect.DeepEqual(prev, r) {
				return fmt.Errorf("record %q passed twice, differently", k)
			}
			got[k] = r
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Load(shard %d, %v): %v", shard, g, err)
	}
	return got
}

// waitLapsed polls until the shard's lease has lapsed.
func waitLapsed(t *testing.T, s Store, shard uint32) {
	t.Helper()
	deadline := time.Now().Add(lapseWait)
	for mustLease(t, s, shard).Owner != "" {
		if time.Now().After(deadline) {
			t.Fatalf("shard %d: lease still held after %v", shard, lapseWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// suiteEpochZero: epoch 0 is never current, so a writer that never
// acquired the shard (or forgot to set the epoch) is refused.
func suiteEpochZero(t *testing.T, s Store) {
	bs := []Batch{{Shard: 9, Ops: []Op{put(rec("ns", "orphan"))}}}
	if err := s.Commit(t.Context(), bs); err != nil || !errors.Is(bs[0].Err, ErrFenced) {
		t.Fatalf("Commit under epoch 0 = %v, %v; want ErrFenced", err, bs[0].Err)
	}
	if err := s.Load(t.Context(), 9, Grant{}, func([]Record) error { return nil }); !errors.Is(err, ErrFenced) {
		t.Fatalf("Load under epoch 0 = %v, want ErrFenced", err)
	}
	e := mustAcquire(t, s, 9, "a", longTTL)
	if got := loadAll(t, s, 9, e); len(got) != 0 {
		t.Fatalf("a write under epoch 0 landed: %v", got)
	}
}

func suiteClaimShards(t *testing.T, s Store) {
	ctx := t.Context()
	if err := s.ClaimShards(ctx, 0); err == nil {
		t.Fatal("ClaimShards(0) succeeded")
	}
	for range 2 { // the first records the count, the second matches it
		if err := s.ClaimShards(ctx, 64); err != nil {
			t.Fatalf("ClaimShards(64): %v", err)
		}
	}
	err := s.ClaimShards(ctx, 128)
	if !errors.Is(err, ErrShardCount) {
		t.Fatalf("ClaimShards(128) after 64 = %v, want ErrShardCount", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "64") || !strings.Contains(msg, "128") {
		t.Fatalf("error %q does not name both counts", msg)
	}
	if err := s.ClaimShards(ctx, 64); err != nil {
		t.Fatalf("ClaimShards(64) after a refusal: %v", err)
	}
}
