package chaos

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// maxExamples bounds the failures a verdict names.
const maxExamples = 10

// verdict is the outcome of a run, as printed and as JSON.
type verdict struct {
	Pass      bool   `json:"pass"`
	Seed      uint64 `json:"seed"`
	Scheduled int    `json:"scheduled"` // timers sent in at least one request
	// Acknowledged timers were answered OK; indeterminate ones failed for
	// good or were left without an answer, so may or may not exist.
	Acknowledged  int `json:"acknowledged"`
	Indeterminate int `json:"indeterminate"`
	// Deliveries counts every delivery received; of the indeterminate
	// timers, IndeterminateDelivered were delivered all the same.
	Deliveries             int `json:"deliveries"`
	IndeterminateDelivered int `json:"indeterminate_delivered"`
	// The checks: an acknowledged timer never delivered is lost; a
	// delivery received before its due time is early; one of a timer
	// never sent is unexpected; one whose payload or due time is not the
	// scheduled one is corrupt. Duplicates are the deliveries of a timer
	// after its first, which at-least-once allows.
	Lost       int `json:"lost"`
	Early      int `json:"early"`
	Unexpected int `json:"unexpected"`
	Corrupt    int `json:"corrupt"`
	Duplicates int `json:"duplicates"`
	// Redelivered counts the deliveries with attempt > 1.
	Redelivered int `json:"redelivered"`
	// MaxLatenessMS is the largest lateness of a first delivery, and
	// P99LatenessMS the 99th percentile, of the acknowledged timers.
	MaxLatenessMS int64 `json:"max_lateness_ms"`
	P99LatenessMS int64 `json:"p99_lateness_ms"`
	// Killed names the node killed, KillAtMS when (after the start of the
	// run), and Failover what its death cost.
	Killed   string   `json:"killed"`
	KillAtMS int64    `json:"kill_at_ms"`
	Failover failover `json:"failover"`
	// Problems are failures of the run outside the checks above (a node
	// that died unasked, a due time answered differently).
	Problems []string `json:"problems,omitempty"`
	// Examples names a few of the failures.
	Examples []string `json:"examples,omitempty"`
}

// failover is how long the killed node's timers waited for another node.
type failover struct {
	// Shards the killed node served before the kill (of ShardCount), and
	// Pending the acknowledged timers on them, acknowledged before the
	// kill and not yet received at it.
	Shards     int `json:"shards"`
	ShardCount int `json:"shard_count"`
	Pending    int `json:"pending"`
	// TakenOver counts the dead shards that delivered under a higher
	// epoch after the kill; TakeoverMinMS and TakeoverMaxMS are the
	// first such delivery of the fastest and of the slowest shard, after
	// the kill.
	TakenOver     int   `json:"taken_over"`
	TakeoverMinMS int64 `json:"takeover_min_ms"`
	TakeoverMaxMS int64 `json:"takeover_max_ms"`
	// Stranded are the killed node's timers that came due (or were in
	// flight) while their shard had no live owner: not received before
	// the kill and due no later than their shard's takeover. FirstMS and
	// LastMS are, after the kill, the first delivery elsewhere of the
	// first and of the last of them to be fired.
	Stranded int   `json:"stranded"`
	FirstMS  int64 `json:"first_ms"`
	LastMS   int64 `json:"last_ms"`
}

// judge checks the deliveries against what the client knows: the due
// times of the timers it sent (attempted) and of those it was told are
// scheduled (acked).
func judge(attempted, acked map[string]time.Time, indeterminate map[string]string, got []delivery) verdict {
	v := verdict{Scheduled: len(attempted), Acknowledged: len(acked), Indeterminate: len(indeterminate), Deliveries: len(got)}
	byID := make(map[string][]delivery, len(attempted))
	for _, d := range got {
		byID[d.id] = append(byID[d.id], d)
	}
	note := func(format string, args ...any) {
		if len(v.Examples) < maxExamples {
			v.Examples = append(v.Examples, fmt.Sprintf(format, args...))
		}
	}
	var lateness []time.Duration
	for _, id := range sortedKeys(acked) {
		ds := byID[id]
		if len(ds) == 0 {
			v.Lost++
			note("lost: %s (due %s) acknowledged, never delivered", id, acked[id].Format(time.StampMilli))
			continue
		}
		first := slices.MinFunc(ds, func(a, b delivery) int { return a.received.Compare(b.received) })
		lateness = append(lateness, first.received.Sub(acked[id]))
	}
	for _, id := range sortedKeys(byID) {
		ds := byID[id]
		due, ok := attempted[id]
		if !ok {
			v.Unexpected += len(ds)
			note("unexpected: %s delivered %d times, never scheduled", id, len(ds))
			continue
		}
		if _, ok := indeterminate[id]; ok {
			v.IndeterminateDelivered++
		}
		v.Duplicates += len(ds) - 1
		for _, d := range ds {
			if d.attempt > 1 {
				v.Redelivered++
			}
			if d.received.Before(due) {
				v.Early++
				note("early: %s (due %s) received %v early, attempt %d, shard %d epoch %d, on node %d",
					id, due.Format(time.StampMilli), due.Sub(d.received), d.attempt, d.shard, d.epoch, d.node)
			}
			if !d.payloadOK || !d.due.Equal(due) {
				v.Corrupt++
				note("corrupt: %s delivered with due %s (scheduled %s), payload as sent: %v",
					id, d.due.Format(time.StampMilli), due.Format(time.StampMilli), d.payloadOK)
			}
		}
	}
	if len(lateness) > 0 {
		slices.Sort(lateness)
		v.MaxLatenessMS = lateness[len(lateness)-1].Milliseconds()
		v.P99LatenessMS = lateness[(len(lateness)-1)*99/100].Milliseconds()
	}
	v.Pass = v.Lost == 0 && v.Early == 0 && v.Unexpected == 0 && v.Corrupt == 0
	return v
}

