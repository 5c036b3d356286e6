package shard

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/timerd/timerd/store"
)

// deadRecord is a dead letter as the store holds it.
func deadRecord(namespace, id, topic string, epoch uint64, seq uint64) store.Record {
	return store.Record{Namespace: namespace, ID: id, Topic: topic, Payload: []byte("payload " + id), Delay: 0,
		Due: 1, Next: 1, State: store.Dead, Attempts: 3, LastAttempt: 2, Reason: "not acknowledged after 3 attempts",
		OccEpoch: epoch, OccSeq: seq}
}

// openDead opens a shard whose store holds n dead letters of namespace
// "ns", ids d000000.., of topic "rare" for every hundredth and "common"
// for the others.
func openDead(tb testing.TB, e *env, n int) *Shard {
	fillRecords(tb, e, 0, n, func(i int, epoch uint64) store.Record {
		topic := "common"
		if i%100 == 0 {
			topic = "rare"
		}
		return deadRecord("ns", fmt.Sprintf("d%06d", i), topic, epoch, uint64(i))
	})
	s := e.open(tb, 0, "a", newSink(false))
	if got := s.Stats().Dead; got != n {
		tb.Fatalf("loaded %d dead letters, want %d", got, n)
	}
	return s
}

func deadIDs(page []Timer) []string {
	out := make([]string, len(page))
	for i, tm := range page {
		out[i] = tm.ID
	}
	return out
}

// TestDeadLetterPages: pages come in id order after the given id, filtered
// by namespace and topic, and follow timers that become dead letters and
// stop being ones.
func TestDeadLetterPages(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		cfg := e.config(0, "a", k)
		cfg.MaxAttempts = 1
		s := e.openConfig(t, cfg)
		// ids that sort differently as strings and as numbers, and as
		// prefixes of each other.
		nsIDs := []string{"a", "a0", "a00", "b", "b-1", "c9", "c10", "z"}
		var specs []Spec
		for i, id := range nsIDs {
			sp := spec(id, 0)
			if i%3 == 0 {
				sp.Topic = "t1"
			}
			specs = append(specs, sp)
		}
		for _, id := range []string{"a", "m"} {
			specs = append(specs, Spec{Namespace: "other", ID: id, Topic: "topic", Payload: []byte("x")})
		}
		specs = append(specs, spec("pending", 10*time.Hour))
		mustSchedule(t, s, specs...)
		e.advance(s, 0)
		k.take(t, len(specs)-1)
		e.advance(s, cfg.AckTimeout)

		sorted := slices.Sorted(slices.Values(nsIDs))
		t1 := []string{"a", "b", "c10"} // nsIDs[0], [3] and [6]
		cases := []struct {
			name                    string
			namespace, topic, after string
			limit                   int
			want                    []string
			more                    bool
		}{
			{"all", "ns", "", "", 100, sorted, false},
			{"exact fit", "ns", "", "", len(sorted), sorted, false},
			{"first page", "ns", "", "", 3, sorted[:3], true},
			{"after an id", "ns", "", "a00", 3, []string{"b", "b-1", "c10"}, true},
			{"after a missing id", "ns", "", "a000", 2, []string{"b", "b-1"}, true},
			{"last page", "ns", "", "c10", 10, []string{"c9", "z"}, false},
			{"after the last", "ns", "", "z", 10, nil, false},
			{"limit 0 is 1", "ns", "", "", 0, sorted[:1], true},
			{"topic", "ns", "t1", "", 10, t1, false},
			{"topic page", "ns", "t1", "a", 1, []string{"b"}, true},
			{"other topic", "ns", "topic", "a00", 2, []string{"b-1", "c9"}, true},
			{"topic after its last", "ns", "t1", "c10", 10, nil, false},
			{"unknown topic", "ns", "none", "", 10, nil, false},
			{"other namespace", "other", "", "", 10, []string{"a", "m"}, false},
			{"unknown namespace", "none", "", "", 10, nil, false},
		}
		check := func(t *testing.T) {
			for _, c := range cases {
				page, more, err := s.DeadLetters(c.namespace, c.topic, c.after, c.limit)
				if err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				if got := deadIDs(page); !slices.Equal(got, c.want) || more != c.more {
					t.Fatalf("%s: DeadLetters(%q, %q, %q, %d) = %q, %v; want %q, %v",
						c.name, c.namespace, c.topic, c.after, c.limit, got, more, c.want, c.more)
				}
				for _, tm := range page {
					if tm.State != Dead || tm.Namespace != c.namespace || c.topic != "" && tm.Topic != c.topic || tm.Reason == "" {
						t.Fatalf("%s: letter %+v", c.name, tm)
					}
				}
			}
			// Walking pages of any size gives every letter once.
			for size := 1; size <= len(sorted)+1; size++ {
				var got []string
				for after, more := "", true; more; {
					page, m, err := s.DeadLetters("ns", "", after, size)
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, deadIDs(page)...)
					if more = m; more {
						after = page[len(page)-1].ID
					}
				}
				if !slices.Equal(got, sorted) {
					t.Fatalf("pages of %d: %q, want %q", size, got, sorted)
				}
			}
		}
		check(t)

		// Letters replayed or cancelled leave the pages; they come back
		// when they die again, a new one joins in order.
		if res, _, _ := s.Replay(ctx, "ns", []string{"b"}, "", time.Time{}, time.Hour); res[0].Err != nil {
			t.Fatal(res[0].Err)
		}
		if errs := s.Cancel(ctx, "ns", []string{"c9"}); errs[0] != nil {
			t.Fatal(errs[0])
		}
		if page, _, _ := s.DeadLetters("ns", "", "a00", 2); !slices.Equal(deadIDs(page), []string{"b-1", "c10"}) {
			t.Fatalf("after a replay and a cancel: %q", deadIDs(page))
		}
		if page, _, _ := s.DeadLetters("ns", "t1", "", 10); !slices.Equal(deadIDs(page), []string{"a", "c10"}) {
			t.Fatalf("topic after a replay: %q", deadIDs(page))
		}
		mustSchedule(t, s, spec("c9", 0))
		e.advance(s, time.Hour) // b and the new c9 fire
		k.take(t, 2)
		e.advance(s, cfg.AckTimeout)
		check(t)
		// Reloaded by a new owner, the same pages.
		s.Close(ctx)
		s = e.open(t, 0, "b", k)
		check(t)
	})
}

