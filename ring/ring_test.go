package ring

import (
	"fmt"
	"testing"

	"github.com/cespare/xxhash/v2"
)

func TestShardMatchesContract(t *testing.T) {
	tests := []struct {
		namespace, id string
		shards        uint32
	}{
		{"default", "order-1", 1},
		{"default", "order-1", 64},
		{"billing", "invoice/2026/11/21", 1024},
		{"a", "", 7},
		{"", "x", 3},
		{"ns.with-dots_", "ümlaut ✓", 4096},
	}
	for _, tt := range tests {
		want := uint32(xxhash.Sum64String(tt.namespace+"\x00"+tt.id) % uint64(tt.shards))
		if got := Shard(tt.namespace, tt.id, tt.shards); got != want {
			t.Errorf("Shard(%q, %q, %d) = %d, want %d", tt.namespace, tt.id, tt.shards, got, want)
		}
	}
}

// TestShardGolden pins placements: changing them would move every stored
// timer to a shard that does not hold it.
func TestShardGolden(t *testing.T) {
	got := []uint32{
		Shard("default", "order-1", 1024),
		Shard("default", "order-2", 1024),
		Shard("billing", "invoice-7", 64),
	}
	want := []uint32{golden0, golden1, golden2}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("placement %d = %d, want %d", i, got[i], want[i])
		}
	}
}

func TestShardSpread(t *testing.T) {
	const shards, n = 64, 64_000
	var counts [shards]int
	for i := range n {
		counts[Shard("default", fmt.Sprintf("timer-%d", i), shards)]++
	}
	// Each shard expects 1,000; a fair hash stays well within ±20%.
	for s, c := range counts {
		if c < 800 || c > 1200 {
			t.Errorf("shard %d got %d of %d timers; want about %d", s, c, n, n/shards)
		}
	}
}

func TestShardDoesNotAllocate(t *testing.T) {
	ns, id := "default", "some-fairly-long-timer-id-0123456789"
	if a := testing.AllocsPerRun(100, func() { Shard(ns, id, 1024) }); a != 0 {
		t.Fatalf("Shard allocates %v times per call", a)
	}
}

func BenchmarkShard(b *testing.B) {
	for b.Loop() {
		Shard("default", "order-1234567890", 1024)
	}
}

// Placements computed once; see TestShardGolden.
const (
	golden0 = 780
	golden1 = 828
	golden2 = 9
)
