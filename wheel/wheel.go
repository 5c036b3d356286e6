// Package wheel owns the hierarchical timing wheel at the heart of a shard:
// the in-memory index of pending timers that says which of them are due.
//
// It is a cascading wheel of the Varghese & Lauck scheme-7 family: six
// levels of 256 slots. Level L covers 256^(L+1) ticks, one slot being 256^L
// ticks wide. A timer is kept at the lowest level whose current rotation
// contains its tick, and moves (cascades) one level down each time the wheel
// reaches the slot that holds it, so that it always fires in exactly the
// tick that contains its due time: never early, and at most one tick late.
// An occupancy bitmap per level (four 64-bit words) finds the next
// non-empty slot without scanning slots, so an idle owner can sleep until
// Next instead of ticking.
//
// The package is a pure data structure: it starts no goroutines, reads no
// clock and does no I/O. The owner passes time in (unix milliseconds, or any
// other millisecond clock it keeps consistently) and drives the wheel with
// Advance. A Wheel is not safe for concurrent use; its owner serializes
// calls.
//
// # Layout
//
// A timer is a 16-byte node in a slab (due time, generation, position of
// its entry) plus a 24-byte entry (due time, the caller's value, node index,
// generation) in the list of the slot that holds it. Both live in
// fixed-size arrays that hold no pointers, so millions of pending timers
// cost the garbage collector nothing to scan, and both are recycled, so a
// wheel in steady state does not allocate. A slot's list is a chain of
// 256-entry chunks: cascading a slot copies its entries to their new lists
// sequentially (or, when most of them share one tick, as a herd due at one
// instant does, and that tick's list is empty, hands it the whole chain and
// copies out only the others), and firing one reads only its entries, freeing each node
// with stores the processor does not wait for. A pending timer costs 40
// bytes of wheel memory, plus at most one partly filled chunk per slot.
//
// Cancel and Reschedule find the entry through the node and mark it dead
// rather than unlink it. (An entry cascaded into a small level-0 list, due
// within 256 ticks, is not recorded in its node: a cancel that late scans
// that one chunk instead, which saves firing a store to a cold node.) A
// dead entry is skipped when its slot fires and dropped when it cascades,
// and a slot that becomes half dead is compacted at once, so dead entries
// never outnumber live ones and memory follows the pending count.
//
// # Costs
//
// Add is O(1); Cancel and Reschedule are O(1) amortized over slot
// compactions. Advance costs O(fired + levels) per call plus,
// amortized, at most one cascade per level per timer over its life; it
// never depends on how many timers are pending or on how long the wheel
// was idle. AdvanceLimit bounds the fired part: a tick with more due
// timers than the call may hand out moves to the ready list whole (O(1)
// when that list is empty, one copy per timer otherwise), and later calls
// take the leftovers from its head, a chunk at a time, as Cancel would.
//
// # Invariants
//
// Checked after every step of the tests against a min-heap reference:
//   - every live entry's tick is >= elapsed (the first unprocessed tick),
//     or the entry is on the ready list;
//   - a live entry at level L shares every bit above level L with elapsed,
//     so its slot at level L is >= elapsed's, and strictly greater for
//     L > 0; hence which list holds a live entry follows from its tick and
//     elapsed alone;
//   - therefore the lowest non-empty level holds the earliest timers, and
//     within it the lowest occupied slot does;
//   - a pending node's pos names its one live entry, unless that entry
//     sits in a level-0 list marked scan, which holds at most one chunk;
//   - fewer than half of a non-empty list's entries are dead.
package wheel

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"time"
)

// Errors returned by the wheel. Check them with errors.Is.
var (
	// ErrBeyondHorizon is returned for a due time further ahead than the
	// wheel can hold (MaxSpan ticks past the current time). The wheel does
	// not wrap such a timer around; it refuses it.
	ErrBeyondHorizon = errors.New("wheel: due time beyond the horizon")
	// ErrNotFound is returned for a handle that does not name a pending
	// timer: it fired, was cancelled, or never came from this wheel.
	ErrNotFound = errors.New("wheel: no pending timer for handle")
	// ErrFull is returned when the wheel holds as many timers as its 32-bit
	// indices can address.
	ErrFull = errors.New("wheel: too many pending timers")
	// ErrInvalidConfig is wrapped by Config.Validate errors, which name the
	// bad field.
	ErrInvalidConfig = errors.New("wheel: invalid config")
)

