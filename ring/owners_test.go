package ring

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// rendezvous is plain rendezvous (highest random weight) hashing with the
// same weights as Owners: each shard goes to the member whose weight for
// it is highest. It moves only the shards of a member that joins or
// leaves, but leaves loads as uneven as the weights fall. It is the peer
// the balance figures are read against.
func rendezvous(shards uint32, members []string) []string {
	owners := make([]string, shards)
	names := memberSet(members)
	if len(names) == 0 {
		return owners
	}
	seeds := make([]uint64, len(names))
	for m, name := range names {
		seeds[m] = xxhash.Sum64String(name)
	}
	for s := range shards {
		best, bestW := 0, weight(seeds[0], s)
		for m := 1; m < len(names); m++ {
			if w := weight(seeds[m], s); w > bestW {
				best, bestW = m, w
			}
		}
		owners[s] = names[best]
	}
	return owners
}

// randomNames returns n distinct random member names of mixed shapes:
// host-like names and short arbitrary strings.
func randomNames(r *rand.Rand, n int) []string {
	const chars = "abcdefghijklmnopqrstuvwxyz0123456789.-_"
	seen := make(map[string]bool, n)
	names := make([]string, 0, n)
	for len(names) < n {
		var name string
		if r.IntN(2) == 0 {
			name = fmt.Sprintf("timerd-%d.node-%x.svc", r.IntN(1000), r.Uint32())
		} else {
			b := make([]byte, 1+r.IntN(12))
			for i := range b {
				b[i] = chars[r.IntN(len(chars))]
			}
			name = string(b)
		}
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	return names
}

// loadRatio returns the most shards any member owns in owners over the
// average, len(owners)/n.
func loadRatio(owners []string, n int) float64 {
	count := make(map[string]int)
	most := 0
	for _, o := range owners {
		count[o]++
		most = max(most, count[o])
	}
	return float64(most) * float64(n) / float64(len(owners))
}

// moveRatio returns how many shards have a different owner in after than
// in before, over the least that a change between n and m members can
// move: the shards of the member that joined or left, shards/max(n, m).
func moveRatio(before, after []string, n, m int) float64 {
	moved := 0
	for s := range before {
		if before[s] != after[s] {
			moved++
		}
	}
	return float64(moved) * float64(max(n, m)) / float64(len(before))
}

// Bounds the property test holds Owners to at 1,024 shards and 3 to 16
// members. The load bound is exact. A single join or leave is not held
// to 1.25 times the minimum: a member at capacity moves one shard for
// every shard the newcomer takes from it more or fewer than its capacity
// shrinks by, a count as random as the newcomer's weights, and at 13 to
// 16 members one change in seventy passes 1.25 (57 of 4,000 measured;
// the worst of all measured was 1.36). Plain rendezvous, which moves
// nothing but the newcomer's shards, passed 1.25 exactly as often on the
// same changes, because the newcomer's share is as uneven (its worst was
// 1.49).
const (
	maxLoadRatio   = 1.05
	maxMoveRatio   = 1.40 // any single change
	fairMoveRatio  = 1.25 // most changes
	fairMoveShare  = 0.95 // the share of changes within fairMoveRatio
	meanMoveRatio  = 1.10 // the average change
	propertySets   = 560
	propertyShards = 1024
)

func TestOwnersBalanceProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(2026, 12))
	var (
		worstLoad, worstMove [17]float64
		peerLoad, peerMove   float64
		sum, worst           float64
		fair                 int
		worstAt              string
	)
	for i := range propertySets {
		n := 3 + i%14
		names := randomNames(r, n+1)
		members := names[:n]
		before := Owners(propertyShards, members)
		for s, o := range before {
			if !slices.Contains(members, o) {
				t.Fatalf("set %d: shard %d owned by %q, not a member", i, s, o)
			}
		}
		load := loadRatio(before, n)
		if load > maxLoadRatio {
			t.Errorf("set %d, %d members: busiest member holds %.3f times the average, want at most %.2f", i, n, load, maxLoadRatio)
		}
		worstLoad[n] = max(worstLoad[n], load)

		// One random join or leave that stays within 3 to 16 members.
		var after, peerAfter []string
		m := n + 1
		if n == 16 || n > 3 && r.IntN(2) == 0 {
			m = n - 1
			k := r.IntN(n)
			left := slices.Delete(slices.Clone(members), k, k+1)
			after, peerAfter = Owners(propertyShards, left), rendezvous(propertyShards, left)
		} else {
			after, peerAfter = Owners(propertyShards, names), rendezvous(propertyShards, names)
		}
		move := moveRatio(before, after, n, m)
		if move > maxMoveRatio {
			t.Errorf("set %d: %d -> %d members moved %.3f times the minimum, want at most %.2f", i, n, m, move, maxMoveRatio)
		}
		if move <= fairMoveRatio {
			fair++
		}
		worstMove[n] = max(worstMove[n], move)
		if move > worst {
			worst, worstAt = move, fmt.Sprintf("set %d, %d -> %d members", i, n, m)
		}
		sum += move

		peerBefore := rendezvous(propertyShards, members)
		peerLoad = max(peerLoad, loadRatio(peerBefore, n))
		peerMove = max(peerMove, moveRatio(peerBefore, peerAfter, n, m))
	}
	for n := 3; n <= 16; n++ {
		t.Logf("%2d members: worst load %.3f, worst move %.3f", n, worstLoad[n], worstMove[n])
	}
	share := float64(fair) / propertySets
	mean := sum / propertySets
	t.Logf("worst move %.3f (%s); %.1f%% of changes within %.2f; mean %.3f",
		worst, worstAt, 100*share, fairMoveRatio, mean)
	t.Logf("plain rendezvous on the same sets: worst load %.3f, worst move %.3f", peerLoad, peerMove)
	if share < fairMoveShare {
		t.Errorf("%.1f%% of changes moved at most %.2f times the minimum, want at least %.0f%%", 100*share, fairMoveRatio, 100*fairMoveShare)
	}
	if mean > meanMoveRatio {
		t.Errorf("changes moved %.3f times the minimum on average, want at most %.2f", mean, meanMoveRatio)
	}
	// The load check must be able to fail: plain rendezvous fails it.
	if peerLoad <= maxLoadRatio {
		t.Errorf("plain rendezvous passed the load check (%.3f): the sets are too kind", peerLoad)
	}
}

