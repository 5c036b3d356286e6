package shard

import (
	"encoding/binary"
	"hash/maphash"
	"strings"
	"sync"
	"unsafe"

	"github.com/timerd/timerd/store"
)

// table holds a shard's timers in memory: a slab of fixed-size timers
// with a free list, an index from key to slot, and the byte chunks that
// hold the timers' strings and payloads. Its methods are called with
// Shard.mu held.
//
// It is laid out for the garbage collector, whose every cycle marks the
// node's whole heap while other namespaces' timers fire: nothing in it
// holds a pointer per timer. A timer is a struct without pointers; its
// strings and payload are a blob in one of the table's byte chunks,
// found by chunk number and offset; the index maps hashes to slots. A
// shard of a million timers is then a few thousand objects, none of which
// the collector has to scan but the short lists of chunks.
//
// Blobs are never written again once made, and a chunk's bytes are never
// reused: a chunk whose blobs are mostly gone has the rest copied to the
// chunk being filled and is dropped, to the collector, which frees it once
// no string or payload handed out from it is left. So what the accessors
// return stays valid, and unchanged, after its timer is gone.
//
// Namespaces and topics are interned: namespace and topic return a
// string of the table's names, not one into a chunk, so the maps that
// outlive a timer (the census, the node's delivery rates, metric labels)
// do not keep a dropped chunk alive by a name. Only past maxNames names
// do they come from the blob.
//
// DeadLetters reads the blobs of dead letters holding only guard (the
// shard's deadMu): the chunk list, the names and a blob's place change
// only with guard held too.
//
// Invariants:
//   - a slot holds a timer (blobLen > 0) or is in free;
//   - every timer is in the chain of the hash of its key, exactly once;
//   - a slot's visit only grows, across the timers that hold it, so an
//     entry left in a queue by an earlier timer never matches a later
//     one (see waitEntry);
//   - a chunk's live counts the bytes (headers included) of the blobs of
//     timers held; every chunk but the one being filled, cur, keeps at
//     least half of its bytes live, or is compacted and dropped.
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

	guard *sync.Mutex
	// blobs are the byte chunks; a dropped one has a nil buf and its
	// number in spare.
	blobs []blobChunk
	spare []uint32
	cur   uint32 // the chunk blobs are appended to

	// names are the interned namespaces and topics; named finds them.
	// Invariant: named[names[i]] == i.
	names []string
	named map[string]uint32
}

// maxNames bounds the interned names; past it a timer's namespace and
// topic come from its blob.
const maxNames = 1 << 16

// blobChunk is one byte chunk of blobs, each after an 8-byte header: the
// slot of its timer and its length, so that compaction can walk it.
type blobChunk struct {
	buf  []byte // allocated whole; not resliced, so readers need no lock
	used int    // bytes of buf written
	live int    // bytes of the blobs of timers held, headers included
}

// blobChunkSize is the size of a byte chunk of blobs; a blob of more than
// a quarter of it gets a chunk of its own.
const blobChunkSize = 64 << 10

// blobHeader is the bytes before each blob in its chunk.
const blobHeader = 8

// tableChunk is the timers one slab chunk holds.
const tableChunk = 1024

// noSlot ends an index chain.
const noSlot = ^uint32(0)

// newTable returns an empty table whose blobs change place only with
// guard held.
func newTable(guard *sync.Mutex) *table {
	return &table{index: make(map[uint64]uint32), seed: maphash.MakeSeed(), mask: ^uint64(0), guard: guard, cur: noSlot,
		named: make(map[string]uint32)}
}

func (tb *table) hash(key string) uint64 { return maphash.String(tb.seed, key) & tb.mask }

// len returns the timers held.
func (tb *table) len() int { return tb.n }

// at returns the timer in slot, which must have held one.
func (tb *table) at(slot uint32) *timer {
	return &tb.chunks[slot/tableChunk][slot%tableChunk]
}

// get returns the timer of key, or nil.
func (tb *table) get(key string) *timer {
	slot, ok := tb.index[tb.hash(key)]
	for ok && slot != noSlot {
		t := tb.at(slot)
		if tb.key(t) == key {
			return t
		}
		slot = t.hnext
	}
	return nil
}