// TestDeadLettersConcurrent pages through dead letters while timers become
// dead letters, are replayed and cancelled, and the clock moves; run
// under -race. A letter dead throughout is on every walk; every page is in
// order and holds dead letters only.
func TestDeadLettersConcurrent(t *testing.T) {
	e := newEmbeddedEnv(t)
	k := newSink(true)
	cfg := e.config(0, "a", k)
	cfg.MaxAttempts = 1
	s := e.openConfig(t, cfg)
	var specs []Spec
	for i := range 200 {
		sp := spec(fmt.Sprintf("s%03d", i), 0) // stays dead
		if i%2 == 0 {
			sp.ID = fmt.Sprintf("c%03d", i) // churns
		}
		if i%4 < 2 {
			sp.Topic = "other"
		}
		specs = append(specs, sp)
	}
	mustSchedule(t, s, specs...)
	e.advance(s, 0)
	k.take(t, len(specs))
	e.advance(s, cfg.AckTimeout)
	var stable []string
	for _, sp := range specs {
		if strings.HasPrefix(sp.ID, "s") {
			stable = append(stable, sp.ID)
		}
	}
	slices.Sort(stable)

	var stop atomic.Bool
	var churned atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // churn
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 0; !stop.Load(); i++ {
			churned.Add(1)
			id := fmt.Sprintf("c%03d", rng.IntN(100)*2)
			switch i % 3 {
			case 0:
				s.Replay(ctx, "ns", []string{id}, "", time.Time{}, 0)
			case 1:
				if s.Cancel(ctx, "ns", []string{id})[0] == nil {
					s.Schedule(ctx, []Spec{{Namespace: "ns", ID: id, Topic: "topic", Payload: []byte("again")}})
				}
			case 2:
				e.clock.Advance(cfg.AckTimeout) // what fired dies
				for len(k.ch) > 0 {
					<-k.ch
				}
			}
		}
	}()
	deadline := time.Now().Add(10 * time.Second) // a hang guard
	for walk := 0; walk < 50 || churned.Load() < 300 && time.Now().Before(deadline); walk++ {
		for _, topic := range []string{"", "topic", "other"} {
			var got []string
			for after, more := "", true; more; {
				page, m, err := s.DeadLetters("ns", topic, after, 1+walk%7)
				if err != nil {
					t.Fatal(err)
				}
				for _, tm := range page {
					if tm.ID <= after || tm.State != Dead || topic != "" && tm.Topic != topic {
						t.Fatalf("walk %d topic %q after %q: letter %s %v topic %s", walk, topic, after, tm.ID, tm.State, tm.Topic)
					}
					after = tm.ID
					got = append(got, tm.ID)
				}
				more = m
			}
			for _, id := range stable {
				if _, found := slices.BinarySearch(got, id); !found && (topic == "" || topicOf(specs, id) == topic) {
					t.Fatalf("walk %d topic %q misses %s", walk, topic, id)
				}
			}
		}
	}
	stop.Store(true)
	wg.Wait()
}

