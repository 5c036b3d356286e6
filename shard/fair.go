package shard

// fairQueue holds the due timers a shard took from its wheel but has not
// handled yet, one first-in-first-out queue per namespace, and hands
// them out round-robin across namespaces: a herd of one namespace's due
// timers delays another namespace's by at most one timer per namespace
// with timers queued, not by the whole herd. Within a namespace timers
// keep the order they came due in.
//
// Invariant: ring holds exactly the queues of queues, each with at least
// one entry (stale ones included); n is the sum of their entries.
type fairQueue struct {
	queues map[string]*nsQueue
	ring   []*nsQueue
	next   int // index in ring of the queue served next
	n      int
	// last is the queue pushed to last, while it is in the ring: a herd
	// comes due in one namespace, and needs no map lookup per timer.
	last *nsQueue
}

// nsQueue is one namespace's due timers, oldest at head.
type nsQueue struct {
	ns    string
	items []waitEntry
	head  int
}

// len returns the entries queued, stale ones included.
func (f *fairQueue) len() int { return f.n }

// push queues e, of a timer of namespace ns, behind the due timers of
// ns.
func (f *fairQueue) push(e waitEntry, ns string) {
	q := f.last
	if q == nil || q.ns != ns {
		q = f.queues[ns]
	}
	if q == nil {
		if f.queues == nil {
			f.queues = make(map[string]*nsQueue)
		}
		q = &nsQueue{ns: ns}
		f.queues[ns] = q
		f.ring = append(f.ring, q)
	}
	if len(q.items) == cap(q.items) && q.head >= len(q.items)/2 {
		// Full, and at least half of it popped: slide what is queued to
		// the front rather than grow. A herd streams through its queue a
		// few timers at a time, so the array stays about twice what the
		// queue holds, not as long as the herd; and each slide moves at
		// most half the array, after as many pops, so push stays O(1)
		// amortized.
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items = q.items[:n]
		q.head = 0
	}
	q.items = append(q.items, e)
	f.n++
	f.last = q
}

// pop returns the oldest entry of the next namespace in turn; ok is false
// when nothing is queued. The entry may be stale: its timer is no longer
// queued there (see waitEntry.due).
func (f *fairQueue) pop() (e waitEntry, ok bool) {
	if f.n == 0 {
		return waitEntry{}, false
	}
	if f.next >= len(f.ring) {
		f.next = 0
	}
	q := f.ring[f.next]
	e = q.items[q.head]
	q.head++
	f.n--
	if q.head == len(q.items) {
		// Empty: drop the queue and its array (a herd's can be large).
		// The last queue takes its place in the ring, which then serves
		// that one next.
		delete(f.queues, q.ns)
		if f.last == q {
			f.last = nil
		}
		last := len(f.ring) - 1
		f.ring[f.next] = f.ring[last]
		f.ring[last] = nil
		f.ring = f.ring[:last]
		return e, true
	}
	f.next++
	return e, true
}