const (
	slotBits   = 8
	numSlots   = 1 << slotBits // slots per level
	slotMask   = numSlots - 1
	numLevels  = 6
	levelWords = numSlots / 64 // occupancy words per level

	// MaxSpan is how far ahead of the wheel's current tick a timer may be
	// due, in ticks: 2^42 ticks, about 139 years at the default 1 ms tick.
	// The six levels address 2^48 ticks; the margin keeps the horizon a
	// full MaxSpan for the first 8,000 years of a wheel's life.
	MaxSpan = 1 << 42
	// maxTick is the first tick the levels cannot address.
	maxTick = 1 << (numLevels * slotBits)

	// Lists [0, readyList) are the slots, list l being slot l&slotMask of
	// level l>>slotBits; readyList holds entries whose tick has already
	// passed. A list's occupancy bit is bit l&63 of word l>>6.
	readyList = numLevels * numSlots
	numLists  = readyList + 1

	nodeBits  = 12
	nodeChunk = 1 << nodeBits // nodes per slab chunk (64 KiB)
	nodeMask  = nodeChunk - 1

	entryBits  = 8
	entryChunk = 1 << entryBits // entries per list chunk (6 KiB)
	entryMask  = entryChunk - 1

	maxIndex   = 1<<32 - 1 // the most nodes; also "none"
	none       = maxIndex
	maxChunks  = 1 << (32 - entryBits) // the most entry chunks a position can name
	retiredGen = 1<<32 - 2             // the generation of a node that is never reused

	// maxStart bounds Config.Start so that tick arithmetic cannot overflow.
	maxStart = 1 << 53
)

// levelOf maps bits.Len64(tick ^ elapsed | slotMask) to a level.
var levelOf = func() (t [65]uint8) {
	for n := range t {
		if n > 0 {
			t[n] = uint8((n - 1) / slotBits)
		}
	}
	return t
}()

// Handle names a timer while it is pending. The zero Handle names none. A
// handle goes stale when its timer fires or is cancelled, and a stale handle
// never names a later timer: it carries a generation that its node never
// repeats (a node is retired before its generation could wrap).
type Handle uint64

func makeHandle(i, gen uint32) Handle { return Handle(uint64(gen)<<32 | uint64(i)) }

// Timer is a timer handed back by Advance.
type Timer struct {
	Handle Handle // stale by the time the caller sees it
	Due    int64  // the due time given to Add or Reschedule, in ms
	Value  uint64 // the caller's value given to Add
}

// Config configures a Wheel.
type Config struct {
	// Tick is the wheel's resolution: a timer fires in the first tick that
	// starts at or after its due time, so at most Tick late. A whole number
	// of milliseconds in [1ms, 1s]. Default 1ms.
	Tick time.Duration
	// Start is the wheel's initial current time, in ms on the owner's clock
	// (unix ms for a shard). Ticks are counted from it. Must be in
	// [0, 2^53). Default 0.
	Start int64
}

// DefaultConfig returns the configuration a shard uses: 1 ms ticks starting
// at start (unix ms).
func DefaultConfig(start int64) Config {
	return Config{Tick: time.Millisecond, Start: start}
}

// Validate reports the first invalid field of c.
func (c Config) Validate() error {
	if c.Tick < time.Millisecond || c.Tick > time.Second || c.Tick%time.Millisecond != 0 {
		return fmt.Errorf("%w: Tick must be a whole number of milliseconds in [1ms, 1s], got %v", ErrInvalidConfig, c.Tick)
	}
	if c.Start < 0 || c.Start >= maxStart {
		return fmt.Errorf("%w: Start must be in [0, 2^53) ms, got %d", ErrInvalidConfig, c.Start)
	}
	return nil
}

// node is one timer in the slab.
type node struct {
	due int64 // ms; exact due time, not rounded to the tick
	// gen is odd while the node holds a pending timer and even while it is
	// free. It grows on every allocation and free, so a handle matches only
	// the timer it was issued for; a node whose gen would wrap is retired.
	gen uint32
	// pos is, while pending, the position of the node's entry (chunk <<
	// entryBits | offset), unless the entry is in a level-0 list with scan
	// set; while free, the next free node or none.
	pos uint32
}

// entry places a timer in a list. A dead entry (a cancelled or moved
// timer's) has idx none and is skipped, dropped at the next cascade, or
// compacted away.
type entry struct {
	due   int64  // ms; the timer's due time
	value uint64 // the caller's value
	idx   uint32 // node index, or none
	gen   uint32 // the node's generation
}

