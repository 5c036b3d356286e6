package wheel

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// start is an arbitrary unix-ms start that is not aligned to any level.
const start int64 = 1_763_000_000_123

func newWheel(t testing.TB, tick time.Duration, at int64) *Wheel {
	t.Helper()
	w, err := New(Config{Tick: tick, Start: at})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return w
}

func mustAdd(t testing.TB, w *Wheel, due int64, v uint64) Handle {
	t.Helper()
	h, err := w.Add(due, v)
	if err != nil {
		t.Fatalf("Add(%d, %d): %v", due, v, err)
	}
	return h
}

func values(ts []Timer) []uint64 {
	vs := make([]uint64, len(ts))
	for i, t := range ts {
		vs[i] = t.Value
	}
	return vs
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"default", DefaultConfig(start), true},
		{"zero start", Config{Tick: time.Millisecond}, true},
		{"ten ms", Config{Tick: 10 * time.Millisecond, Start: 5}, true},
		{"one second", Config{Tick: time.Second}, true},
		{"zero tick", Config{}, false},
		{"sub-ms tick", Config{Tick: time.Microsecond}, false},
		{"fractional ms", Config{Tick: 1500 * time.Microsecond}, false},
		{"too coarse", Config{Tick: 2 * time.Second}, false},
		{"negative start", Config{Tick: time.Millisecond, Start: -1}, false},
		{"start too far", Config{Tick: time.Millisecond, Start: maxStart}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.ok != (err == nil) {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
			if _, nerr := New(tt.cfg); (nerr == nil) != tt.ok {
				t.Fatalf("New() = %v, want ok=%v", nerr, tt.ok)
			}
		})
	}
}

// TestFiresExactly checks, for due times on and around every slot and level
// boundary, that a timer is not returned one millisecond before its due time
// and is returned exactly at it, and that Next reports it exactly.
func TestFiresExactly(t *testing.T) {
	offsets := []int64{0, 1, 2, 62, 63, 64, 65, 127, 128, MaxSpan - 2, MaxSpan - 1}
	for lvl := 1; lvl < numLevels; lvl++ {
		b := int64(1) << (slotBits * lvl)
		for _, off := range []int64{b - 1, b, b + 1, 2*b - 1, 2 * b, (numSlots - 1) * b, numSlots*b - 1} {
			if off < MaxSpan {
				offsets = append(offsets, off)
			}
		}
	}
	for _, base := range []int64{0, start, 1 << 36, 1<<42 - 1} {
		for _, off := range offsets {
			w := newWheel(t, time.Millisecond, base)
			due := base + off
			h := mustAdd(t, w, due, 7)
			if at, ok := w.Next(); !ok || at != due {
				t.Fatalf("base %d off %d: Next() = %d, %v; want %d", base, off, at, ok, due)
			}
			if got := w.Advance(due-1, nil); len(got) != 0 {
				t.Fatalf("base %d off %d: fired early at %d: %v", base, off, due-1, got)
			}
			if off > 1 {
				// A second look from just below: the cascades so far must
				// keep Next exact.
				if at, _ := w.Next(); at != due {
					t.Fatalf("base %d off %d: Next() after cascade = %d, want %d", base, off, at, due)
				}
			}
			got := w.Advance(due, nil)
			if len(got) != 1 || got[0] != (Timer{Handle: h, Due: due, Value: 7}) {
				t.Fatalf("base %d off %d: Advance(due) = %v", base, off, got)
			}
			if w.Len() != 0 {
				t.Fatalf("Len() = %d after firing", w.Len())
			}
			if _, ok := w.Next(); ok {
				t.Fatal("Next() reports a timer in an empty wheel")
			}
		}
	}
}

func TestPastAndNow(t *testing.T) {
	w := newWheel(t, time.Millisecond, start)
	mustAdd(t, w, start, 1) // due exactly at the start
	if got := values(w.Advance(start, nil)); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("due at start: got %v", got)
	}
	now := start + 5_000
	if got := w.Advance(now, nil); len(got) != 0 {
		t.Fatalf("empty advance returned %v", got)
	}
	// Due now, due in the past and due long before the wheel began all fire
	// on the next Advance, even one that does not move time, in due order.
	mustAdd(t, w, now, 2)
	mustAdd(t, w, now-1_000, 3)
	mustAdd(t, w, 0, 4)
	mustAdd(t, w, now+1, 5)
	if at, ok := w.Next(); !ok || at != now {
		t.Fatalf("Next() = %d, %v; want now %d", at, ok, now)
	}
	if got := values(w.Advance(now, nil)); !slices.Equal(got, []uint64{4, 3, 2}) {
		t.Fatalf("past timers: got %v, want [4 3 2]", got)
	}
	// Time going backwards fires nothing new.
	if got := w.Advance(now-10, nil); len(got) != 0 {
		t.Fatalf("backwards advance returned %v", got)
	}
	if got := values(w.Advance(now+1, nil)); !slices.Equal(got, []uint64{5}) {
		t.Fatalf("next ms: got %v", got)
	}
}

