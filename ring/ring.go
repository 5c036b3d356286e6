// Package ring places timers on shards: a timer's shard is a pure function
// of its namespace, its id and the deployment's shard count, so every node
// and every client computes the same placement without asking anyone.
//
// The package is pure and deterministic: it does no I/O, reads no clock,
// keeps no state and imports nothing of timerd's. Which node owns a shard
// is decided elsewhere (by leases in the store); this package only says
// which shard a timer belongs to.
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