// list is a chain of entry chunks: full chunks, then a partly full tail.
// Invariant: every chunk but the tail holds entryChunk entries, so n alone
// says how many entries each chunk holds.
type list struct {
	head, tail uint32 // entry chunks; meaningful while n > 0
	n          uint32 // entries, live and dead
	dead       uint32 // dead entries; Invariant: dead*2 < n, or n == 0
	// scan is set on a level-0 list some of whose entries were cascaded
	// in without updating their nodes' pos: a cancel this close to firing
	// finds its entry by scanning the list instead.
	// Invariant: a list with scan set holds at most entryChunk entries.
	scan bool
	// minTick and maxTick are, while n > 0, bounds on the tick of the
	// list's live entries: exact unless the earliest or latest was
	// cancelled or moved. Equal, they say every live entry has that tick.
	minTick, maxTick uint64
}

// chunk links an entry chunk into its list, or into the free pool.
type chunk struct {
	next, prev uint32 // neighbours in the list, or none; next free chunk
	dead       uint32 // dead entries in the chunk
}

// Wheel is a hierarchical timing wheel. Create it with New.
type Wheel struct {
	origin int64  // ms; the start of tick 0 (Config.Start)
	tickMs uint64 // ms per tick
	now    int64  // ms; the latest time passed to Advance, or origin

	// elapsed is the first tick not yet processed: every tick before it
	// has been fired or cascaded.
	// Invariant: see the package comment.
	elapsed uint64

	lists [numLists]list
	// occupied has one bit per list.
	// Invariant: the bit of list l is set iff lists[l].n > 0.
	occupied [numLists/64 + 1]uint64

	// Node slab: node i is nodes[i>>nodeBits][i&nodeMask].
	// Invariant: a pending node has exactly one live entry, with the
	// node's index, generation and due time, at its pos unless the entry
	// is in a scan list.
	nodes     []*[nodeChunk]node
	nodeCount uint32 // nodes pending, free or retired
	freeNode  uint32 // first free node, or none
	count     int    // pending timers

	// Entry chunk pool: chunk c is entries[c], with its links and dead
	// count in chunks[c].
	entries   []*[entryChunk]entry
	chunks    []chunk
	freeChunk uint32 // first free chunk, or none
}

// New returns an empty wheel whose current time is cfg.Start.
func New(cfg Config) (*Wheel, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Wheel{
		origin:    cfg.Start,
		tickMs:    uint64(cfg.Tick / time.Millisecond),
		now:       cfg.Start,
		freeNode:  none,
		freeChunk: none,
	}, nil
}

// node returns node i; the array chunk makes the inner index check-free.
func (w *Wheel) node(i uint32) *node { return &w.nodes[i>>nodeBits][i&nodeMask] }

// entry returns the entry at pos.
func (w *Wheel) entry(pos uint32) *entry { return &w.entries[pos>>entryBits][pos&entryMask] }

// position names entry off of chunk c.
func position(c, off uint32) uint32 { return c<<entryBits | off }

// Len returns the number of pending timers.
func (w *Wheel) Len() int { return w.count }

// Now returns the latest time passed to Advance, or Config.Start.
func (w *Wheel) Now() int64 { return w.now }

// Tick returns the wheel's resolution.
func (w *Wheel) Tick() time.Duration { return time.Duration(w.tickMs) * time.Millisecond }

// Horizon returns the latest due time Add accepts now, in ms.
func (w *Wheel) Horizon() int64 { return w.timeOf(min(w.elapsed+MaxSpan, maxTick) - 1) }

// tickOf returns the tick a timer due at due (ms) fires in: the first tick
// that starts at or after due.
func (w *Wheel) tickOf(due int64) uint64 {
	if due <= w.origin {
		return 0
	}
	d := uint64(due) - uint64(w.origin) // exact even where due-origin overflows int64
	if w.tickMs == 1 {
		return d
	}
	t := d / w.tickMs
	if d%w.tickMs != 0 {
		t++
	}
	return t
}

// timeOf returns the start of tick t in ms.
func (w *Wheel) timeOf(t uint64) int64 { return w.origin + int64(t*w.tickMs) }

// checkSpan reports whether a timer of tick t fits within the horizon and
// an entry for it within the chunk pool.
func (w *Wheel) checkSpan(t uint64, due int64) error {
	if t >= w.elapsed && (t-w.elapsed >= MaxSpan || t >= maxTick) {
		return fmt.Errorf("%w: due %d ms is past the horizon %d ms", ErrBeyondHorizon, due, w.Horizon())
	}
	if len(w.entries) >= maxChunks-numLists && w.freeChunk == none {
		// Keep a chunk per list in reserve: a cascade may need them.
		return ErrFull
	}
	return nil
}