// measureFailover computes the failover figures of a kill at kill of the
// node victim, which served the shards whose owner is victim in before
// (indexed by shard), from the acknowledged timers (acked: due time,
// ackedAt: when acknowledged) and the deliveries.
func measureFailover(before []shardOwner, victim string, kill time.Time, acked, ackedAt map[string]time.Time, got []delivery) failover {
	f := failover{ShardCount: len(before)}
	dead := make(map[uint32]bool)
	for s, o := range before {
		if o.owner == victim {
			dead[uint32(s)] = true
			f.Shards++
		}
	}
	// A timer's shard is known from its deliveries; what was received
	// before the kill, and the first delivery under a new owner.
	shardOf := make(map[string]uint32)
	seenBefore := make(map[string]bool)
	elsewhere := make(map[string]time.Time)
	takeover := make(map[uint32]time.Time)
	for _, d := range got {
		if !dead[d.shard] {
			continue
		}
		shardOf[d.id] = d.shard
		if d.received.Before(kill) {
			seenBefore[d.id] = true
		}
		if d.epoch > before[d.shard].epoch {
			if t, ok := elsewhere[d.id]; !ok || d.received.Before(t) {
				elsewhere[d.id] = d.received
			}
			if t, ok := takeover[d.shard]; !ok || d.received.Before(t) {
				takeover[d.shard] = d.received
			}
		}
	}
	f.TakenOver = len(takeover)
	for i, t := range sortedTimes(takeover) {
		if i == 0 {
			f.TakeoverMinMS = t.Sub(kill).Milliseconds()
		}
		f.TakeoverMaxMS = t.Sub(kill).Milliseconds()
	}
	var first, last time.Time
	for id, s := range shardOf {
		due, ok := acked[id]
		if !ok || seenBefore[id] {
			continue
		}
		if ackedAt[id].Before(kill) {
			f.Pending++
		}
		if t, ok := takeover[s]; !ok || due.After(t) {
			continue
		}
		f.Stranded++
		if t, ok := elsewhere[id]; ok {
			if first.IsZero() || t.Before(first) {
				first = t
			}
			if t.After(last) {
				last = t
			}
		}
	}
	if !first.IsZero() {
		f.FirstMS, f.LastMS = first.Sub(kill).Milliseconds(), last.Sub(kill).Milliseconds()
	}
	return f
}

// line is the one-line verdict.
func (v verdict) line() string {
	result := "PASS"
	if !v.Pass {
		result = "FAIL"
	}
	return fmt.Sprintf("chaos verdict: %s seed=%d killed=%s at +%.1fs: %s scheduled, %s acknowledged, %s indeterminate (%s of them delivered); "+
		"%s deliveries: lost %d, early %d, unexpected %d, corrupt %d, duplicates %s (%s redeliveries); first-delivery lateness p99 %s, max %s",
		result, v.Seed, v.Killed, float64(v.KillAtMS)/1000, itoa(v.Scheduled), itoa(v.Acknowledged), itoa(v.Indeterminate),
		itoa(v.IndeterminateDelivered), itoa(v.Deliveries), v.Lost, v.Early, v.Unexpected, v.Corrupt, itoa(v.Duplicates),
		itoa(v.Redelivered), ms(v.P99LatenessMS), ms(v.MaxLatenessMS))
}

// line is the one-line failover figures.
func (f failover) line(victim string) string {
	return fmt.Sprintf("chaos failover: %s served %d of %d shards with %s timers pending; %d shards taken over %s to %s after the kill; "+
		"of its %s timers stranded while their shard had no owner, the first fired elsewhere %s and the last %s after the kill",
		victim, f.Shards, f.ShardCount, itoa(f.Pending), f.TakenOver, ms(f.TakeoverMinMS), ms(f.TakeoverMaxMS),
		itoa(f.Stranded), ms(f.FirstMS), ms(f.LastMS))
}

