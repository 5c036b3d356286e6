package shard

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestDeliveryIDRoundTrip(t *testing.T) {
	cases := []DeliveryID{
		{Shard: 0, Namespace: "a", TimerID: "b"},
		{Shard: 1<<32 - 1, Namespace: strings.Repeat("n", MaxNamespaceLen), TimerID: strings.Repeat("\u00e9", MaxIDLen/2), OccEpoch: 1<<64 - 1, OccSeq: 1<<64 - 1},
		{Shard: 17, Namespace: "orders", TimerID: "id with\x00nul and spaces", OccEpoch: 3, OccSeq: 99},
	}
	for _, c := range cases {
		s := c.String()
		if len(s) > maxDeliveryIDLen {
			t.Errorf("%+v encodes to %d bytes, above the bound %d", c, len(s), maxDeliveryIDLen)
		}
		got, err := ParseDeliveryID(s)
		if err != nil || got != c {
			t.Errorf("ParseDeliveryID(%q) = %+v, %v; want %+v", s, got, err, c)
		}
	}
}

// TestDeliveryIDStringAllocs: a shard encodes an id per delivery, so the
// encoding allocates the string it returns and nothing else, however long
// the timer's key within the limits.
func TestDeliveryIDStringAllocs(t *testing.T) {
	cases := []DeliveryID{
		{Shard: 7, Namespace: "orders", TimerID: "o-1", OccEpoch: 3, OccSeq: 12},
		{Shard: 1<<32 - 1, Namespace: strings.Repeat("n", MaxNamespaceLen), TimerID: strings.Repeat("i", MaxIDLen), OccEpoch: 1<<64 - 1, OccSeq: 1<<64 - 1},
	}
	for _, c := range cases {
		var s string
		allocs := testing.AllocsPerRun(100, func() { s = c.String() })
		if allocs != 1 {
			t.Errorf("String of a %d-byte id allocated %v times, want 1", len(c.TimerID), allocs)
		}
		if got, err := ParseDeliveryID(s); err != nil || got != c {
			t.Errorf("ParseDeliveryID(%q) = %+v, %v; want %+v", s, got, err, c)
		}
	}
}

func TestParseDeliveryIDRejects(t *testing.T) {
	long := DeliveryID{Namespace: "a", TimerID: strings.Repeat("x", MaxIDLen+1)}.String()
	for _, s := range []string{"", "!!!", "AAAA", DeliveryID{Namespace: "a b", TimerID: "x"}.String(), long, strings.Repeat("A", 1000)} {
		if _, err := ParseDeliveryID(s); !errors.Is(err, ErrInvalidDeliveryID) {
			t.Errorf("ParseDeliveryID(%q) = %v, want ErrInvalidDeliveryID", s, err)
		}
	}
}

// FuzzParseDeliveryID: any string either fails cleanly or decodes to an id
// that encodes back to the same string.
func FuzzParseDeliveryID(f *testing.F) {
	f.Add(DeliveryID{Shard: 3, Namespace: "ns", TimerID: "id", OccEpoch: 2, OccSeq: 5}.String())
	f.Add("")
	f.Add("AAECAw")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDeliveryID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidDeliveryID) {
				t.Fatalf("error %v does not wrap ErrInvalidDeliveryID", err)
			}
			return
		}
		if again, err := ParseDeliveryID(d.String()); err != nil || again != d {
			t.Fatalf("re-encoding %+v gives %+v, %v", d, again, err)
		}
	})
}

// TestIDArena: ids carved from shared blocks are the ids String makes,
// stay intact while later ones are carved after them, and cost a
// fraction of an allocation each.
func TestIDArena(t *testing.T) {
	long := DeliveryID{Shard: 1<<32 - 1, Namespace: strings.Repeat("n", MaxNamespaceLen), TimerID: strings.Repeat("i", MaxIDLen), OccEpoch: 1<<64 - 1, OccSeq: 1<<64 - 1}
	var a idArena
	type made struct {
		id DeliveryID
		s  string
	}
	var all []made
	for i := range 5000 {
		d := DeliveryID{Shard: uint32(i % 64), Namespace: "orders", TimerID: fmt.Sprintf("order-%d", i), OccEpoch: uint64(i / 100), OccSeq: uint64(i)}
		if i%97 == 0 {
			d = long
		}
		s := a.id(d)
		if want := d.String(); s != want || d.encodedLen() != len(want) {
			t.Fatalf("id %d: arena made %q (encodedLen %d), String makes %q", i, s, d.encodedLen(), want)
		}
		all = append(all, made{d, s})
	}
	for i, m := range all {
		if m.s != m.id.String() {
			t.Fatalf("id %d changed after later ids were made: %q", i, m.s)
		}
	}
	d := DeliveryID{Shard: 7, Namespace: "orders", TimerID: "order-12345", OccEpoch: 3, OccSeq: 12}
	allocs := testing.AllocsPerRun(1000, func() { _ = a.id(d) })
	if allocs > 0.1 {
		t.Fatalf("%v allocations per id, want a block every few dozen ids", allocs)
	}
}