// listOf returns the list that holds, or must hold, an entry of tick t.
func (w *Wheel) listOf(t uint64) uint32 {
	if t < w.elapsed {
		return readyList
	}
	lvl := uint32(levelOf[bits.Len64(t^w.elapsed|slotMask)])
	return lvl<<slotBits | uint32(t>>(lvl*slotBits))&slotMask
}

// Add schedules a timer due at due (ms) carrying value, and returns its
// handle. A timer whose tick the wheel has already passed (any due time at
// or before Now, with the default 1 ms tick) fires on the next Advance,
// whatever time that Advance is given. A due time past Horizon is refused
// with ErrBeyondHorizon and nothing is added.
func (w *Wheel) Add(due int64, value uint64) (Handle, error) {
	t := w.tickOf(due)
	if err := w.checkSpan(t, due); err != nil {
		return 0, err
	}
	i := w.freeNode
	if i != none {
		w.freeNode = w.node(i).pos
	} else {
		if w.nodeCount == maxIndex {
			return 0, ErrFull
		}
		if w.nodeCount&nodeMask == 0 {
			w.nodes = append(w.nodes, new([nodeChunk]node))
		}
		i = w.nodeCount
		w.nodeCount++
	}
	n := w.node(i)
	n.gen++ // even (free) to odd (pending)
	n.due = due
	n.pos = w.push(w.listOf(t), t, entry{due: due, value: value, idx: i, gen: n.gen})
	w.count++
	return makeHandle(i, n.gen), nil
}

// lookup returns the node h names, if it is pending.
func (w *Wheel) lookup(h Handle) (uint32, *node, bool) {
	i, gen := uint32(h), uint32(h>>32)
	if i >= w.nodeCount || gen&1 == 0 {
		return 0, nil, false
	}
	n := w.node(i)
	if n.gen != gen {
		return 0, nil, false
	}
	return i, n, true
}

// Lookup returns the due time and value of the pending timer h names.
func (w *Wheel) Lookup(h Handle) (due int64, value uint64, ok bool) {
	i, n, ok := w.lookup(h)
	if !ok {
		return 0, 0, false
	}
	_, pos := w.find(i, n)
	return n.due, w.entry(pos).value, true
}

// Cancel removes the pending timer h names. It reports false, and changes
// nothing, if h is stale.
func (w *Wheel) Cancel(h Handle) bool {
	i, n, ok := w.lookup(h)
	if !ok {
		return false
	}
	l, pos := w.find(i, n)
	w.free(i, n, n.gen)
	w.count--
	w.kill(l, pos)
	return true
}

// Reschedule moves the pending timer h names to due (ms), keeping its
// handle and value. It returns ErrNotFound for a stale handle and
// ErrBeyondHorizon for a due time past Horizon; either way the wheel is
// unchanged.
func (w *Wheel) Reschedule(h Handle, due int64) error {
	i, n, ok := w.lookup(h)
	if !ok {
		return ErrNotFound
	}
	if due == n.due {
		return nil
	}
	t := w.tickOf(due)
	if err := w.checkSpan(t, due); err != nil {
		return err
	}
	old, oldPos := w.find(i, n)
	n.due = due
	n.pos = w.push(w.listOf(t), t, entry{due: due, value: w.entry(oldPos).value, idx: i, gen: n.gen})
	w.kill(old, oldPos)
	return nil
}

// free returns node i, pending with generation gen, to the free list,
// making its handle stale. It only stores to the node, so a caller that
// knows gen from an entry never waits for the node to load. A node whose
// generation would wrap is retired instead, so that no handle ever names
// two timers.
func (w *Wheel) free(i uint32, n *node, gen uint32) {
	n.gen = gen + 1 // odd (pending) to even (free)
	if gen+1 == retiredGen {
		return
	}
	n.pos = w.freeNode
	w.freeNode = i
}

// push appends e, of tick t, to list l and returns its position.
func (w *Wheel) push(l uint32, t uint64, e entry) uint32 {
	ls := &w.lists[l]
	if ls.n&entryMask == 0 { // empty, or the tail chunk is full
		if ls.scan {
			w.track(l)
		}
		c := w.freeChunk
		if c != none {
			w.freeChunk = w.chunks[c].next
		} else {
			c = uint32(len(w.entries))
			w.entries = append(w.entries, new([entryChunk]entry))
			w.chunks = append(w.chunks, chunk{})
		}
		w.chunks[c] = chunk{next: none, prev: none}
		if ls.n == 0 {
			ls.head = c
			ls.minTick, ls.maxTick = t, t
			w.occupied[l>>6] |= 1 << (l & 63)
		} else {
			w.chunks[ls.tail].next = c
			w.chunks[c].prev = ls.tail
		}
		ls.tail = c
	}
	pos := position(ls.tail, ls.n&entryMask)
	w.entries[ls.tail][ls.n&entryMask] = e
	ls.n++
	ls.minTick = min(ls.minTick, t)
	ls.maxTick = max(ls.maxTick, t)
	return pos
}