func TestCoarseTick(t *testing.T) {
	// With 10 ms ticks from 0, tick k starts at 10k ms: a timer fires in the
	// first tick starting at or after its due time, at most 9 ms late.
	w := newWheel(t, 10*time.Millisecond, 0)
	for i, due := range []int64{15, 11, 20, 19, 21} {
		mustAdd(t, w, due, uint64(i))
	}
	if at, _ := w.Next(); at != 20 {
		t.Fatalf("Next() = %d, want 20", at)
	}
	if got := w.Advance(19, nil); len(got) != 0 {
		t.Fatalf("fired before the tick: %v", got)
	}
	got := w.Advance(20, nil)
	var dues []int64
	for _, tm := range got {
		dues = append(dues, tm.Due)
	}
	if !slices.Equal(dues, []int64{11, 15, 19, 20}) {
		t.Fatalf("tick 2 fired dues %v, want [11 15 19 20] in due order", dues)
	}
	if got := values(w.Advance(29, nil)); len(got) != 0 {
		t.Fatalf("fired early: %v", got)
	}
	if got := values(w.Advance(30, nil)); !slices.Equal(got, []uint64{4}) {
		t.Fatalf("tick 3 fired %v, want [4]", got)
	}
	if w.Tick() != 10*time.Millisecond {
		t.Fatalf("Tick() = %v", w.Tick())
	}
}

func TestHorizon(t *testing.T) {
	for _, tick := range []time.Duration{time.Millisecond, 7 * time.Millisecond} {
		w := newWheel(t, tick, start)
		const century = 100 * 365 * 24 * int64(time.Hour/time.Millisecond)
		if w.Horizon()-start < century {
			t.Fatalf("tick %v: horizon %d ms ahead, want at least 100 years", tick, w.Horizon()-start)
		}
		h := mustAdd(t, w, w.Horizon(), 1)
		if _, err := w.Add(w.Horizon()+int64(tick/time.Millisecond), 2); !errors.Is(err, ErrBeyondHorizon) {
			t.Fatalf("tick %v: Add past horizon: err = %v", tick, err)
		}
		if _, err := w.Add(1<<62, 2); !errors.Is(err, ErrBeyondHorizon) {
			t.Fatalf("tick %v: Add far past horizon: err = %v", tick, err)
		}
		if err := w.Reschedule(h, w.Horizon()+int64(tick/time.Millisecond)); !errors.Is(err, ErrBeyondHorizon) {
			t.Fatalf("tick %v: Reschedule past horizon: err = %v", tick, err)
		}
		if due, v, ok := w.Lookup(h); !ok || due != w.Horizon() || v != 1 || w.Len() != 1 {
			t.Fatalf("refused calls changed the wheel: %d %d %v len %d", due, v, ok, w.Len())
		}
		// The horizon moves with time.
		before := w.Horizon()
		w.Advance(start+1_000_000, nil)
		if w.Horizon() <= before {
			t.Fatalf("horizon did not move: %d -> %d", before, w.Horizon())
		}
	}
}

func TestFarFuture(t *testing.T) {
	w := newWheel(t, time.Millisecond, start)
	const year = 365 * 24 * int64(time.Hour/time.Millisecond)
	due := start + 100*year + 12345
	mustAdd(t, w, due, 1)
	mustAdd(t, w, start+1, 2)
	if got := values(w.Advance(start+1, nil)); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("got %v", got)
	}
	// Step through the century in uneven strides; the timer must cascade
	// all the way down and fire exactly on time.
	for now := start + 1; now < due-1; now += year/3 + 977 {
		if got := w.Advance(now, nil); len(got) != 0 {
			t.Fatalf("fired early at %d", now)
		}
		if at, _ := w.Next(); at != due {
			t.Fatalf("Next() = %d at %d, want %d", at, now, due)
		}
	}
	if got := w.Advance(due-1, nil); len(got) != 0 {
		t.Fatal("fired 1 ms early")
	}
	if got := values(w.Advance(due, nil)); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("got %v at due", got)
	}
}

