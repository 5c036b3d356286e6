package shard

// Turns lets the shards of a node take turns at draining herds. A shard
// with more due work than a light step handles (a herd, or a backlog of
// deliveries a subscriber's credit let through) waits for a turn before
// each step of up to turnFires, and gives the turn back after it; while
// it waits it still wakes when a timer that was not part of that work
// comes due, and hands such timers out in light steps of up to
// lightFires. So a herd spread over every shard keeps at most
// cap(turns) shard loops busy at a time, each for one step, instead of
// every loop at once; the other shards' loops sleep on their timers,
// and Go's scheduler runs a loop woken by its timer, or a stream it
// hands a delivery to, as soon as a step yields the processor. Without
// turns, a timer of another namespace due in the middle of the herd
// would wait for the scheduler to come round to its shard's loop among
// all the busy ones.
//
// A Turns is shared by the shards of one node and safe for concurrent
// use; its zero value is not usable: make it with NewTurns.
type Turns struct {
	// c holds a token per turn taken: a send takes a turn, a receive
	// gives one back.
	c chan struct{}
}

// NewTurns returns turns for n shard loops at a time (at least 1).
func NewTurns(n int) *Turns { return &Turns{c: make(chan struct{}, max(n, 1))} }

// lightFires bounds the due timers a step handles without a turn: a
// step without one runs for a few tens of microseconds.
const lightFires = 32

// turnFires bounds the due timers a step handles in one turn: a few
// hundred microseconds, so that the processor it runs on soon goes to
// the next goroutine the scheduler has.
const turnFires = 256