func TestOwnersIgnoresOrderDuplicatesAndEmptyNames(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for _, n := range []int{1, 3, 9, 16, 64} {
		names := randomNames(r, n)
		want := Owners(1024, names)
		messy := slices.Clone(names)
		messy = append(messy, names[:n/2+1]...)
		messy = append(messy, "", "")
		r.Shuffle(len(messy), func(i, j int) { messy[i], messy[j] = messy[j], messy[i] })
		if got := Owners(1024, messy); !slices.Equal(got, want) {
			t.Errorf("%d members: shuffled, with duplicates and empty names, gives a different answer", n)
		}
	}
}

// TestOwnersGolden pins placements: every node must compute the same map
// from the same membership, during a rolling upgrade too, so a change to
// these is a change of the cluster's protocol, not a refactoring.
func TestOwnersGolden(t *testing.T) {
	three := []string{"timerd-0", "timerd-1", "timerd-2"}
	sixteen := make([]string, 16)
	for i := range sixteen {
		sixteen[i] = fmt.Sprintf("timerd-%d.timerd.svc:7946", i)
	}
	tests := []struct {
		members []string
		shards  uint32
		shard   uint32
		want    string
	}{
		{three, 1024, 0, golden3Shard0},
		{three, 1024, 1, golden3Shard1},
		{three, 1024, 1023, golden3Shard1023},
		{sixteen, 1024, 0, golden16Shard0},
		{sixteen, 1024, 777, golden16Shard777},
		{sixteen, 64, 5, golden16of64Shard5},
	}
	for _, tt := range tests {
		if got := Owners(tt.shards, tt.members)[tt.shard]; got != tt.want {
			t.Errorf("%d members, %d shards: shard %d owned by %q, want %q", len(tt.members), tt.shards, tt.shard, got, tt.want)
		}
	}
	// The whole map, not only the shards above.
	for _, tt := range []struct {
		members []string
		want    uint64
	}{{three, golden3Sum}, {sixteen, golden16Sum}} {
		if got := xxhash.Sum64String(strings.Join(Owners(1024, tt.members), "\n")); got != tt.want {
			t.Errorf("%d members: map hashes to %#x, want %#x", len(tt.members), got, tt.want)
		}
	}
}