func TestLongIdleGap(t *testing.T) {
	w := newWheel(t, time.Millisecond, start)
	const day = 24 * int64(time.Hour/time.Millisecond)
	// An idle jump of ten years over an empty wheel, then timers placed
	// relative to the new time.
	now := start + 3650*day
	if got := w.Advance(now, nil); len(got) != 0 {
		t.Fatalf("empty wheel fired %v", got)
	}
	for i := range 100 {
		mustAdd(t, w, now+int64(i)*day+int64(i), uint64(i))
	}
	// One Advance across all of them returns them all, in order.
	got := values(w.Advance(now+200*day, nil))
	want := make([]uint64, 100)
	for i := range want {
		want[i] = uint64(i)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("long gap fired %v", got)
	}
}

func TestManyInOneSlot(t *testing.T) {
	w := newWheel(t, time.Millisecond, start)
	const n = 10_000
	due := start + 90_000
	for i := range n {
		mustAdd(t, w, due, uint64(i))
	}
	mustAdd(t, w, due+1, n)
	if got := w.Advance(due-1, nil); len(got) != 0 {
		t.Fatalf("fired %d early", len(got))
	}
	got := w.Advance(due, nil)
	if len(got) != n {
		t.Fatalf("fired %d, want %d", len(got), n)
	}
	seen := make(map[uint64]bool, n)
	for _, tm := range got {
		if tm.Due != due || seen[tm.Value] {
			t.Fatalf("bad or duplicate timer %+v", tm)
		}
		seen[tm.Value] = true
	}
	if w.Len() != 1 {
		t.Fatalf("Len() = %d, want 1", w.Len())
	}
}