// add makes a timer of rec's fields, which must not be held already, and
// returns it, unarmed and not counted anywhere else. It does not retain
// rec.
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
	t := tb.at(slot) // zero but for its visit (see remove)
	t.slot = slot
	t.rec = record{
		Due: rec.Due, Next: rec.Next, SpecDue: rec.SpecDue, Delay: rec.Delay, Interval: rec.Interval, Created: rec.Created,
		LastAttempt: rec.LastAttempt, ReqAt: rec.ReqAt,
		OccEpoch: rec.OccEpoch, OccSeq: rec.OccSeq, Req: rec.Req,
		Attempts: rec.Attempts, State: rec.State,
	}
	tb.setBlob(t, rec.Namespace, rec.ID, rec.Topic, rec.Payload, rec.Reason)
	t.nsName, t.topicName = tb.intern(rec.Namespace), tb.intern(rec.Topic)
	h := tb.hash(tb.key(t))
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
	h := tb.hash(tb.key(t))
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
	tb.freeBlob(t)
	slot, visit := t.slot, t.visit+1
	*t = timer{slot: slot, visit: visit}
	tb.free = append(tb.free, slot)
	tb.n--
}

// intern returns the number of name, or noSlot once the table holds
// maxNames names.
func (tb *table) intern(name string) uint32 {
	if i, ok := tb.named[name]; ok {
		return i
	}
	if len(tb.names) >= maxNames {
		return noSlot
	}
	name = strings.Clone(name) // not the caller's, which may be a blob's
	tb.guard.Lock()
	tb.names = append(tb.names, name)
	tb.guard.Unlock()
	i := uint32(len(tb.names) - 1)
	tb.named[name] = i
	return i
}

// setBlob writes t's blob, in place of the one it had: the key
// (namespace, a zero byte, id), the topic, the payload, the reason.
func (tb *table) setBlob(t *timer, namespace, id, topic string, payload []byte, reason string) {
	n := len(namespace) + 1 + len(id) + len(topic) + len(payload) + len(reason)
	if t.blobLen > 0 {
		tb.freeBlob(t)
	}
	c, off := tb.alloc(t.slot, n)
	b := tb.blobs[c].buf[off : off+n]
	i := copy(b, namespace)
	b[i] = 0
	i++
	i += copy(b[i:], id)
	i += copy(b[i:], topic)
	i += copy(b[i:], payload)
	copy(b[i:], reason)
	t.chunk, t.off, t.blobLen = c, uint32(off), uint32(n)
	t.nsLen = uint32(len(namespace))
	t.keyLen = uint32(len(namespace) + 1 + len(id))
	t.topicEnd = t.keyLen + uint32(len(topic))
	t.payloadEnd = t.topicEnd + uint32(len(payload))
}

// alloc makes room for a blob of n bytes of the timer in slot and returns
// where its bytes go: chunk c at off. Its header is written.
func (tb *table) alloc(slot uint32, n int) (c uint32, off int) {
	need := blobHeader + n
	if need > blobChunkSize/4 {
		tb.guard.Lock()
		c = tb.newChunkLocked(need)
		tb.guard.Unlock()
		return c, tb.place(c, slot, n)
	}
	if !tb.fits(need) {
		tb.guard.Lock()
		old := tb.cur
		tb.cur = tb.newChunkLocked(blobChunkSize)
		tb.guard.Unlock()
		if old != noSlot {
			tb.tidyChunk(old) // no longer filled: it may be mostly gone
		}
	}
	return tb.cur, tb.place(tb.cur, slot, n)
}

// fits reports whether the chunk being filled has need bytes left.
func (tb *table) fits(need int) bool {
	return tb.cur != noSlot && tb.blobs[tb.cur].used+need <= len(tb.blobs[tb.cur].buf)
}

// newChunkLocked adds a chunk of size bytes and returns its number.
func (tb *table) newChunkLocked(size int) uint32 {
	ch := blobChunk{buf: make([]byte, size)}
	if n := len(tb.spare); n > 0 {
		c := tb.spare[n-1]
		tb.spare = tb.spare[:n-1]
		tb.blobs[c] = ch
		return c
	}
	tb.blobs = append(tb.blobs, ch)
	return uint32(len(tb.blobs) - 1)
}

// freeBlob lets t's blob go, and tidies its chunk.
func (tb *table) freeBlob(t *timer) {
	c := t.chunk
	tb.blobs[c].live -= blobHeader + int(t.blobLen)
	t.blobLen = 0
	tb.tidyChunk(c)
}