// ms formats milliseconds as seconds.
func ms(n int64) string { return fmt.Sprintf("%.2fs", float64(n)/1000) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func sortedTimes[K comparable](m map[K]time.Time) []time.Time {
	ts := make([]time.Time, 0, len(m))
	for _, t := range m {
		ts = append(ts, t)
	}
	slices.SortFunc(ts, time.Time.Compare)
	return ts
}

// TestJudge checks the verdict's arithmetic on made-up deliveries; it
// needs no processes, so it runs without TIMERD_CHAOS.
func TestJudge(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	due := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	attempted := map[string]time.Time{"a": due(1), "b": due(2), "c": due(3), "d": due(4), "e": due(5)}
	acked := map[string]time.Time{"a": due(1), "b": due(2), "c": due(3), "d": due(4)}
	indeterminate := map[string]string{"e": "gave up"}
	at := func(id string, s float64, attempt uint32) delivery {
		return delivery{id: id, due: attempted[id], received: t0.Add(time.Duration(s * float64(time.Second))), attempt: attempt, payloadOK: true}
	}
	got := []delivery{
		at("a", 1.5, 1), at("a", 2, 2), at("a", 9, 1), // two duplicates
		at("b", 1.9, 1),             // early
		at("d", 4, 1),               // on time, to the nanosecond
		at("e", 6, 1),               // indeterminate, delivered: fine
		{id: "z", received: due(7)}, // never scheduled
		{id: "d", due: due(9), received: due(9), attempt: 2}, // corrupt: due and payload
	}
	v := judge(attempted, acked, indeterminate, got)
	want := verdict{Scheduled: 5, Acknowledged: 4, Indeterminate: 1, Deliveries: 8, IndeterminateDelivered: 1,
		Lost: 1, Early: 1, Unexpected: 1, Corrupt: 1, Duplicates: 3, Redelivered: 2, MaxLatenessMS: 500, P99LatenessMS: 0}
	v.Examples = nil
	if fmt.Sprint(v) != fmt.Sprint(want) {
		t.Errorf("judge =\n%+v, want\n%+v", v, want)
	}
	if v := judge(attempted, acked, indeterminate, got[:1]); v.Pass || v.Lost != 3 || len(v.Examples) != 3 || !strings.HasPrefix(v.Examples[0], "lost: b ") {
		t.Errorf("judge with only a's first delivery = %+v, want 3 lost, b first", v)
	}
	if v := judge(map[string]time.Time{"a": due(1)}, map[string]time.Time{"a": due(1)}, nil, got[:2]); !v.Pass || v.Duplicates != 1 {
		t.Errorf("judge of a delivered twice = %+v, want a pass with one duplicate", v)
	}
}

// TestMeasureFailover checks the failover figures on made-up deliveries.
func TestMeasureFailover(t *testing.T) {
	kill := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s float64) time.Time { return kill.Add(time.Duration(s * float64(time.Second))) }
	before := []shardOwner{{"n0", 5}, {"n1", 7}, {"n1", 3}}
	acked := map[string]time.Time{"a": at(-1), "b": at(1), "c": at(2), "d": at(10), "e": at(-2), "f": at(1)}
	ackedAt := map[string]time.Time{"a": at(-5), "b": at(-5), "c": at(1), "d": at(-5), "e": at(-5), "f": at(-5)}
	got := []delivery{
		{id: "e", shard: 1, epoch: 7, received: at(-1.9)}, // delivered before the kill: neither pending nor stranded
		{id: "e", shard: 1, epoch: 8, received: at(3)},    // its duplicate from the new owner
		{id: "a", shard: 1, epoch: 8, received: at(3.5)},  // stranded
		{id: "b", shard: 2, epoch: 4, received: at(4)},    // stranded; shard 2 taken over at +4s
		{id: "c", shard: 1, epoch: 8, received: at(3.2)},  // stranded, acknowledged after the kill
		{id: "d", shard: 1, epoch: 8, received: at(10)},   // due after the takeover: pending, not stranded
		{id: "f", shard: 0, epoch: 5, received: at(1)},    // another node's shard
	}
	f := measureFailover(before, "n1", kill, acked, ackedAt, got)
	want := failover{Shards: 2, ShardCount: 3, Pending: 3, TakenOver: 2, TakeoverMinMS: 3000, TakeoverMaxMS: 4000,
		Stranded: 3, FirstMS: 3200, LastMS: 4000}
	if f != want {
		t.Errorf("measureFailover =\n%+v, want\n%+v", f, want)
	}
}