// TestAdvanceLimit checks bounded expiry where the limit cuts: inside a
// slot's chunk, across the slots and levels one call passes, and beside
// timers left due before. Every call must return min(limit, due) timers,
// none early, in due order; every timer must fire exactly once; and what
// comes due after a herd must leave within the call that reaches it.
func TestAdvanceLimit(t *testing.T) {
	type call struct {
		at    int64 // ms after start
		limit int
		want  int      // timers returned
		must  []uint64 // values that must be among them
	}
	herd := func(n int, at int64, first uint64) func(*testing.T, *Wheel) {
		return func(t *testing.T, w *Wheel) {
			for i := range n {
				mustAdd(t, w, start+at, first+uint64(i))
			}
		}
	}
	cases := []struct {
		name  string
		tick  time.Duration
		setup func(*testing.T, *Wheel)
		calls []call
	}{{
		name:  "mid-chunk of one slot",
		tick:  time.Millisecond,
		setup: herd(600, 10, 0), // three chunks in one level-0 slot
		calls: []call{{9, 100, 0, nil}, {10, 100, 100, nil}, {10, 300, 300, nil}, {10, 1000, 200, nil}, {11, 10, 0, nil}},
	}, {
		name: "herd cascaded from level 2, then a later tick",
		tick: time.Millisecond,
		setup: func(t *testing.T, w *Wheel) {
			herd(700, 200_000, 0)(t, w) // level 2 until the wheel nears it
			mustAdd(t, w, start+200_001, 1000)
		},
		calls: []call{{199_999, 50, 0, nil}, {200_000, 50, 50, nil}, {200_001, 50, 50, []uint64{1000}}, {200_001, 1000, 601, nil}},
	}, {
		name: "limit ends inside a slot the call passes, later slots wait behind",
		tick: time.Millisecond,
		setup: func(t *testing.T, w *Wheel) {
			for i := range 300 {
				mustAdd(t, w, start+10+int64(i%3), uint64(i)) // 100 in each of three ticks
			}
		},
		calls: []call{{20, 150, 150, nil}, {20, 100, 100, nil}, {21, 1000, 50, nil}},
	}, {
		name: "a herd's tick waits, a later tick in the same call does not",
		tick: time.Millisecond,
		setup: func(t *testing.T, w *Wheel) {
			herd(500, 10, 0)(t, w)
			mustAdd(t, w, start+11, 1000)
		},
		calls: []call{{11, 100, 100, []uint64{1000}}, {11, 1000, 401, nil}},
	}, {
		name: "what comes due beside leftovers leaves at once",
		tick: time.Millisecond,
		setup: func(t *testing.T, w *Wheel) {
			herd(1000, 5, 0)(t, w)
			for i := range 5 {
				mustAdd(t, w, start+6+int64(i), 1000+uint64(i))
			}
		},
		// Each call gives the leftovers half its limit (32) and the tick
		// it reaches the rest, so b's timer of that tick is in it.
		calls: []call{{5, 64, 64, nil}, {6, 64, 64, []uint64{1000}}, {7, 64, 64, []uint64{1001}}, {8, 64, 64, []uint64{1002}},
			{8, 64, 64, nil}, {10, 64, 64, []uint64{1003, 1004}}, {10, 10_000, 1000 + 5 - 6*64, nil}},
	}, {
		name: "coarse tick mixes due times in a slot",
		tick: 10 * time.Millisecond,
		setup: func(t *testing.T, w *Wheel) {
			for i := range 500 {
				mustAdd(t, w, start+100+int64(i%10), uint64(i))
			}
		},
		// Ticks start at start+10k: those due at start+100 fire at
		// start+100, the rest at start+110.
		calls: []call{{99, 7, 0, nil}, {100, 7, 7, nil}, {110, 7, 7, nil}, {110, 300, 300, nil}, {130, 300, 186, nil}},
	}, {
		name:  "a limit below one changes nothing",
		tick:  time.Millisecond,
		setup: herd(10, 1, 0),
		calls: []call{{5, 0, 0, nil}, {5, -1, 0, nil}, {5, 4, 4, nil}, {5, 100, 6, nil}},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := newWheel(t, c.tick, start)
			c.setup(t, w)
			pending := w.Len()
			seen := make(map[uint64]bool)
			var dst []Timer
			for i, cl := range c.calls {
				now := start + cl.at
				dst = w.AdvanceLimit(now, dst[:0], cl.limit)
				if len(dst) != cl.want {
					t.Fatalf("call %d: %d timers, want %d", i, len(dst), cl.want)
				}
				for j, tm := range dst {
					if tm.Due > now {
						t.Fatalf("call %d: %+v fired early at %d", i, tm, now)
					}
					if j > 0 && tm.Due < dst[j-1].Due {
						t.Fatalf("call %d: out of due order: %d after %d", i, tm.Due, dst[j-1].Due)
					}
					if seen[tm.Value] {
						t.Fatalf("call %d: %+v fired twice", i, tm)
					}
					seen[tm.Value] = true
				}
				for _, v := range cl.must {
					if !slices.Contains(values(dst), v) {
						t.Fatalf("call %d: timer %d did not fire; got %v", i, v, values(dst))
					}
				}
				if next, ok := w.Next(); w.Len() > 0 && len(dst) == cl.limit && (!ok || next > now) {
					t.Fatalf("call %d: Next() = %d, %v with timers left due at %d", i, next, ok, now)
				}
				checkInvariants(t, i, w)
			}
			if len(seen) != pending || w.Len() != 0 {
				t.Fatalf("%d of %d timers fired, Len() = %d", len(seen), pending, w.Len())
			}
		})
	}
}

// TestLeftoversCanBeCancelled cancels, moves and looks up timers a limit
// left due, in a ready list moved whole and in one copied into.
func TestLeftoversCanBeCancelled(t *testing.T) {
	w := newWheel(t, time.Millisecond, start)
	var hs []Handle
	for i := range 600 {
		hs = append(hs, mustAdd(t, w, start+10+int64(i/300), uint64(i)))
	}
	got := w.AdvanceLimit(start+11, nil, 100) // 200 of tick 10 and all of tick 11 left due
	if len(got) != 100 {
		t.Fatalf("fired %d, want 100", len(got))
	}
	left := hs[100:]
	if due, v, ok := w.Lookup(left[0]); !ok || v != 100 || due != start+10 {
		t.Fatalf("Lookup of a leftover = %d, %d, %v", due, v, ok)
	}
	if !w.Cancel(left[1]) || !w.Cancel(left[450]) {
		t.Fatal("Cancel of a leftover failed")
	}
	if err := w.Reschedule(left[2], start+50); err != nil {
		t.Fatalf("Reschedule of a leftover: %v", err)
	}
	checkInvariants(t, 0, w)
	got = w.Advance(start+11, nil)
	if len(got) != 500-3 {
		t.Fatalf("then fired %d, want %d", len(got), 500-3)
	}
	for _, tm := range got {
		if tm.Value == 101 || tm.Value == 550 || tm.Value == 102 {
			t.Fatalf("cancelled or moved timer %d fired", tm.Value)
		}
	}
	if got = w.Advance(start+50, nil); len(got) != 1 || got[0].Value != 102 {
		t.Fatalf("moved leftover fired as %v", values(got))
	}
}

