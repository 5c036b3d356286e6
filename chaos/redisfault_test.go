package chaos

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// The checks the Redis fault scenarios (redis-kill, redis-proxy,
// redis-cluster-failover) share, on what the ledger recorded. They are
// pure functions of the ledger's records, so their unit tests need no
// processes.

// staleDeliveries returns, as problems, the deliveries sent by a deposed
// owner: on each shard, in the order the owners fired them (fired is the
// sending node's clock; every node runs on the test's machine, so one
// clock), a delivery whose epoch is below that of one fired strictly
// before it on the same shard. A shard's owner stops dispatching before
// its lease can have lapsed and the next owner acquires only after that,
// under a higher epoch, so the epochs of a shard's deliveries, in fired
// order, never go down; one that does came from an owner whose lease was
// taken over (the fencing failed) or from an epoch that went backwards
// (Redis forgot an acquire and handed out a lower epoch).
func staleDeliveries(got []delivery) []string {
	byShard := make(map[uint32][]delivery)
	for _, d := range got {
		byShard[d.shard] = append(byShard[d.shard], d)
	}
	var problems []string
	for _, s := range slices.Sorted(maps.Keys(byShard)) {
		ds := byShard[s]
		slices.SortStableFunc(ds, func(a, b delivery) int { return a.fired.Compare(b.fired) })
		var top delivery // the highest epoch fired strictly before ds[i]
		for i, j := 0, 0; i < len(ds); i++ {
			for ; j < i && ds[j].fired.Before(ds[i].fired); j++ {
				if ds[j].epoch > top.epoch {
					top = ds[j]
				}
			}
			if d := ds[i]; d.epoch < top.epoch {
				problems = append(problems, fmt.Sprintf("stale owner: shard %d delivered %s under epoch %d, fired %s, after epoch %d had fired %s",
					s, d.id, d.epoch, d.fired.Format(time.StampMilli), top.epoch, top.fired.Format(time.StampMilli)))
			}
		}
	}
	return problems
}

// firedWithin returns the deliveries fired in [from, to), in fired order.
func firedWithin(got []delivery, from, to time.Time) []delivery {
	var in []delivery
	for _, d := range got {
		if !d.fired.Before(from) && d.fired.Before(to) {
			in = append(in, d)
		}
	}
	slices.SortStableFunc(in, func(a, b delivery) int { return a.fired.Compare(b.fired) })
	return in
}

// firstFiredPerShard returns, for each shard, the first delivery fired at
// or after from.
func firstFiredPerShard(got []delivery, from time.Time) map[uint32]time.Time {
	first := make(map[uint32]time.Time)
	for _, d := range got {
		if d.fired.Before(from) {
			continue
		}
		if t, ok := first[d.shard]; !ok || d.fired.Before(t) {
			first[d.shard] = d.fired
		}
	}
	return first
}

// acksWhileDown returns, as problems, the writes answered OK while Redis
// could apply nothing, from down (Redis killed or cut off) to up (Redis
// back), that no attempt sent before down can explain: a write answered
// OK in [down, up) whose every attempt (the ops of the same kind and id)
// was sent after down never reached Redis before it went away, so its
// OK is not durable. An OK for a write one of whose attempts was sent
// before down may be the late answer to a write Redis applied just
// before (on a loaded machine the answer may take a while through the
// node and gRPC), or an idempotent retry of one; either is durable. An OK
// answered after up may be for a write the node retried once Redis came
// back, which is durable too. So the check needs no timing of its own.
func acksWhileDown(ops []op, down, up time.Time) []string {
	type key struct {
		kind opKind
		id   string
	}
	first := make(map[key]time.Time) // the first attempt's send time
	for _, o := range ops {
		k := key{o.kind, o.id}
		if t, ok := first[k]; !ok || o.sent.Before(t) {
			first[k] = o.sent
		}
	}
	var problems []string
	for _, o := range ops {
		if o.outcome != outcomeOK || o.answered.Before(down) || !o.answered.Before(up) || !first[key{o.kind, o.id}].After(down) {
			continue
		}
		problems = append(problems, fmt.Sprintf("%s of %s answered OK at %s while Redis was unreachable (%s to %s), first sent at %s",
			o.kind, o.id, o.answered.Format(time.StampMilli), down.Format(time.StampMilli), up.Format(time.StampMilli),
			first[key{o.kind, o.id}].Format(time.StampMilli)))
	}
	return problems
}

// answeredWithin counts the writes answered in [from, to), by outcome,
// for the figures: the evidence that a check over a window looked at
// something.
func answeredWithin(ops []op, from, to time.Time) string {
	var n [3]int
	for _, o := range ops {
		if !o.answered.Before(from) && o.answered.Before(to) {
			n[o.outcome]++
		}
	}
	return fmt.Sprintf("%s ok, %s failed, %s indeterminate", itoa(n[outcomeOK]), itoa(n[outcomeFailed]), itoa(n[outcomeIndeterminate]))
}

// epochsRegressed returns, as problems, the shards whose epoch in the
// shard map after is below that in before: epochs only grow, whatever
// Redis forgot.
func epochsRegressed(before, after []shardOwner) []string {
	var problems []string
	for s := range min(len(before), len(after)) {
		if after[s].epoch < before[s].epoch {
			problems = append(problems, fmt.Sprintf("shard %d: epoch %d (%s) after the fault, %d (%s) before it",
				s, after[s].epoch, after[s].owner, before[s].epoch, before[s].owner))
		}
	}
	return problems
}

