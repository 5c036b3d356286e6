package ring

import (
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// Owners returns the owner of each of shards shards among members: plain
// rendezvous hashing, where the member with the highest
// xxhash64(member + "\x00" + decimal shard number) wins, ties going to
// the smaller name. The answer depends only on the set of names, not on
// their order or repetition. With no members every owner is "".
//
// This is a stand-in with the signature of the balanced ring, so that
// packages built against it compile and test until the ring lands.
func Owners(shards uint32, members []string) []string {
	owners := make([]string, shards)
	var buf [10]byte
	var d xxhash.Digest
	for s := range shards {
		num := strconv.AppendUint(buf[:0], uint64(s), 10)
		var best uint64
		for i, m := range members {
			d.Reset()
			_, _ = d.WriteString(m)
			_, _ = d.Write(zero[:])
			_, _ = d.Write(num)
			h := d.Sum64()
			if i == 0 || h > best || (h == best && m < owners[s]) {
				owners[s], best = m, h
			}
		}
	}
	return owners
}
