// Package ring places timers on shards and shards on nodes.
//
// A timer's shard is a pure function of its namespace, its id and the
// deployment's shard count (Shard), so every node and every client
// computes the same placement without asking anyone. The node that
// should own a shard is a pure function of the shard count and the set of
// cluster members (Owners), so every node that sees the same membership
// computes the same map.
//
// The ring says who SHOULD own a shard; the shard's lease in the store
// (an epoch and a token that fence every write) decides who DOES. Nodes
// that briefly disagree about the membership may both want a shard, but
// only the lease holder serves it.
//
// The package is pure and deterministic: it does no I/O, reads no clock,
// starts no goroutines, keeps no state and imports nothing of timerd's.
package ring

import "github.com/cespare/xxhash/v2"

// Shard returns the shard of the timer namespace/id among shards shards:
// xxhash64(namespace + "\x00" + id) modulo shards, as the public contract
// states. Namespaces cannot contain a zero byte, so no two timers that
// differ in namespace or id are hashed from the same bytes. shards must be
// at least 1. Shard does not allocate.
func Shard(namespace, id string, shards uint32) uint32 {
	var d xxhash.Digest
	d.Reset()
	_, _ = d.WriteString(namespace)
	_, _ = d.Write(zero[:])
	_, _ = d.WriteString(id)
	return uint32(d.Sum64() % uint64(shards))
}

// zero separates the namespace from the id in the hashed bytes.
var zero = [1]byte{0}