// undelivered returns the timers that must fire and were never delivered.
func undelivered(exp map[string]expectation, got []delivery) map[string]expectation {
	seen := make(map[string]bool, len(got))
	for _, d := range got {
		seen[d.id] = true
	}
	out := make(map[string]expectation)
	for id, e := range exp {
		if !seen[id] {
			out[id] = e
		}
	}
	return out
}

// addProblems adds each of problems to v, at most maxExamples of them
// and a count of the rest.
func addProblems(v *verdict, problems []string) {
	for i, p := range problems {
		if i == maxExamples {
			v.problem("and %d more like it", len(problems)-maxExamples)
			return
		}
		v.problem("%s", p)
	}
}

// TestStaleDeliveries checks the deposed-owner check on made-up
// deliveries.
func TestStaleDeliveries(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(id string, shard uint32, epoch uint64, ms int) delivery {
		return delivery{id: id, shard: shard, epoch: epoch, fired: t0.Add(time.Duration(ms) * time.Millisecond)}
	}
	tests := []struct {
		name  string
		got   []delivery
		stale []string // ids of the stale deliveries, in problem order
	}{
		{name: "none"},
		{name: "epochs grow", got: []delivery{at("a", 1, 5, 0), at("b", 1, 5, 10), at("c", 1, 9, 20), at("d", 1, 9, 30)}},
		{name: "same instant", got: []delivery{at("a", 1, 9, 10), at("b", 1, 5, 10)}},
		{name: "other shard", got: []delivery{at("a", 1, 9, 0), at("b", 2, 5, 10)}},
		{name: "deposed owner fires after the new one", got: []delivery{at("a", 1, 5, 0), at("b", 1, 9, 10), at("c", 1, 5, 20), at("d", 1, 9, 30)},
			stale: []string{"c"}},
		{name: "received out of order", got: []delivery{at("c", 1, 5, 20), at("b", 1, 9, 10), at("a", 1, 5, 0)},
			stale: []string{"c"}},
		{name: "epoch went backwards", got: []delivery{at("a", 3, 9, 0), at("b", 3, 7, 50), at("c", 3, 8, 60)},
			stale: []string{"b", "c"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			problems := staleDeliveries(tc.got)
			if len(problems) != len(tc.stale) {
				t.Fatalf("staleDeliveries = %q, want %d problems naming %v", problems, len(tc.stale), tc.stale)
			}
			for i, id := range tc.stale {
				if want := fmt.Sprintf(" delivered %s ", id); !strings.Contains(problems[i], want) {
					t.Errorf("problem %d = %q, want it to name %s", i, problems[i], id)
				}
			}
		})
	}
}

// TestFiredWithin checks the window filters on made-up deliveries.
func TestFiredWithin(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	got := []delivery{
		{id: "late", shard: 2, fired: ms(300)}, {id: "from", shard: 1, fired: ms(100)},
		{id: "before", shard: 1, fired: ms(99)}, {id: "to", shard: 2, fired: ms(200)}, {id: "in", shard: 2, fired: ms(150)},
	}
	var ids []string
	for _, d := range firedWithin(got, ms(100), ms(200)) {
		ids = append(ids, d.id)
	}
	if fmt.Sprint(ids) != "[from in]" {
		t.Errorf("firedWithin [100ms, 200ms) = %v, want [from in]", ids)
	}
	first := firstFiredPerShard(got, ms(100))
	if len(first) != 2 || !first[1].Equal(ms(100)) || !first[2].Equal(ms(150)) {
		t.Errorf("firstFiredPerShard from 100ms = %v, want shard 1 at 100ms, shard 2 at 150ms", first)
	}
}

// TestAcksWhileDown checks which OKs the outage check refuses, on
// made-up writes.
func TestAcksWhileDown(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	down, up := ms(1000), ms(5000)
	ops := []op{
		{kind: opSchedule, id: "before", sent: ms(900), answered: ms(990), outcome: outcomeOK},
		{kind: opSchedule, id: "late-answer", sent: ms(900), answered: ms(3000), outcome: outcomeOK},
		{kind: opCancel, id: "sent-during", sent: ms(1100), answered: ms(1200), outcome: outcomeOK},
		{kind: opSchedule, id: "retry", sent: ms(500), answered: ms(950), outcome: outcomeIndeterminate},
		{kind: opSchedule, id: "retry", sent: ms(1500), answered: ms(2000), outcome: outcomeOK},
		{kind: opSchedule, id: "first-sent-during", sent: ms(1100), answered: ms(3000), outcome: outcomeIndeterminate},
		{kind: opSchedule, id: "first-sent-during", sent: ms(3100), answered: ms(4000), outcome: outcomeOK},
		{kind: opSchedule, id: "retried-after", sent: ms(2000), answered: ms(5000), outcome: outcomeOK},
		{kind: opReschedule, id: "before", sent: ms(5100), answered: ms(5200), outcome: outcomeOK},
	}
	problems := acksWhileDown(ops, down, up)
	var ids []string
	for _, p := range problems {
		ids = append(ids, strings.Fields(p)[2])
	}
	if fmt.Sprint(ids) != "[sent-during first-sent-during]" {
		t.Errorf("acksWhileDown named %v, want [sent-during first-sent-during]:\n%s", ids, strings.Join(problems, "\n"))
	}
}

// TestEpochsRegressed checks the shard map comparison.
func TestEpochsRegressed(t *testing.T) {
	before := []shardOwner{{"a", 5}, {"b", 7}, {"a", 9}}
	after := []shardOwner{{"a", 5}, {"a", 8}, {"b", 8}}
	problems := epochsRegressed(before, after)
	if len(problems) != 1 || !strings.HasPrefix(problems[0], "shard 2: epoch 8 (b)") {
		t.Errorf("epochsRegressed = %q, want shard 2 alone", problems)
	}
}