func TestOwnersEdgeCases(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	for _, shards := range []uint32{0, 1, 4, 64, 1024, 4096} {
		for _, n := range []int{0, 1, 2, 3, 16, 63, 64} {
			names := randomNames(r, n)
			owners := Owners(shards, names)
			if len(owners) != int(shards) {
				t.Fatalf("%d shards, %d members: got %d owners", shards, n, len(owners))
			}
			count := make(map[string]int)
			for s, o := range owners {
				if n == 0 && o != "" || n > 0 && !slices.Contains(names, o) {
					t.Fatalf("%d shards, %d members: shard %d owned by %q", shards, n, s, o)
				}
				count[o]++
			}
			if n == 0 {
				continue
			}
			limit := capacity(shards, n)
			for o, c := range count {
				if c > limit {
					t.Errorf("%d shards, %d members: %q owns %d shards, want at most %d", shards, n, o, c, limit)
				}
			}
		}
	}
	if got := Owners(8, []string{"", ""}); !slices.Equal(got, make([]string, 8)) {
		t.Errorf("only empty names: got %q, want no owners", got)
	}
	if got := Owners(3, []string{"a", "a"}); !slices.Equal(got, []string{"a", "a", "a"}) {
		t.Errorf("one member named twice: got %q", got)
	}
}

func TestCapacity(t *testing.T) {
	tests := []struct {
		shards  uint32
		n, want int
	}{
		{1024, 1, 1024}, // never more than shards
		{1024, 3, 358},  // 1.05 * 341.3 = 358.4
		{1024, 9, 119},  // 1.05 * 113.8 = 119.5
		{1024, 15, 71},  // 1.05 * 68.3 = 71.7
		{1024, 16, 67},  // 1.05 * 64 = 67.2
		{1024, 64, 16},  // 1.05 * 16 = 16.8
		{64, 16, 4},     // 1.05 * 4 = 4.2
		{64, 63, 2},     // at least the ceiling
		{1, 64, 1},      // at least the ceiling
		{4096, 64, 67},  // 1.05 * 64 = 67.2
		{1<<32 - 1, 1, 1<<32 - 1},
		{1<<32 - 1, 3, 1503238553}, // 1.05 * 1431655765 = 1503238553.25
	}
	for _, tt := range tests {
		if got := capacity(tt.shards, tt.n); got != tt.want {
			t.Errorf("capacity(%d, %d) = %d, want %d", tt.shards, tt.n, got, tt.want)
		}
	}
}

// TestOwnersIsStable checks the invariant Owners promises against ranks
// computed here by a plain sort: no shard prefers a member that has room
// or holds a shard it ranks below that one.
func TestOwnersIsStable(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	for _, tt := range []struct {
		shards uint32
		n      int
	}{{64, 3}, {1024, 3}, {1024, 9}, {1024, 16}, {1000, 16}, {4096, 40}} {
		names := memberSet(randomNames(r, tt.n))
		owner := assign(tt.shards, names)
		rank := make([][]uint32, tt.n)
		for m, name := range names {
			seed := xxhash.Sum64String(name)
			order := make([]uint32, tt.shards)
			for s := range order {
				order[s] = uint32(s)
			}
			key := func(s uint32) uint64 { return uint64(^uint32(weight(seed, s)>>32))<<32 | uint64(s) }
			slices.SortFunc(order, func(a, b uint32) int { return cmpUint64(key(a), key(b)) })
			rank[m] = make([]uint32, tt.shards)
			for pos, s := range order {
				rank[m][s] = uint32(pos)
			}
		}
		c := capacity(tt.shards, tt.n)
		held := make([]int, tt.n)
		worst := make([]uint32, tt.n) // the worst rank each member holds
		for s, m := range owner {
			held[m]++
			worst[m] = max(worst[m], rank[m][s])
		}
		for m := range held {
			if held[m] > c {
				t.Fatalf("%d shards, %d members: member %d holds %d, capacity %d", tt.shards, tt.n, m, held[m], c)
			}
		}
		prefers := func(s uint32, a, b int) bool {
			if rank[a][s] != rank[b][s] {
				return rank[a][s] < rank[b][s]
			}
			if wa, wb := weight(xxhash.Sum64String(names[a]), s), weight(xxhash.Sum64String(names[b]), s); wa != wb {
				return wa > wb
			}
			return a < b
		}
		for s, o := range owner {
			for m := range tt.n {
				if m == int(o) || !prefers(uint32(s), m, int(o)) {
					continue
				}
				if held[m] < c || rank[m][s] < worst[m] {
					t.Fatalf("%d shards, %d members: shard %d is with member %d but prefers member %d, which would take it", tt.shards, tt.n, s, o, m)
				}
			}
		}
	}
}

func cmpUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Placements computed once; see TestOwnersGolden.
const (
	golden3Shard0      = "timerd-0"
	golden3Shard1      = "timerd-0"
	golden3Shard1023   = "timerd-2"
	golden16Shard0     = "timerd-12.timerd.svc:7946"
	golden16Shard777   = "timerd-6.timerd.svc:7946"
	golden16of64Shard5 = "timerd-10.timerd.svc:7946"
	golden3Sum         = 0x1aa624d07c0cf3cd
	golden16Sum        = 0x9f6330c95f9b1fa4
)

func BenchmarkOwners(b *testing.B) {
	for _, bb := range []struct {
		shards uint32
		n      int
	}{{1024, 3}, {1024, 16}, {4096, 64}} {
		names := make([]string, bb.n)
		for i := range names {
			names[i] = fmt.Sprintf("timerd-%d.timerd.svc:7946", i)
		}
		b.Run(fmt.Sprintf("shards=%d/members=%d", bb.shards, bb.n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Owners(bb.shards, names)
			}
		})
	}
}

// balanceStats is how evenly an assignment spreads 1,024 shards over
// random sets of n members, and how much one join or leave moves.
type balanceStats struct {
	worstLoad float64 // the busiest member's shards over the average
	worstMove float64 // shards moved over the minimum, the worst change
	meanMove  float64 // the same, on average
}

// measureBalance computes balanceStats for owners over sets random sets of
// n members, each with one join (n+1 members) and one leave (n-1).
func measureBalance(owners func(uint32, []string) []string, n, sets int) balanceStats {
	const shards = 1024
	r := rand.New(rand.NewPCG(uint64(n), 2026))
	var st balanceStats
	for range sets {
		names := randomNames(r, n+1)
		members := names[:n]
		before := owners(shards, members)
		st.worstLoad = max(st.worstLoad, loadRatio(before, n))
		join := moveRatio(before, owners(shards, names), n, n+1)
		leave := moveRatio(before, owners(shards, names[1:n]), n, n-1)
		st.worstMove = max(st.worstMove, join, leave)
		st.meanMove += (join + leave) / float64(2*sets)
	}
	return st
}

// BenchmarkRingBalance reports, for 3, 9 and 16 members, the worst load
// and the worst and mean movement of Owners over 200 random member sets,
// and beside them the same figures for plain rendezvous hashing.
func BenchmarkRingBalance(b *testing.B) {
	for _, n := range []int{3, 9, 16} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			var st, peer balanceStats
			for b.Loop() {
				st = measureBalance(Owners, n, 200)
				peer = measureBalance(rendezvous, n, 200)
			}
			b.ReportMetric(st.worstLoad, "maxload/avg")
			b.ReportMetric(st.worstMove, "maxmove/min")
			b.ReportMetric(st.meanMove, "meanmove/min")
			b.ReportMetric(peer.worstLoad, "rdv-maxload/avg")
			b.ReportMetric(peer.worstMove, "rdv-maxmove/min")
			b.ReportMetric(peer.meanMove, "rdv-meanmove/min")
		})
	}
}