func topicOf(specs []Spec, id string) string {
	for _, sp := range specs {
		if sp.ID == id {
			return sp.Topic
		}
	}
	return ""
}

// TestDeadLetterPageCost: a page costs what it holds, not what the shard
// holds: a page of 100 from the middle of 20,000 dead letters, or from a
// topic that has few of them, makes its two slices and nothing else.
func TestDeadLetterPageCost(t *testing.T) {
	e := newEmbeddedEnv(t)
	const n = 20_000
	s := openDead(t, e, n)
	cases := []struct {
		topic, after string
	}{
		{"", "d010000"},
		{"", ""},
		{"rare", "d005000"},
		{"common", "d019000"},
	}
	for _, c := range cases {
		allocs := testing.AllocsPerRun(10, func() {
			page, more, err := s.DeadLetters("ns", c.topic, c.after, 100)
			if err != nil || len(page) != 100 || !more {
				t.Fatalf("DeadLetters(%q, %q) = %d letters, more %v, %v", c.topic, c.after, len(page), more, err)
			}
		})
		if allocs > 2 {
			t.Errorf("a page of 100 of topic %q after %q allocated %v times, want 2", c.topic, c.after, allocs)
		}
	}
}

// BenchmarkDeadLetterPage lists a page of 100 dead letters from a shard
// holding 300,000, from a random place, through the index and (the peer)
// by the full scan and sort it replaced.
func BenchmarkDeadLetterPage(b *testing.B) {
	e := newEmbeddedEnv(b)
	const n = 300_000
	s := openDead(b, e, n)
	for _, c := range []struct {
		name string
		page func(after string) ([]Timer, bool)
	}{
		{"index", func(after string) ([]Timer, bool) {
			page, more, _ := s.DeadLetters("ns", "", after, 100)
			return page, more
		}},
		{"scan", func(after string) ([]Timer, bool) { return deadLettersScan(s, "ns", "", after, 100) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, 2))
			b.ReportAllocs()
			for b.Loop() {
				after := fmt.Sprintf("d%06d", rng.IntN(n-100))
				if page, _ := c.page(after); len(page) != 100 {
					b.Fatalf("page of %d", len(page))
				}
			}
		})
	}
}

// deadLettersScan is DeadLetters without the index: a scan of every
// timer, which in openDead's shard is every dead letter, and a sort, under
// the shard's mutex.
func deadLettersScan(s *Shard, namespace, topic, after string, limit int) ([]Timer, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var hits []*timer
	for _, chunk := range s.timers.chunks {
		for i := range chunk {
			t := &chunk[i]
			if t.blobLen == 0 || t.rec.State != store.Dead || s.timers.namespace(t) != namespace || s.timers.id(t) <= after {
				continue
			}
			if topic != "" && s.timers.topic(t) != topic {
				continue
			}
			hits = append(hits, t)
		}
	}
	slices.SortFunc(hits, func(a, b *timer) int { return strings.Compare(s.timers.id(a), s.timers.id(b)) })
	limit = max(limit, 1)
	more := len(hits) > limit
	if more {
		hits = hits[:limit]
	}
	out := make([]Timer, len(hits))
	for i, t := range hits {
		out[i] = s.snapshotLocked(t)
	}
	return out, more
}
