//go:build !race

package server_test

// raceEnabled is whether the race detector runs, which makes the
// cluster tests several times slower: they then run fewer timers.
const raceEnabled = false
