package shard

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"unsafe"

	"github.com/timerd/timerd/store"
)

// TestTableModel adds and removes random keys with payloads of up to 3
// KB, and now and then one bigger than a quarter chunk, with hashes
// narrowed so that most keys share a chain, and checks the table against
// a map: every key held is found with its fields, no other key is, a
// slot's visit never goes back, the byte chunks hold no more than twice
// the live blobs and a chunk's worth, and a payload handed out stays as
// it was after its timer is gone and its chunk compacted.
func TestTableModel(t *testing.T) {
	for _, mask := range []uint64{0, 3, 255, ^uint64(0)} {
		t.Run(fmt.Sprintf("mask %#x", mask), func(t *testing.T) {
			tb := newTable(new(sync.Mutex))
			tb.mask = mask
			rng := rand.New(rand.NewPCG(1, mask))
			held := map[string]*timer{}
			payloads := map[string][]byte{}
			visits := map[uint32]uint32{} // the highest visit seen per slot
			type handed struct {
				got  []byte
				want string
			}
			var out []handed
			for step := range 20_000 {
				id := fmt.Sprint(rng.IntN(300))
				key := store.Key("ns", id)
				if tm := held[key]; tm != nil {
					if step%50 == 0 {
						out = append(out, handed{tb.payload(tm), string(payloads[key])})
					}
					tb.remove(tm)
					delete(held, key)
				} else {
					n := rng.IntN(3000)
					if rng.IntN(100) == 0 {
						n = blobChunkSize/4 + rng.IntN(1000)
					}
					payload := make([]byte, n)
					for i := range payload {
						payload[i] = byte(step + i)
					}
					payloads[key] = payload
					rec := store.Record{Namespace: "ns", ID: id, Topic: "topic." + id, Payload: payload, Due: int64(step), Reason: "r" + id}
					tm := tb.add(&rec)
					if tm.visit < visits[tm.slot] {
						t.Fatalf("step %d: slot %d reused with visit %d after %d", step, tm.slot, tm.visit, visits[tm.slot])
					}
					tm.visit++ // as a queue would
					visits[tm.slot] = tm.visit
					held[key] = tm
				}
				if tb.len() != len(held) {
					t.Fatalf("step %d: len %d, want %d", step, tb.len(), len(held))
				}
				if step%97 != 0 {
					continue
				}
				for i := range 300 {
					id := fmt.Sprint(i)
					key := store.Key("ns", id)
					got, want := tb.get(key), held[key]
					if got != want {
						t.Fatalf("step %d: get(%q) = %p, want %p", step, id, got, want)
					}
					if got == nil {
						continue
					}
					r := tb.record(got)
					if r.Namespace != "ns" || r.ID != id || r.Topic != "topic."+id || string(r.Payload) != string(payloads[key]) || r.Reason != "r"+id {
						t.Fatalf("step %d: record of %q = %+v", step, id, r)
					}
				}
				live, size := 0, 0
				for _, c := range tb.blobs {
					live += c.live
					size += len(c.buf)
				}
				if size > 2*live+2*blobChunkSize {
					t.Fatalf("step %d: chunks of %d bytes hold %d live", step, size, live)
				}
			}
			for i, h := range out {
				if string(h.got) != h.want {
					t.Fatalf("payload %d handed out changed after its timer went", i)
				}
			}
		})
	}
}

// TestTableStaleEntry checks that an entry left in a queue by a timer
// that is gone does not match the timer that takes its slot, queued
// there or waiting anywhere.
func TestTableStaleEntry(t *testing.T) {
	tb := newTable(new(sync.Mutex))
	a := tb.add(&store.Record{Namespace: "ns", ID: "a", Topic: "t"})
	a.queued = true
	a.visit++
	stale := waitEntry{slot: a.slot, visit: a.visit}
	if _, due := stale.due(tb); !due {
		t.Fatal("a's own entry is not due")
	}
	tb.remove(a)
	b := tb.add(&store.Record{Namespace: "ns", ID: "b", Topic: "t"})
	if b != a {
		t.Fatal("b did not take a's slot")
	}
	b.queued, b.waiting = true, true
	if stale.matches(tb) {
		t.Fatal("a's entry matches b, which took its slot")
	}
	b.visit++
	if stale.matches(tb) {
		t.Fatal("a's entry matches b's first visit")
	}
}