// take empties list l and returns its first chunk and entry count; the
// caller walks the chain and hands every chunk to release.
func (w *Wheel) take(l uint32) (c, n uint32) {
	ls := &w.lists[l]
	c, n = ls.head, ls.n
	*ls = list{}
	w.occupied[l>>6] &^= 1 << (l & 63)
	return c, n
}

// release returns chunk c to the pool and returns the chunk after it.
func (w *Wheel) release(c uint32) uint32 {
	next := w.chunks[c].next
	w.chunks[c].next = w.freeChunk
	w.freeChunk = c
	return next
}

// kill marks the entry at pos in list l dead. A chunk whose entries are
// all dead leaves the list at once, unread: timers cancelled in about the
// order they were added free whole chunks and move nothing. A list that is
// still half dead after that is compacted, so dead entries never outnumber
// live ones and a cancel costs O(1) amortized.
func (w *Wheel) kill(l, pos uint32) {
	w.entry(pos).idx = none
	ls := &w.lists[l]
	ls.dead++
	c := pos >> entryBits
	ch := &w.chunks[c]
	ch.dead++
	fill := uint32(entryChunk)
	if c == ls.tail {
		fill = (ls.n-1)&entryMask + 1
	}
	if ch.dead == fill {
		w.unlinkChunk(l, c, fill)
	}
	if ls.n > 0 && ls.dead*2 >= ls.n {
		w.refile(l)
	}
}

// unlinkChunk removes chunk c, holding fill entries all dead, from list l
// and releases it. The list keeps its invariant: the chunks left are the
// full ones, then the tail.
func (w *Wheel) unlinkChunk(l, c, fill uint32) {
	ls := &w.lists[l]
	ch := w.chunks[c]
	ls.n -= fill
	ls.dead -= fill
	if ls.n == 0 {
		w.take(l)
		w.release(c)
		return
	}
	if ch.prev != none {
		w.chunks[ch.prev].next = ch.next
	} else {
		ls.head = ch.next
	}
	if ch.next != none {
		w.chunks[ch.next].prev = ch.prev
	} else {
		// The tail left; the chunk before it is full, and the next push
		// starts a new one.
		ls.tail = ch.prev
	}
	w.chunks[c].next = none
	w.release(c)
}

// refile takes every entry of list l and pushes the live ones to the list
// they belong in now, dropping the dead. It cascades a slot the wheel has
// reached (each entry lands on a lower level) and compacts a slot in place
// (each entry lands back in l). The pushes reuse the chunks it releases.
func (w *Wheel) refile(l uint32) {
	if ls := &w.lists[l]; ls.minTick == ls.maxTick && !ls.scan {
		// Every live entry has one tick, as a herd due at one instant
		// does: if that tick's list is another, and empty, the chain
		// moves there whole, positions and dead entries with it, so a
		// herd cascades in O(1) instead of one copy per timer per level.
		if to := w.listOf(ls.minTick); to != l && w.lists[to].n == 0 {
			moved := *ls
			w.take(l)
			w.lists[to] = moved
			w.occupied[to>>6] |= 1 << (to & 63)
			return
		}
	}
	if ls := &w.lists[l]; ls.n >= handOffMin && !ls.scan {
		// Most entries share one tick, as a herd due at one instant
		// among a few other timers does: the chain moves to that tick's
		// list whole, if it is another and empty, and only the others
		// are copied out. Their nodes (cold, a cache miss each) are not
		// written, and the herd is read once, not copied.
		if herd, ok := w.herdOf(l); ok {
			if to := w.listOf(herd); to != l && w.lists[to].n == 0 {
				w.handOff(l, to)
				return
			}
		}
	}
	c, n := w.take(l)
	for n > 0 {
		k := min(n, entryChunk)
		for _, e := range w.entries[c][:k] {
			if e.idx != none {
				w.repush(e)
			}
		}
		n -= k
		c = w.release(c)
	}
}

// handOffMin is the fewest entries a list needs for refile to hand its
// chain to the tick most of them share rather than copy them all: below
// it copying is cheap, and a cascade into a list of one chunk can leave
// its nodes alone (see repush), which a hand-off cannot.
const handOffMin = 4 * entryChunk

