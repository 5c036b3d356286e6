package shard

import (
	"hash/maphash"
	"unsafe"

	"github.com/timerd/timerd/store"
)

// table holds a shard's timers in memory: a slab of fixed-size timers
// with a free list, and an index from key to slot. Its methods are called
// with Shard.mu held.
//
// It is laid out for the garbage collector. A timer holds no pointer but
// its blob (its strings and payload, one object); the slab
// is a few hundred chunks, and the index maps hashes to slots, so holds
// nothing for the collector to follow. A shard of a million timers is
// then a million small objects without pointers and a few hundred chunks
// to scan, not millions of objects and two maps of strings: every
// collection of the node's heap, which runs while other namespaces'
// timers fire, marks several times less.
//
// Invariants:
//   - a slot holds a timer (its blob is not empty) or is in free;
//   - every timer is in the chain of the hash of its key, exactly once;
//   - a slot's visit only grows, across the timers that hold it, so an
//     entry left in a queue by an earlier timer never matches a later
//     one (see waitEntry).
type table struct {
	chunks []*[tableChunk]timer
	free   []uint32 // slots to reuse, the last freed first
	n      int      // timers held
	// index maps the hash of a key to the first slot of its chain,
	// which goes on through timer.hnext. Chains longer than one are
	// rare: two keys whose 64-bit hashes meet.
	index map[uint64]uint32
	seed  maphash.Seed
	// mask is all ones; tests narrow it to make keys collide.
	mask uint64
}

// tableChunk is the timers one slab chunk holds.
const tableChunk = 1024

// noSlot ends an index chain.
const noSlot = ^uint32(0)

func newTable() *table {
	return &table{index: make(map[uint64]uint32), seed: maphash.MakeSeed(), mask: ^uint64(0)}
}

func (tb *table) hash(key string) uint64 { return maphash.String(tb.seed, key) & tb.mask }

// len returns the timers held.
func (tb *table) len() int { return tb.n }

// at returns the timer in slot, which must hold one.
func (tb *table) at(slot uint32) *timer {
	return &tb.chunks[slot/tableChunk][slot%tableChunk]
}

// get returns the timer of key, or nil.
func (tb *table) get(key string) *timer {
	slot, ok := tb.index[tb.hash(key)]
	for ok && slot != noSlot {
		t := tb.at(slot)
		if t.key() == key {
			return t
		}
		slot = t.hnext
	}
	return nil
}

// add makes a timer of rec's fields, which must not be held already, and
// returns it, unarmed and not counted anywhere else.
func (tb *table) add(rec *store.Record) *timer {
	var slot uint32
	if n := len(tb.free); n > 0 {
		slot = tb.free[n-1]
		tb.free = tb.free[:n-1]
	} else {
		slot = uint32(tb.n)
		if slot == noSlot {
			panic("shard: more than 2^32-1 timers in one shard")
		}
		if slot%tableChunk == 0 {
			tb.chunks = append(tb.chunks, new([tableChunk]timer))
		}
	}
	t := tb.at(slot)
	visit := t.visit
	*t = timer{slot: slot, visit: visit}
	t.setRecord(rec)
	h := tb.hash(t.key())
	t.hnext = noSlot
	if head, ok := tb.index[h]; ok {
		t.hnext = head
	}
	tb.index[h] = slot
	tb.n++
	return t
}

// remove forgets t, which the table holds. Its slot keeps only its
// visit, moved on so that no entry of t's matches the slot's next timer.
func (tb *table) remove(t *timer) {
	h := tb.hash(t.key())
	if head := tb.index[h]; head == t.slot {
		if t.hnext == noSlot {
			delete(tb.index, h)
		} else {
			tb.index[h] = t.hnext
		}
	} else {
		p := tb.at(head)
		for p.hnext != t.slot {
			p = tb.at(p.hnext)
		}
		p.hnext = t.hnext
	}
	slot, visit := t.slot, t.visit+1
	*t = timer{slot: slot, visit: visit}
	tb.free = append(tb.free, slot)
	tb.n--
}

// record is what a timer holds of its store.Record besides the strings
// and payload, which are in its blob. The fields mean what Record's do.
type record struct {
	Due, Next, SpecDue, Delay, Interval, Created int64
	LastAttempt, ReqAt                           int64
	OccEpoch, OccSeq, Req                        uint64
	Attempts                                     uint32
	State                                        store.State
}

// setRecord sets t's record, its blob included, to rec's.
func (t *timer) setRecord(rec *store.Record) {
	t.rec = record{
		Due: rec.Due, Next: rec.Next, SpecDue: rec.SpecDue, Delay: rec.Delay, Interval: rec.Interval, Created: rec.Created,
		LastAttempt: rec.LastAttempt, ReqAt: rec.ReqAt,
		OccEpoch: rec.OccEpoch, OccSeq: rec.OccSeq, Req: rec.Req,
		Attempts: rec.Attempts, State: rec.State,
	}
	t.setBlob(rec.Namespace, rec.ID, rec.Topic, rec.Payload, rec.Reason)
}

// setBlob builds t's blob, in one allocation: the key (namespace, a zero
// byte, id), the topic, the payload, the reason.
func (t *timer) setBlob(namespace, id, topic string, payload []byte, reason string) {
	b := make([]byte, 0, len(namespace)+1+len(id)+len(topic)+len(payload)+len(reason))
	b = append(b, namespace...)
	b = append(b, 0)
	b = append(b, id...)
	b = append(b, topic...)
	b = append(b, payload...)
	b = append(b, reason...)
	// The bytes are never written again: the blob is a string.
	t.blob = unsafe.String(unsafe.SliceData(b), len(b))
	t.nsLen = uint32(len(namespace))
	t.keyLen = uint32(len(namespace) + 1 + len(id))
	t.topicEnd = t.keyLen + uint32(len(topic))
	t.payloadEnd = t.topicEnd + uint32(len(payload))
}

// setReason replaces t's reason.
func (t *timer) setReason(reason string) {
	if reason == t.reason() {
		return
	}
	t.setBlob(t.namespace(), t.id(), t.topic(), t.payload(), reason)
}

// key returns the timer's key, as store.Key makes it.
func (t *timer) key() string { return t.blob[:t.keyLen] }

func (t *timer) namespace() string { return t.blob[:t.nsLen] }

func (t *timer) id() string { return t.blob[t.nsLen+1 : t.keyLen] }

func (t *timer) topic() string { return t.blob[t.keyLen:t.topicEnd] }

func (t *timer) reason() string { return t.blob[t.payloadEnd:] }

// payload returns the timer's payload, nil if empty. Its bytes are the
// blob's: they must not be modified.
func (t *timer) payload() []byte {
	if t.payloadEnd == t.topicEnd {
		return nil
	}
	p := t.blob[t.topicEnd:t.payloadEnd]
	return unsafe.Slice(unsafe.StringData(p), len(p))
}

// record returns t's record as the store holds it. Its strings and
// payload share t's blob.
func (t *timer) record() store.Record {
	r := &t.rec
	return store.Record{
		Namespace: t.namespace(), ID: t.id(), Topic: t.topic(), Payload: t.payload(),
		Due: r.Due, Next: r.Next, SpecDue: r.SpecDue, Delay: r.Delay, Interval: r.Interval, Created: r.Created,
		State: r.State, Attempts: r.Attempts, LastAttempt: r.LastAttempt, Reason: t.reason(),
		OccEpoch: r.OccEpoch, OccSeq: r.OccSeq, Req: r.Req, ReqAt: r.ReqAt,
	}
}
