//go:build !race

package shard

// raceEnabled is whether the race detector runs, which makes the
// simulation several times slower: it then runs fewer seeds.
const raceEnabled = false