// herdSamples is how many chunks of a list herdOf reads an entry of.
const herdSamples = 16

// herdOf guesses the tick most entries of list l share, if any: the tick
// of one entry of each of up to herdSamples chunks spread over the list,
// when at least three quarters of them agree. It walks the list's chunk
// links, not its entries. A guess only, which costs Add nothing: handOff
// stays correct, if dearer, when it is wrong.
func (w *Wheel) herdOf(l uint32) (uint64, bool) {
	ls := &w.lists[l]
	chunks := (ls.n + entryMask) >> entryBits
	stride := max(1, chunks/herdSamples)
	var ticks [herdSamples]uint64
	k := 0
	for c, i := ls.head, uint32(0); c != none && k < herdSamples; c, i = w.chunks[c].next, i+1 {
		if i%stride != 0 {
			continue
		}
		fill := uint32(entryChunk)
		if c == ls.tail {
			fill = (ls.n-1)&entryMask + 1
		}
		// A different offset in each chunk, so that timers added in a
		// pattern that repeats every chunk cannot hide the herd.
		off := (uint32(k)*97 + 41) % fill
		ticks[k] = w.tickOf(w.entries[c][off].due) // a dead entry keeps its due time
		k++
	}
	for _, cand := range ticks[:k] {
		agree := 0
		for _, t := range ticks[:k] {
			if t == cand {
				agree++
			}
		}
		if 4*agree >= 3*k {
			return cand, true
		}
	}
	return 0, false
}

// repush pushes live entry e to the list its tick belongs in now.
func (w *Wheel) repush(e entry) {
	t := w.tickOf(e.due)
	to := w.listOf(t)
	if ls := &w.lists[to]; to < numSlots && (ls.n == 0 || ls.scan) && ls.n < entryChunk {
		// Most cascades end in a small level-0 list that fires within
		// 256 ticks: leave the cold node alone (about a tenth of the
		// cost of firing a timer) and let the rare cancel this late
		// scan the one chunk instead.
		w.push(to, t, e)
		ls.scan = true
		return
	}
	w.node(e.idx).pos = w.push(to, t, e)
}

// handOff moves the chain of list l, not a scan list, to the empty list
// to, and then copies out every live entry that belongs elsewhere, leaving
// a dead entry behind, as a cancel would. Entries that stay keep their
// positions, so their nodes stay right. If that leaves to half dead (the
// vote that chose it overstated its share), to is compacted as any list
// is.
func (w *Wheel) handOff(l, to uint32) {
	ls := w.lists[l]
	w.take(l)
	w.lists[to] = ls
	w.occupied[to>>6] |= 1 << (to & 63)
	dst := &w.lists[to]
	lo, hi := uint64(math.MaxUint64), uint64(0)
	// A herd's entries share their due time, so the tick and list of the
	// previous entry's due time answer for most: the division in tickOf
	// is the dearest part of the walk.
	lastDue, stays := int64(math.MinInt64), false
	for c := dst.head; c != none; {
		next := w.chunks[c].next
		fill := uint32(entryChunk)
		if c == dst.tail {
			fill = (dst.n-1)&entryMask + 1
		}
		for off := range w.entries[c][:fill] {
			e := &w.entries[c][off]
			if e.idx == none {
				continue
			}
			if e.due != lastDue {
				t := w.tickOf(e.due)
				lastDue, stays = e.due, w.listOf(t) == to
				if stays {
					lo, hi = min(lo, t), max(hi, t)
				}
			}
			if stays {
				continue
			}
			w.repush(*e) // may grow w.chunks: index it afresh below
			e.idx = none
			w.chunks[c].dead++
			dst.dead++
		}
		if w.chunks[c].dead == fill {
			w.unlinkChunk(to, c, fill)
			if dst.n == 0 {
				return
			}
		}
		c = next
	}
	dst.minTick, dst.maxTick = lo, hi
	if dst.dead*2 >= dst.n {
		w.refile(to)
	}
}

// find returns the list and position of pending node i's entry.
func (w *Wheel) find(i uint32, n *node) (l, pos uint32) {
	l = w.listOf(w.tickOf(n.due))
	ls := &w.lists[l]
	if !ls.scan {
		return l, n.pos
	}
	// A scan list is one chunk.
	for off, e := range w.entries[ls.head][:ls.n] {
		if e.idx == i && e.gen == n.gen {
			return l, position(ls.head, uint32(off))
		}
	}
	panic("wheel: pending timer has no entry") // unreachable: the invariants place it in l
}