func TestCancelReschedule(t *testing.T) {
	w := newWheel(t, time.Millisecond, start)
	a := mustAdd(t, w, start+100, 1)
	b := mustAdd(t, w, start+5_000, 2)
	c := mustAdd(t, w, start+200_000, 3)

	if !w.Cancel(b) {
		t.Fatal("Cancel of a pending timer failed")
	}
	if w.Cancel(b) {
		t.Fatal("Cancel of a cancelled timer succeeded")
	}
	if err := w.Reschedule(b, start+10); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Reschedule of a cancelled timer: %v", err)
	}
	// Move c earlier than a, and a later than everything.
	if err := w.Reschedule(c, start+50); err != nil {
		t.Fatal(err)
	}
	if err := w.Reschedule(a, start+300_000); err != nil {
		t.Fatal(err)
	}
	if due, v, ok := w.Lookup(a); !ok || due != start+300_000 || v != 1 {
		t.Fatalf("Lookup(a) = %d, %d, %v", due, v, ok)
	}
	if got := w.Advance(start+49, nil); len(got) != 0 {
		t.Fatalf("fired early: %v", got)
	}
	got := w.Advance(start+200_000, nil)
	if len(got) != 1 || got[0].Handle != c || got[0].Due != start+50 {
		t.Fatalf("got %v, want only c at start+50", got)
	}
	// Fired handles are stale.
	if w.Cancel(c) {
		t.Fatal("Cancel of a fired timer succeeded")
	}
	if err := w.Reschedule(c, start+1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Reschedule of a fired timer: %v", err)
	}
	if _, _, ok := w.Lookup(c); ok {
		t.Fatal("Lookup of a fired timer succeeded")
	}
	// Rescheduling into the past fires on the next Advance.
	if err := w.Reschedule(a, start); err != nil {
		t.Fatal(err)
	}
	if got := w.Advance(start+200_000, nil); len(got) != 1 || got[0].Handle != a {
		t.Fatalf("rescheduled into the past: got %v", got)
	}
	if w.Len() != 0 {
		t.Fatalf("Len() = %d", w.Len())
	}
}

func TestStaleAndForgedHandles(t *testing.T) {
	w := newWheel(t, time.Millisecond, start)
	old := mustAdd(t, w, start+10, 1)
	w.Cancel(old)
	reused := mustAdd(t, w, start+20, 2) // reuses old's node
	if uint32(reused) != uint32(old) {
		t.Fatalf("freed node not reused: %x then %x", old, reused)
	}
	forged := []Handle{
		0,
		old,
		reused + 1<<32,                  // next generation: a free node's
		makeHandle(uint32(reused)+1, 1), // past the slab
		makeHandle(uint32(reused), 2),   // an even generation
		Handle(^uint64(0)),
	}
	for _, h := range forged {
		if w.Cancel(h) {
			t.Fatalf("Cancel(%#x) succeeded", h)
		}
		if err := w.Reschedule(h, start+1); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Reschedule(%#x) = %v", h, err)
		}
		if _, _, ok := w.Lookup(h); ok {
			t.Fatalf("Lookup(%#x) succeeded", h)
		}
	}
	if got := w.Advance(start+20, nil); len(got) != 1 || got[0].Handle != reused {
		t.Fatalf("got %v, want the reused timer intact", got)
	}
}

func TestNextIsALowerBound(t *testing.T) {
	w := newWheel(t, time.Millisecond, start)
	if _, ok := w.Next(); ok {
		t.Fatal("Next() on an empty wheel")
	}
	// Three timers in one level-1 slot; cancelling the earliest leaves
	// Next early, never late, and one Advance there makes it exact again.
	slot := (start+10_000)&^(numSlots-1) + numSlots
	early := mustAdd(t, w, slot+10, 1)
	mustAdd(t, w, slot+20, 2)
	mustAdd(t, w, slot+30, 3)
	if at, _ := w.Next(); at != slot+10 {
		t.Fatalf("Next() = %d", at)
	}
	w.Cancel(early)
	at, ok := w.Next()
	if !ok || at > slot+20 {
		t.Fatalf("Next() = %d, %v after cancel; must not be later than %d", at, ok, slot+20)
	}
	if got := w.Advance(at, nil); len(got) != 0 {
		t.Fatalf("fired early: %v", got)
	}
	if at, _ := w.Next(); at != slot+20 {
		t.Fatalf("Next() = %d after advancing to the stale bound, want %d", at, slot+20)
	}
}