// tidyChunk drops chunk c if it is not being filled and holds no live
// blob, or copies its live blobs to the chunk being filled and drops it if
// fewer than half its bytes are live. Each byte copied was written once
// and is copied once per time as many bytes of its chunk are let go, so
// copying costs O(1) amortized per byte of blob made. A chunk that stops
// being filled while it copies is tidied when its next blob goes.
func (tb *table) tidyChunk(c uint32) {
	if ch := &tb.blobs[c]; c == tb.cur || ch.live > 0 && ch.live*2 >= len(ch.buf) {
		return
	}
	tb.guard.Lock()
	defer tb.guard.Unlock()
	// buf and used stay as they are while the chunk is walked; live is
	// read from tb.blobs, which newChunkLocked may grow. Only blobs of a
	// quarter chunk or less share a chunk, so each fits a new one.
	buf, used := tb.blobs[c].buf, tb.blobs[c].used
	for p := 0; tb.blobs[c].live > 0 && p < used; {
		slot := binary.LittleEndian.Uint32(buf[p:])
		n := int(binary.LittleEndian.Uint32(buf[p+4:]))
		off := p + blobHeader
		p = off + n
		t := tb.at(slot)
		if t.blobLen == 0 || t.chunk != c || int(t.off) != off {
			continue // gone, or moved since
		}
		if !tb.fits(blobHeader + n) {
			tb.cur = tb.newChunkLocked(blobChunkSize)
		}
		at := tb.place(tb.cur, slot, n)
		copy(tb.blobs[tb.cur].buf[at:], buf[off:off+n])
		tb.blobs[c].live -= blobHeader + n
		t.chunk, t.off = tb.cur, uint32(at)
	}
	tb.blobs[c] = blobChunk{}
	tb.spare = append(tb.spare, c)
}

// place takes the room for a blob of n bytes of the timer in slot at the
// end of chunk c, which has it, writes its header and returns where its
// bytes go.
func (tb *table) place(c, slot uint32, n int) (off int) {
	ch := &tb.blobs[c]
	binary.LittleEndian.PutUint32(ch.buf[ch.used:], slot)
	binary.LittleEndian.PutUint32(ch.buf[ch.used+4:], uint32(n))
	off = ch.used + blobHeader
	ch.used += blobHeader + n
	ch.live += blobHeader + n
	return off
}

// blob returns t's blob.
func (tb *table) blob(t *timer) string {
	return unsafe.String(&tb.blobs[t.chunk].buf[t.off], t.blobLen)
}

// setReason replaces t's reason.
func (tb *table) setReason(t *timer, reason string) {
	if reason == tb.reason(t) {
		return
	}
	// The old blob stays as it is (setBlob writes elsewhere), and so
	// do the strings and payload taken from it.
	b, payload := tb.blob(t), tb.payload(t)
	tb.setBlob(t, b[:t.nsLen], b[t.nsLen+1:t.keyLen], b[t.keyLen:t.topicEnd], payload, reason)
}

// key returns t's key, as store.Key makes it.
func (tb *table) key(t *timer) string { return tb.blob(t)[:t.keyLen] }

// namespace returns t's namespace, interned unless the table holds
// maxNames names.
func (tb *table) namespace(t *timer) string {
	if t.nsName != noSlot {
		return tb.names[t.nsName]
	}
	return tb.blob(t)[:t.nsLen]
}

func (tb *table) id(t *timer) string { return tb.blob(t)[t.nsLen+1 : t.keyLen] }

// topic returns t's topic, interned unless the table holds maxNames
// names.
func (tb *table) topic(t *timer) string {
	if t.topicName != noSlot {
		return tb.names[t.topicName]
	}
	return tb.blob(t)[t.keyLen:t.topicEnd]
}

func (tb *table) reason(t *timer) string { return tb.blob(t)[t.payloadEnd:] }

// payload returns t's payload, nil if empty. Its bytes must not be
// modified.
func (tb *table) payload(t *timer) []byte {
	if t.payloadEnd == t.topicEnd {
		return nil
	}
	p := tb.blob(t)[t.topicEnd:t.payloadEnd]
	return unsafe.Slice(unsafe.StringData(p), len(p))
}

// record returns t's record as the store holds it. Its strings and
// payload share t's blob.
func (tb *table) record(t *timer) store.Record {
	r := &t.rec
	return store.Record{
		Namespace: tb.namespace(t), ID: tb.id(t), Topic: tb.topic(t), Payload: tb.payload(t),
		Due: r.Due, Next: r.Next, SpecDue: r.SpecDue, Delay: r.Delay, Interval: r.Interval, Created: r.Created,
		State: r.State, Attempts: r.Attempts, LastAttempt: r.LastAttempt, Reason: tb.reason(t),
		OccEpoch: r.OccEpoch, OccSeq: r.OccSeq, Req: r.Req, ReqAt: r.ReqAt,
	}
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