// track writes every live entry's position of scan list l into its node
// and clears scan, before the list grows past one chunk.
func (w *Wheel) track(l uint32) {
	ls := &w.lists[l]
	for off, e := range w.entries[ls.head][:ls.n] {
		if e.idx != none {
			w.node(e.idx).pos = position(ls.head, uint32(off))
		}
	}
	ls.scan = false
}

// emit appends the live timers of list l to dst and frees them. When sort
// is set it orders them by due time, as the list may mix due times.
func (w *Wheel) emit(l uint32, dst []Timer, sort bool) []Timer {
	start := len(dst)
	c, n := w.take(l)
	for n > 0 {
		k := min(n, entryChunk)
		for _, e := range w.entries[c][:k] {
			if e.idx == none {
				continue
			}
			dst = append(dst, Timer{Handle: makeHandle(e.idx, e.gen), Due: e.due, Value: e.value})
			w.free(e.idx, w.node(e.idx), e.gen)
		}
		n -= k
		c = w.release(c)
	}
	w.count -= len(dst) - start
	if sort {
		sortByDue(dst[start:])
	}
	return dst
}

// emitSome appends up to limit live timers of list l to dst, in list
// order, and frees them; sort is as for emit. If the list holds more, the
// rest stays in it: the timers handed out become dead entries, which
// leave with their chunks or the list's next compaction, as cancelled
// ones do.
func (w *Wheel) emitSome(l uint32, dst []Timer, limit int, sort bool) []Timer {
	ls := &w.lists[l]
	if limit >= int(ls.n-ls.dead) {
		return w.emit(l, dst, sort)
	}
	start := len(dst)
	for len(dst)-start < limit {
		c := ls.head
		fill := uint32(entryChunk)
		if c == ls.tail {
			fill = (ls.n-1)&entryMask + 1
		}
		ch := &w.chunks[c]
		for off := range w.entries[c][:fill] {
			if len(dst)-start == limit {
				break
			}
			e := &w.entries[c][off]
			if e.idx == none {
				continue
			}
			dst = append(dst, Timer{Handle: makeHandle(e.idx, e.gen), Due: e.due, Value: e.value})
			w.free(e.idx, w.node(e.idx), e.gen)
			e.idx = none
			ch.dead++
			ls.dead++
		}
		if ch.dead == fill {
			// Invariant: the list still has live entries (limit is less
			// than its live count), so the chunk is not its last.
			w.unlinkChunk(l, c, fill)
		}
	}
	w.count -= len(dst) - start
	if ls.dead*2 >= ls.n {
		w.refile(l)
	}
	if sort {
		sortByDue(dst[start:])
	}
	return dst
}

// park moves the live entries of level-0 list l, due but over a limit, to
// the ready list, behind the timers already there. Into an empty
// ready list it moves the whole chain at once, so leaving a herd due costs
// O(1); otherwise each entry is copied once.
func (w *Wheel) park(l uint32) {
	if w.lists[l].scan {
		w.track(l) // the ready list never scans: its entries' nodes know their positions
	}
	if !w.readyPending() {
		ls := w.lists[l]
		w.take(l)
		w.lists[readyList] = ls
		w.occupied[readyList>>6] |= 1 << (readyList & 63)
		return
	}
	c, n := w.take(l)
	for n > 0 {
		k := min(n, entryChunk)
		for _, e := range w.entries[c][:k] {
			if e.idx != none {
				w.node(e.idx).pos = w.push(readyList, w.tickOf(e.due), e)
			}
		}
		n -= k
		c = w.release(c)
	}
}

// sortByDue orders ts by due time, keeping the order of equal ones. A
// herd drained in bounded calls hands out runs that are already in order,
// and checking costs one pass.
func sortByDue(ts []Timer) {
	byDue := func(a, b Timer) int { return cmp.Compare(a.Due, b.Due) }
	if !slices.IsSortedFunc(ts, byDue) {
		slices.SortStableFunc(ts, byDue)
	}
}

// readyPending reports whether the ready list has entries.
func (w *Wheel) readyPending() bool { return w.occupied[readyList>>6]&(1<<(readyList&63)) != 0 }

// nextList returns the earliest non-empty slot list and the tick at which
// the wheel reaches it (its start; for level 0, the tick of its timers).
func (w *Wheel) nextList() (l uint32, at uint64, ok bool) {
	for word := range uint32(numLevels * levelWords) {
		occ := w.occupied[word]
		if occ == 0 {
			continue
		}
		lvl := word / levelWords
		slot := word%levelWords*64 + uint32(bits.TrailingZeros64(occ))
		shift := lvl * slotBits
		base := w.elapsed &^ (1<<(shift+slotBits) - 1)
		return lvl<<slotBits | slot, base | uint64(slot)<<shift, true
	}
	return 0, 0, false
}