func TestZeroAllocs(t *testing.T) {
	w := newWheel(t, time.Millisecond, start)
	hs := make([]Handle, 0, 1000)
	for i := range 1000 {
		hs = append(hs, mustAdd(t, w, start+1+int64(i*37%60_000), uint64(i)))
	}
	dst := make([]Timer, 0, 4096)
	now := int64(start)
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		h := hs[i%len(hs)]
		w.Cancel(h)
		hs[i%len(hs)], _ = w.Add(now+1+int64(i*7919%60_000), uint64(i))
		_ = w.Reschedule(hs[(i+1)%len(hs)], now+int64(i%5000)+1)
		now++
		if i%2 == 0 {
			dst = w.Advance(now, dst[:0])
		} else {
			dst = w.AdvanceLimit(now, dst[:0], 1+i%8)
		}
		i++
	})
	if allocs != 0 {
		t.Fatalf("Add/Cancel/Reschedule/Advance allocate %v times per op", allocs)
	}
}

func TestDeadEntriesAreReclaimed(t *testing.T) {
	w := newWheel(t, time.Millisecond, start)
	due := start + 30_000
	l := w.listOf(w.tickOf(due))
	const n = 10 * entryChunk
	hs := make([]Handle, n)
	for i := range hs {
		hs[i] = mustAdd(t, w, due, uint64(i))
	}
	chunks, nodes := len(w.entries), w.nodeCount

	// Cancelled oldest first, whole chunks leave the list unread.
	for _, h := range hs[:3*entryChunk+10] {
		w.Cancel(h)
	}
	if ls := w.lists[l]; ls.dead != 10 || ls.n != n-3*entryChunk {
		t.Fatalf("after FIFO cancels: %d entries, %d dead; want %d and 10", ls.n, ls.dead, n-3*entryChunk)
	}
	checkInvariants(t, 0, w)

	// Cancelled at random, the list is compacted before half of it is dead.
	rest := hs[3*entryChunk+10:]
	keep := make(map[uint64]bool)
	for i, k := range rand.New(rand.NewPCG(5, 6)).Perm(len(rest)) {
		if i%4 == 0 {
			keep[uint64(3*entryChunk+10+k)] = true
			continue
		}
		w.Cancel(rest[k])
		if ls := w.lists[l]; ls.dead*2 >= ls.n {
			t.Fatalf("list %d: %d of %d entries dead", l, ls.dead, ls.n)
		}
	}
	checkInvariants(t, 1, w)

	// Add and cancel churn reuses nodes and chunks rather than growing.
	for i := range 100_000 {
		w.Cancel(mustAdd(t, w, due+int64(i%5000), uint64(i)))
	}
	if len(w.entries) > chunks || w.nodeCount > nodes {
		t.Fatalf("churn grew the wheel: %d chunks (was %d), %d nodes (was %d)", len(w.entries), chunks, w.nodeCount, nodes)
	}
	checkInvariants(t, 2, w)

	// What is left fires, exactly once.
	got := w.Advance(due, nil)
	if len(got) != len(keep) || w.Len() != 0 {
		t.Fatalf("fired %d, want %d; %d left", len(got), len(keep), w.Len())
	}
	for _, tm := range got {
		if !keep[tm.Value] {
			t.Fatalf("fired %d, which was cancelled or fired twice", tm.Value)
		}
		delete(keep, tm.Value)
	}
}

// TestRetiredNode checks that a node whose generation would wrap is never
// reused, so no handle can ever name two timers.
func TestRetiredNode(t *testing.T) {
	for _, fire := range []bool{false, true} {
		w := newWheel(t, time.Millisecond, start)
		h := mustAdd(t, w, start+10, 1)
		w.Cancel(h)
		i := uint32(h)
		w.node(i).gen = retiredGen - 2 // free, two generations from the end
		last := mustAdd(t, w, start+10, 2)
		if uint32(last) != i || uint32(last>>32) != retiredGen-1 {
			t.Fatalf("reuse: handle %#x, want node %d at generation %d", last, i, retiredGen-1)
		}
		if fire {
			if got := w.Advance(start+10, nil); len(got) != 1 || got[0].Handle != last {
				t.Fatalf("fired %v, want the last timer of node %d", got, i)
			}
		} else if !w.Cancel(last) {
			t.Fatal("cancel of the last timer of a node failed")
		}
		if w.node(i).gen != retiredGen || w.freeNode == i {
			t.Fatalf("node %d: generation %d, free head %d; want it retired", i, w.node(i).gen, w.freeNode)
		}
		if next := mustAdd(t, w, start+20, 3); uint32(next) == i {
			t.Fatalf("retired node %d was reused", i)
		}
		if w.Cancel(last) {
			t.Fatal("a handle of a retired node still cancels")
		}
	}
}