// TestTableRecordRoundTrip checks that a timer gives back the record it
// was made of, an empty payload as nil, and keeps it across a new reason.
func TestTableRecordRoundTrip(t *testing.T) {
	for _, rec := range []store.Record{
		{Namespace: "n", ID: "i", Topic: "t"},
		{Namespace: "orders", ID: "o-1", Topic: "orders.timeout", Payload: []byte{0, 1, 2}, Due: 5, Next: 9, SpecDue: 5, Delay: -1,
			Interval: 7, Created: 1, State: store.Dead, Attempts: 3, LastAttempt: 8, Reason: "why", OccEpoch: 2, OccSeq: 4, Req: 6, ReqAt: 1},
	} {
		tb := newTable(new(sync.Mutex))
		tm := tb.add(&rec)
		got := tb.record(tm)
		if a, b := got.AppendBinary(nil), rec.AppendBinary(nil); string(a) != string(b) {
			t.Fatalf("record() = %+v, want %+v", got, rec)
		}
		if len(rec.Payload) == 0 && got.Payload != nil {
			t.Fatalf("empty payload = %#v, want nil", got.Payload)
		}
		tb.setReason(tm, "another")
		got = tb.record(tm)
		got.Reason = rec.Reason
		if a, b := got.AppendBinary(nil), rec.AppendBinary(nil); string(a) != string(b) || tb.reason(tm) != "another" {
			t.Fatalf("after setReason: %+v, reason %q", got, tb.reason(tm))
		}
	}
}

// BenchmarkTableGet is a lookup by key in a table of a million timers,
// beside a map from key to timer, the index it replaced.
func BenchmarkTableGet(b *testing.B) {
	const n = 1_000_000
	keys := make([]string, n)
	tb := newTable(new(sync.Mutex))
	byKey := make(map[string]*timer, n)
	for i := range keys {
		keys[i] = store.Key("bench", "t"+fmt.Sprint(i))
		rec := store.Record{Namespace: "bench", ID: "t" + fmt.Sprint(i), Topic: "orders.timeout"}
		byKey[keys[i]] = tb.add(&rec)
	}
	b.Run("table", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if tb.get(keys[i]) == nil {
				b.Fatal("not found")
			}
			i = (i + 7919) % n
		}
	})
	b.Run("map", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if byKey[keys[i]] == nil {
				b.Fatal("not found")
			}
			i = (i + 7919) % n
		}
	})
}

// matches reports whether e names its slot's timer, in the backlog or in
// its topic's queue.
func (e waitEntry) matches(tb *table) bool {
	_, due := e.due(tb)
	_, live := e.live(tb)
	return due || live
}

// TestTableInternsNames checks that a timer's namespace and topic are
// the table's interned strings, shared by its timers, not strings into a
// byte chunk that a map outliving the timer would keep alive.
func TestTableInternsNames(t *testing.T) {
	tb := newTable(new(sync.Mutex))
	a := tb.add(&store.Record{Namespace: "orders", ID: "a", Topic: "timeout"})
	b := tb.add(&store.Record{Namespace: "orders", ID: "b", Topic: "timeout"})
	for _, get := range []func(*timer) string{tb.namespace, tb.topic} {
		x, y := get(a), get(b)
		if unsafe.StringData(x) != unsafe.StringData(y) {
			t.Fatalf("%q of two timers is two strings", x)
		}
		blob := tb.blob(a)
		start := uintptr(unsafe.Pointer(unsafe.StringData(blob)))
		if p := uintptr(unsafe.Pointer(unsafe.StringData(x))); p >= start && p < start+uintptr(len(blob)) {
			t.Fatalf("%q points into the timer's blob", x)
		}
	}
}
