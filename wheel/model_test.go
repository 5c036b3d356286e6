package wheel

import (
	"cmp"
	"container/heap"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// model is the reference the wheel is checked against: a min-heap of
// (fire tick, sequence) with lazy deletion. It knows nothing of levels or
// slots; it only encodes the contract: a timer fires in the first Advance
// that reaches the first tick starting at or after its due time.
type model struct {
	origin  int64
	tickMs  int64
	done    int64 // the last tick processed; -1 before the first
	seq     uint64
	h       entryHeap
	live    map[Handle]*refEntry
	handles []Handle // every handle ever issued, live or stale
}

type refEntry struct {
	h     Handle
	due   int64
	tick  int64
	value uint64
	seq   uint64 // the entry is current while live[h].seq == seq
}

type entryHeap []refEntry

func (h entryHeap) Len() int { return len(h) }
func (h entryHeap) Less(i, j int) bool {
	return cmp.Or(cmp.Compare(h[i].tick, h[j].tick), cmp.Compare(h[i].seq, h[j].seq)) < 0
}
func (h entryHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *entryHeap) Push(x any)   { *h = append(*h, x.(refEntry)) }
func (h *entryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func newModel(origin, tickMs int64) *model {
	return &model{origin: origin, tickMs: tickMs, done: -1, live: make(map[Handle]*refEntry)}
}

func (m *model) tickOf(due int64) int64 {
	if due <= m.origin {
		return 0
	}
	return (due - m.origin + m.tickMs - 1) / m.tickMs
}

func (m *model) beyond(due int64) bool {
	t := m.tickOf(due)
	return t > m.done && (t-(m.done+1) >= MaxSpan || t >= maxTick)
}

func (m *model) put(h Handle, due int64, value uint64) {
	m.seq++
	e := refEntry{h: h, due: due, tick: m.tickOf(due), value: value, seq: m.seq}
	m.live[h] = &e
	heap.Push(&m.h, e)
}

func (m *model) advance(now int64) []refEntry {
	if now >= m.origin {
		m.done = max(m.done, (now-m.origin)/m.tickMs)
	}
	var fired []refEntry
	for len(m.h) > 0 && m.h[0].tick <= m.done {
		e := heap.Pop(&m.h).(refEntry)
		if cur, ok := m.live[e.h]; ok && cur.seq == e.seq {
			delete(m.live, e.h)
			fired = append(fired, e)
		}
	}
	return fired
}

// keep puts back due timers a bounded Advance left behind: they are still
// due, and the next Advance must return them.
func (m *model) keep(left []refEntry) {
	for _, e := range left {
		m.live[e.h] = &e
		heap.Push(&m.h, e)
	}
}

// minTick returns the earliest fire tick of a live timer.
func (m *model) minTick() (int64, bool) {
	for len(m.h) > 0 {
		if cur, ok := m.live[m.h[0].h]; ok && cur.seq == m.h[0].seq {
			return m.h[0].tick, true
		}
		heap.Pop(&m.h)
	}
	return 0, false
}

// ops decodes a byte string into wheel operations; the fuzzer mutates it.
type ops struct{ b []byte }

func (o *ops) byte() byte {
	if len(o.b) == 0 {
		return 0
	}
	c := o.b[0]
	o.b = o.b[1:]
	return c
}

func (o *ops) u32() uint32 {
	var buf [4]byte
	n := copy(buf[:], o.b)
	o.b = o.b[n:]
	return binary.LittleEndian.Uint32(buf[:])
}

// offset returns a signed time offset in ms, biased toward the values that
// matter to a wheel: zero, small, slot and level boundaries, far ahead.
func (o *ops) offset() int64 {
	k := o.byte()
	switch k % 8 {
	case 0:
		return int64(k>>3) - 8 // -8..23
	case 1:
		lvl := int(k>>3) % numLevels
		return int64(1)<<(slotBits*(lvl+1)) + int64(int8(o.byte())) // level boundary ± 127
	case 2:
		return int64(o.u32() % 70_000) // a minute or so
	case 3:
		return int64(o.u32()) // up to ~50 days
	case 4:
		return int64(o.u32())<<10 | int64(o.byte()) // up to ~140 years
	case 5:
		return MaxSpan - 4 + int64(k>>3)%8 // around the horizon
	case 6:
		return -int64(o.u32() % 100_000) // the past
	default:
		return int64(o.byte())
	}
}

// run applies the operations in data to a wheel and to the model and fails
// t at the first difference.
func run(t *testing.T, tickMs int64, origin int64, data []byte) {
	w, err := New(Config{Tick: time.Duration(tickMs) * time.Millisecond, Start: origin})
	if err != nil {
		t.Fatal(err)
	}
	m := newModel(origin, tickMs)
	o := &ops{b: data}
	now := origin
	var dst []Timer
	var value uint64
	for step := 0; len(o.b) > 0; step++ {
		pickAt := func() (int, bool) {
			if len(m.handles) == 0 {
				return 0, false
			}
			return int(o.u32()) % len(m.handles), true
		}
		pick := func() (Handle, bool) {
			i, ok := pickAt()
			if !ok {
				return 0, false
			}
			return m.handles[i], true
		}
		switch op := o.byte() % 10; op {
		case 0, 1, 2, 3: // add one, or a burst that fills several chunks of one slot
			due, burst := now+o.offset(), 1
			if op == 3 {
				burst = int(o.byte()) * 2
			}
			for range burst {
				value++
				h, err := w.Add(due, value)
				if beyond := m.beyond(due); beyond != errors.Is(err, ErrBeyondHorizon) || (!beyond && err != nil) {
					t.Fatalf("step %d: Add(%d) at %d: err %v, model beyond=%v", step, due, now, err, beyond)
				}
				if err == nil {
					if _, ok := m.live[h]; ok {
						t.Fatalf("step %d: Add returned a live handle %#x", step, h)
					}
					m.put(h, due, value)
					m.handles = append(m.handles, h)
				}
			}
		case 4: // cancel one, or a run of consecutive handles
			first, ok := pickAt()
			if !ok {
				continue
			}
			run := 1
			if k := o.byte(); k&1 == 1 {
				run = int(k) * 2
			}
			for _, h := range m.handles[first:min(first+run, len(m.handles))] {
				_, live := m.live[h]
				if got := w.Cancel(h); got != live {
					t.Fatalf("step %d: Cancel(%#x) = %v, model live=%v", step, h, got, live)
				}
				delete(m.live, h)
			}
		case 5: // reschedule
			h, ok := pick()
			if !ok {
				continue
			}
			due := now + o.offset()
			err := w.Reschedule(h, due)
			cur, live := m.live[h]
			switch {
			case !live:
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("step %d: Reschedule of stale %#x: %v", step, h, err)
				}
			case m.beyond(due):
				if !errors.Is(err, ErrBeyondHorizon) {
					t.Fatalf("step %d: Reschedule(%d) past horizon: %v", step, due, err)
				}
			case err != nil:
				t.Fatalf("step %d: Reschedule(%#x, %d): %v", step, h, due, err)
			default:
				m.put(h, due, cur.value)
			}
		case 6: // lookup
			h, ok := pick()
			if !ok {
				continue
			}
			due, v, ok := w.Lookup(h)
			cur, live := m.live[h]
			if ok != live || (live && (due != cur.due || v != cur.value)) {
				t.Fatalf("step %d: Lookup(%#x) = %d, %d, %v; model %+v", step, h, due, v, ok, cur)
			}
		default: // advance, sometimes backwards, sometimes far
			switch k := o.byte(); k % 4 {
			case 0:
				now -= int64(k >> 2)
			case 1:
				now += int64(k >> 2)
			default:
				now += o.offset()
			}
			if lb := o.byte(); lb&1 == 0 {
				dst = w.Advance(now, dst[:0])
				check(t, step, dst, m.advance(now))
			} else {
				// A bounded expiry: at most limit of the due timers,
				// exactly limit if that many are due; the rest stay due.
				limit := int(lb>>1) + 1
				dst = w.AdvanceLimit(now, dst[:0], limit)
				m.keep(checkSome(t, step, dst, m.advance(now), limit))
			}
		}
		if step%8 == 0 || len(o.b) == 0 {
			// The full walk costs O(lists + timers); every few steps
			// still pins a broken invariant to a short stretch.
			checkInvariants(t, step, w)
		}
		if w.Len() != len(m.live) {
			t.Fatalf("step %d: Len() = %d, model %d", step, w.Len(), len(m.live))
		}
		next, ok := w.Next()
		mt, mok := m.minTick()
		if ok != mok {
			t.Fatalf("step %d: Next() ok=%v, model %v", step, ok, mok)
		}
		if ok {
			fire := origin + mt*tickMs
			if mt <= m.done {
				fire = w.Now() // already due
			}
			if next > fire {
				t.Fatalf("step %d: Next() = %d is later than the earliest timer at %d (tick %d origin %d done %d now %d elapsed %d occ %x)", step, next, fire, tickMs, origin, m.done, w.Now(), w.elapsed, w.occupied)
			}
			if mt > m.done && next <= origin+m.done*tickMs {
				t.Fatalf("step %d: Next() = %d is not after the processed tick %d", step, next, m.done)
			}
		}
		// Upcoming leaves out what is due already, but is no later than
		// the earliest timer that is not.
		up, uok := w.Upcoming()
		if uok && !ok {
			t.Fatalf("step %d: Upcoming() = %d with no timer pending", step, up)
		}
		first := int64(-1)
		if step%8 == 0 { // a walk over every live timer
			for _, e := range m.live {
				if e.tick > m.done && (first < 0 || e.tick < first) {
					first = e.tick
				}
			}
		}
		if first >= 0 && (!uok || up > origin+first*tickMs) {
			t.Fatalf("step %d: Upcoming() = %d, %v; the earliest timer not yet due fires at %d", step, up, uok, origin+first*tickMs)
		}
	}
}

func check(t *testing.T, step int, got []Timer, want []refEntry) {
	t.Helper()
	for i := 1; i < len(got); i++ {
		if got[i].Due < got[i-1].Due {
			t.Fatalf("step %d: Advance out of due order: %d after %d", step, got[i].Due, got[i-1].Due)
		}
	}
	g := slices.Clone(got)
	slices.SortFunc(g, func(a, b Timer) int { return cmp.Compare(a.Value, b.Value) })
	slices.SortFunc(want, func(a, b refEntry) int { return cmp.Compare(a.value, b.value) })
	if len(g) != len(want) {
		t.Fatalf("step %d: Advance fired %d timers, model %d\n got %v\nwant %v", step, len(g), len(want), g, want)
	}
	for i := range g {
		if g[i].Value != want[i].value || g[i].Due != want[i].due || g[i].Handle != want[i].h {
			t.Fatalf("step %d: fired %+v, model %+v", step, g[i], want[i])
		}
	}
}

// checkSome checks what a bounded Advance returned against the timers the
// model says are due: a subset of them in order of due time, limit of them
// or all. It returns the due timers left behind.
func checkSome(t *testing.T, step int, got []Timer, due []refEntry, limit int) []refEntry {
	t.Helper()
	if want := min(limit, len(due)); len(got) != want {
		t.Fatalf("step %d: bounded Advance fired %d timers, want %d (limit %d, %d due)", step, len(got), want, limit, len(due))
	}
	for i := 1; i < len(got); i++ {
		if got[i].Due < got[i-1].Due {
			t.Fatalf("step %d: Advance out of due order: %d after %d", step, got[i].Due, got[i-1].Due)
		}
	}
	byHandle := make(map[Handle]refEntry, len(due))
	for _, e := range due {
		byHandle[e.h] = e
	}
	for _, g := range got {
		e, ok := byHandle[g.Handle]
		if !ok {
			t.Fatalf("step %d: bounded Advance fired %+v, which is not due (or fired twice)", step, g)
		}
		if g.Value != e.value || g.Due != e.due {
			t.Fatalf("step %d: fired %+v, model %+v", step, g, e)
		}
		delete(byHandle, g.Handle)
	}
	left := make([]refEntry, 0, len(byHandle))
	for _, e := range due {
		if _, ok := byHandle[e.h]; ok {
			left = append(left, e)
		}
	}
	return left
}

// TestMatchesModel runs long random operation sequences against the
// reference for several tick sizes and starts.
func TestMatchesModel(t *testing.T) {
	cases := []struct {
		tickMs int64
		origin int64
	}{{1, 0}, {1, start}, {1, 1<<42 - 3}, {3, start}, {10, 0}, {1000, start}}
	seeds := 50
	if testing.Short() {
		seeds = 20
	}
	for _, c := range cases {
		for seed := range seeds {
			r := rand.New(rand.NewPCG(uint64(seed), uint64(c.tickMs)))
			data := make([]byte, 4000)
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			run(t, c.tickMs, c.origin, data)
		}
	}
}

// FuzzWheel lets the fuzzer search for an operation sequence on which the
// wheel and the reference disagree: go test -fuzz FuzzWheel ./wheel
func FuzzWheel(f *testing.F) {
	f.Add(uint8(1), []byte{0, 0, 9, 1, 9, 2})
	f.Add(uint8(10), []byte{0, 1, 3, 0, 5, 0, 0, 0, 0, 14, 9, 3, 255})
	f.Add(uint8(1), []byte{0, 4, 1, 2, 3, 4, 1, 0, 0, 0, 0, 9, 3, 4, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, tick uint8, data []byte) {
		// run's invariant checks cost O(lists + timers) each: keep inputs
		// short and many.
		run(t, int64(tick%16)+1, start, data[:min(len(data), 2048)])
	})
}

// checkInvariants walks every list of w and fails t where a documented
// invariant of the wheel does not hold.
func checkInvariants(t *testing.T, step int, w *Wheel) {
	t.Helper()
	pending := make(map[uint32]bool)
	chunks := 0
	for l := range uint32(numLists) {
		ls := &w.lists[l]
		occupied := w.occupied[l>>6]&(1<<(l&63)) != 0
		if occupied != (ls.n > 0) {
			t.Fatalf("step %d: list %d occupied bit %v, but %d entries", step, l, occupied, ls.n)
		}
		if ls.scan && (l >= numSlots || ls.n > entryChunk) {
			t.Fatalf("step %d: list %d has scan set with %d entries", step, l, ls.n)
		}
		lvl, slot := l>>slotBits, uint64(l&slotMask)
		shift := lvl * slotBits
		c, n := ls.head, ls.n
		dead, prev := uint32(0), uint32(none)
		for n > 0 {
			chunks++
			k := min(n, entryChunk)
			if w.chunks[c].prev != prev {
				t.Fatalf("step %d: list %d chunk %d: prev %d, want %d", step, l, c, w.chunks[c].prev, prev)
			}
			chunkDead := uint32(0)
			for off, e := range w.entries[c][:k] {
				if e.idx == none {
					chunkDead++
					continue
				}
				nd := w.node(e.idx)
				if pos := position(c, uint32(off)); nd.gen != e.gen || nd.due != e.due || (nd.pos != pos && !ls.scan) || pending[e.idx] {
					t.Fatalf("step %d: entry %+v at %#x, node %+v (seen before: %v)", step, e, pos, *nd, pending[e.idx])
				}
				pending[e.idx] = true
				tk := w.tickOf(e.due)
				switch {
				case l == readyList:
					if tk >= w.elapsed {
						t.Fatalf("step %d: ready entry %+v has tick %d >= elapsed %d", step, e, tk, w.elapsed)
					}
				case tk < w.elapsed:
					t.Fatalf("step %d: entry %+v at level %d has tick %d < elapsed %d", step, e, lvl, tk, w.elapsed)
				case (tk^w.elapsed)>>(shift+slotBits) != 0:
					t.Fatalf("step %d: entry %+v at level %d: tick %#x and elapsed %#x differ above the level", step, e, lvl, tk, w.elapsed)
				case tk>>shift&slotMask != slot:
					t.Fatalf("step %d: entry %+v in slot %d of level %d has tick %#x", step, e, slot, lvl, tk)
				case lvl > 0 && slot <= w.elapsed>>shift&slotMask:
					t.Fatalf("step %d: entry %+v in slot %d of level %d, not after elapsed %#x", step, e, slot, lvl, w.elapsed)
				case ls.minTick > tk || ls.maxTick < tk:
					t.Fatalf("step %d: list %d ticks [%d, %d] do not bound entry tick %d", step, l, ls.minTick, ls.maxTick, tk)
				case w.listOf(tk) != l:
					t.Fatalf("step %d: entry %+v is in list %d, listOf says %d", step, e, l, w.listOf(tk))
				}
			}
			if chunkDead != w.chunks[c].dead || chunkDead == k {
				t.Fatalf("step %d: list %d chunk %d: %d of %d entries dead, counted %d", step, l, c, chunkDead, k, w.chunks[c].dead)
			}
			dead += chunkDead
			n -= k
			prev = c
			if n > 0 {
				c = w.chunks[c].next
			} else if c != ls.tail || w.chunks[c].next != none {
				t.Fatalf("step %d: list %d ends in chunk %d (next %d), tail is %d", step, l, c, w.chunks[c].next, ls.tail)
			}
		}
		if dead != ls.dead || (ls.n > 0 && dead*2 >= ls.n) {
			t.Fatalf("step %d: list %d has %d dead of %d entries, counted %d", step, l, dead, ls.n, ls.dead)
		}
	}
	if len(pending) != w.Len() {
		t.Fatalf("step %d: %d timers have a live entry, Len() = %d", step, len(pending), w.Len())
	}
	free := 0
	for c := w.freeChunk; c != none; c = w.chunks[c].next {
		free++
	}
	if chunks+free != len(w.entries) {
		t.Fatalf("step %d: %d chunks in lists + %d free != %d allocated", step, chunks, free, len(w.entries))
	}
}