// TestCancelNearFiring covers timers cascaded into level 0, which keep no
// back-pointer while their slot holds at most one chunk.
func TestCancelNearFiring(t *testing.T) {
	for _, n := range []int{10, entryChunk, entryChunk + 44} {
		w := newWheel(t, time.Millisecond, start)
		due := (start+5_000)&^(numSlots-1) + 100 // level 1 now
		hs := make([]Handle, n)
		for i := range hs {
			hs[i] = mustAdd(t, w, due, uint64(i))
		}
		// A timer of another tick in the same level-1 slot, so that the
		// cascade copies entries rather than move a one-tick chain whole.
		mustAdd(t, w, due+2, 1<<20)
		// Reach due's level-1 slot: its timers cascade into level 0.
		w.Advance(due-100, nil)
		l := w.listOf(w.tickOf(due))
		if l >= numSlots || w.lists[l].scan != (n <= entryChunk) {
			t.Fatalf("n=%d: list %d, scan %v", n, l, w.lists[l].scan)
		}
		checkInvariants(t, n, w)
		if _, v, ok := w.Lookup(hs[n-1]); !ok || v != uint64(n-1) {
			t.Fatalf("n=%d: Lookup = %d, %v", n, v, ok)
		}
		if !w.Cancel(hs[3]) || w.Cancel(hs[3]) {
			t.Fatalf("n=%d: cancel near firing", n)
		}
		if err := w.Reschedule(hs[5], due+1); err != nil {
			t.Fatalf("n=%d: Reschedule: %v", n, err)
		}
		checkInvariants(t, n, w)
		got := w.Advance(due, nil)
		if len(got) != n-2 {
			t.Fatalf("n=%d: fired %d at due, want %d", n, len(got), n-2)
		}
		if got := w.Advance(due+1, nil); len(got) != 1 || got[0].Handle != hs[5] {
			t.Fatalf("n=%d: fired %v at due+1, want the rescheduled timer", n, got)
		}
	}
}

// TestHerdCascadesWhole: timers that all share one tick cascade by moving
// their chain to the lower level whole, each entry where it was, dead
// ones included, and still fire, cancel and move as before.
func TestHerdCascadesWhole(t *testing.T) {
	w := newWheel(t, time.Millisecond, start)
	due := start + 200_000 // level 2 now
	hs := make([]Handle, 3*entryChunk+5)
	for i := range hs {
		hs[i] = mustAdd(t, w, due, uint64(i))
	}
	w.Cancel(hs[7])
	from := w.listOf(w.tickOf(due))
	head := w.lists[from].head
	w.Advance(due-1, nil) // cascades through level 1 into level 0
	to := w.listOf(w.tickOf(due))
	if to >= numSlots || w.lists[to].head != head || w.lists[to].dead != 1 {
		t.Fatalf("herd in list %d (head chunk %d, %d dead), want level 0 with head chunk %d and 1 dead", to, w.lists[to].head, w.lists[to].dead, head)
	}
	checkInvariants(t, 0, w)
	if !w.Cancel(hs[100]) {
		t.Fatal("Cancel after a whole cascade failed")
	}
	if err := w.Reschedule(hs[200], due+1); err != nil {
		t.Fatalf("Reschedule after a whole cascade: %v", err)
	}
	checkInvariants(t, 1, w)
	if got := w.Advance(due, nil); len(got) != len(hs)-3 {
		t.Fatalf("fired %d at due, want %d", len(got), len(hs)-3)
	}
	if got := w.Advance(due+1, nil); len(got) != 1 || got[0].Handle != hs[200] {
		t.Fatalf("fired %v at due+1, want the moved timer", values(got))
	}
}