// Advance moves the wheel's current time to now (ms) and appends to dst
// every timer due at or before now that has not fired yet, in order of due
// time, removing them from the wheel. It returns the extended dst, so a
// caller that reuses dst[:0] advances without allocating. A timer fires in
// the first Advance whose now reaches its due time rounded up to the tick.
// A now before the current time changes nothing but still returns the
// timers added with a due time already past.
func (w *Wheel) Advance(now int64, dst []Timer) []Timer {
	return w.AdvanceLimit(now, dst, math.MaxInt)
}

// AdvanceLimit is Advance handing out at most limit timers, so that the
// work of one call is bounded however many timers came due at once. If
// more than limit are due it returns exactly limit of them and leaves the
// rest due: Next returns Now, and later calls return them. A call returns
// its timers in order of due time, but a limit changes which due timers
// go first:
//   - a tick's timers leave together if they fit in what is left of the
//     limit; otherwise the whole tick is left over, so that a herd due at
//     one instant does not hold up the few timers of the ticks after it;
//   - leftovers wait in the order their ticks came due, and each later
//     call gives them at least half its limit (all of it if the clock did
//     not move) and gives the rest to the ticks that came due since, so
//     that neither waits for the other to drain.
//
// A limit below 1 returns dst and changes nothing. The firing is bounded;
// the cascades a call makes are not, though each timer cascades at most
// once per level over its life.
func (w *Wheel) AdvanceLimit(now int64, dst []Timer, limit int) []Timer {
	if limit < 1 {
		return dst
	}
	start := len(dst)
	moves := !(now <= w.now && w.elapsed > 0 || now < w.origin)
	if w.readyPending() {
		share := limit
		if moves {
			share -= limit / 2 // the other half is for what comes due now
		}
		dst = w.emitSome(readyList, dst, share, true)
	}
	if !moves {
		return dst
	}
	w.now = now
	target := uint64(now-w.origin) / w.tickMs // the last tick to process
	for {
		l, at, ok := w.nextList()
		// A higher-level slot that starts right after target is cascaded
		// now too: elapsed becomes target+1 below, and a slot holding
		// elapsed's own position would break the level invariant.
		if !ok || at > target+1 || at == target+1 && l < numSlots {
			break
		}
		w.elapsed = at
		if l >= numSlots {
			w.refile(l)
			continue
		}
		// A level-0 slot holds one tick; its due times differ only when a
		// tick spans several ms, or in tick 0, which also holds every
		// timer due before Start.
		if ls := &w.lists[l]; int(ls.n-ls.dead) <= limit-(len(dst)-start) {
			dst = w.emit(l, dst, w.tickMs > 1 || at == 0)
		} else {
			// Too many for what is left of the limit: the tick waits
			// with the leftovers, and the ticks after it, often few
			// timers each, still leave in this call.
			w.park(l)
		}
	}
	w.elapsed = target + 1
	if left := limit - (len(dst) - start); left > 0 && w.readyPending() {
		// What came due now left budget over: the timers left behind
		// take it, and the call's timers are sorted again.
		dst = w.emitSome(readyList, dst, left, false)
		sortByDue(dst[start:])
	}
	return dst
}

// Next returns the earliest time (ms) at which Advance would return a
// timer, and false if none is pending. For a timer already due it returns
// Now. It never returns a time later than the earliest pending timer's due
// time rounded up to the tick; after a Cancel or Reschedule it may return
// an earlier time, and waking at it is harmless: the Advance that follows
// finds the true next time.
func (w *Wheel) Next() (int64, bool) {
	if w.count == 0 {
		return 0, false
	}
	if w.readyPending() {
		return w.now, true
	}
	return w.Upcoming()
}

// Upcoming is Next leaving out the leftovers of an AdvanceLimit: the
// earliest time (ms) at which a timer that has not come due yet would
// come due, and false if there is none. A caller that takes leftovers at
// its own pace sleeps until then to take the new timers' share. It is
// Now or earlier when such a timer is due already (it was added with a
// due time past, or the wheel has not been advanced to now).
func (w *Wheel) Upcoming() (int64, bool) {
	l, at, ok := w.nextList()
	if !ok {
		return 0, false
	}
	if l >= numSlots {
		at = w.lists[l].minTick
	}
	return w.timeOf(at), true
}