// FuzzConfig checks that Validate accepts exactly the configs New accepts,
// that its errors name the field, and that any accepted wheel keeps its
// never-early promise for a timer due at its horizon and one due at once.
func FuzzConfig(f *testing.F) {
	f.Add(int64(time.Millisecond), int64(0))
	f.Add(int64(10*time.Millisecond), start)
	f.Add(int64(time.Second), int64(maxStart-1))
	f.Add(int64(1500*time.Microsecond), int64(-1))
	f.Fuzz(func(t *testing.T, tick, at int64) {
		cfg := Config{Tick: time.Duration(tick), Start: at}
		err := cfg.Validate()
		w, nerr := New(cfg)
		if (err == nil) != (nerr == nil) {
			t.Fatalf("Validate() = %v but New() = %v", err, nerr)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) || !(strings.Contains(err.Error(), "Tick") || strings.Contains(err.Error(), "Start")) {
				t.Fatalf("error %q does not wrap ErrInvalidConfig or name a field", err)
			}
			return
		}
		farDue := w.Horizon()
		far := mustAdd(t, w, farDue, 1)
		mustAdd(t, w, at, 2)
		if got := w.Advance(at, nil); len(got) != 1 || got[0].Value != 2 {
			t.Fatalf("Advance(start) = %v, want the timer due at start", got)
		}
		if next, ok := w.Next(); !ok || next != farDue {
			t.Fatalf("Next() = %d, %v; the far timer is due at %d", next, ok, farDue)
		}
		if due, _, ok := w.Lookup(far); !ok || due != farDue {
			t.Fatalf("far timer lost: %d, %v", due, ok)
		}
		if got := w.Advance(farDue-1, nil); len(got) != 0 {
			t.Fatalf("fired %v before its due time %d", got, farDue)
		}
		if got := w.Advance(farDue, nil); len(got) != 1 || got[0].Handle != far {
			t.Fatalf("Advance(%d) = %v, want the far timer", farDue, got)
		}
	})
}

// TestHerdHandOff: a herd due at one instant, mixed with timers of other
// ticks in the same slots (before, after and at the herd's tick) and with
// cancelled entries, cascades by handing its chain down and copying out
// only the others; every timer still fires exactly in its tick, once.
// The second case leaves too many dead entries for the hand-off and
// takes the compaction that follows it.
func TestHerdHandOff(t *testing.T) {
	for _, tc := range []struct {
		name           string
		herd, others   int
		cancelEveryNth int  // cancel every nth herd timer before the cascade (0: none)
		sameChain      bool // the herd keeps its chain down to level 0
	}{
		{"few others", 3000, 200, 0, true},
		{"half the herd cancelled", 2200, 700, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWheel(t, time.Millisecond, start)
			due := start + 200_000 + 77 // level 2 now
			want := map[uint64]int64{}  // value -> due, of timers to fire
			var herd []Handle
			v := uint64(0)
			add := func(at int64) Handle {
				v++
				want[v] = at
				return mustAdd(t, w, at, v)
			}
			for i := range tc.herd + tc.others {
				if i%(tc.herd/tc.others+1) == 0 && len(want)-len(herd) < tc.others {
					// Spread over the herd's level-1 slot and the next.
					add(due - 150 + int64(i%400))
					continue
				}
				herd = append(herd, add(due))
			}
			if tc.cancelEveryNth > 0 {
				for i := 0; i < len(herd); i += tc.cancelEveryNth {
					_, val, _ := w.Lookup(herd[i])
					if !w.Cancel(herd[i]) {
						t.Fatalf("cancel of herd timer %d failed", i)
					}
					delete(want, val)
				}
			}
			checkInvariants(t, 0, w)
			head := w.lists[w.listOf(w.tickOf(due))].head
			for now := start; now <= due+300; now++ {
				if now == due {
					to := w.listOf(w.tickOf(due))
					if got := to < numSlots && w.lists[to].head == head; got != tc.sameChain {
						t.Fatalf("herd in list %d with head chunk %d (was %d): same chain %v, want %v", to, w.lists[to].head, head, got, tc.sameChain)
					}
				}
				for _, f := range w.Advance(now, nil) {
					at, ok := want[f.Value]
					if !ok {
						t.Fatalf("at %d: fired %d, not pending", now-due, f.Value)
					}
					if at != now {
						t.Fatalf("at %d: fired %d due at %d", now-due, f.Value, at-due)
					}
					delete(want, f.Value)
				}
				if now >= due-300 && now%16 == 0 {
					checkInvariants(t, int(now-due), w)
				}
			}
			if len(want) != 0 || w.Len() != 0 {
				t.Fatalf("%d timers never fired; %d left in the wheel", len(want), w.Len())
			}
		})
	}
}
