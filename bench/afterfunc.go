package bench

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// AfterFunc is the floor of lateness on the machine the bench runs on: a
// timer is Go's time.AfterFunc in the bench's own process, with nothing
// durable, no network and no subscriber protocol between it and the
// bench. Run beside timerd on the same machine, its lateness is the part
// of timerd's that the machine's scheduling alone accounts for.
//
// It takes no lock of its own across a Schedule batch or on the way from
// a timer to its subscription: a firing timer reads the subscriptions
// through an atomic pointer and leaves the pending set (a sync.Map) with
// one CompareAndDelete, so it never waits for a batch being scheduled or
// for another timer's callback. Its methods may be called concurrently.
type AfterFunc struct {
	// subs are the subscriptions by topic: a map never changed once
	// stored, replaced whole under mu.
	subs atomic.Pointer[map[string]func(Delivery)]
	// timers are the pending timers by id (*afterTimer), so Cleanup can
	// stop them.
	// Invariant: a timer that has fired, been stopped or been replaced by
	// a timer of the same id is not in timers.
	timers sync.Map

	// mu serialises changes of subs with held, so that a timer firing as
	// its topic gets a subscription is either held and handed over, or
	// delivered.
	mu sync.Mutex
	// held are the deliveries of topics that had no subscription when
	// their timers fired: like timerd, the peer keeps them for the next
	// one rather than drop them.
	// Invariant: a topic in subs has nothing held.
	held map[string][]Delivery
}

// afterTimer is one pending timer; t is set once time.AfterFunc returns.
type afterTimer struct{ t atomic.Pointer[time.Timer] }

func (e *afterTimer) stop() {
	if t := e.t.Load(); t != nil {
		t.Stop()
	}
}

// NewAfterFunc returns the in-process peer.
func NewAfterFunc() *AfterFunc {
	a := &AfterFunc{held: make(map[string][]Delivery)}
	a.subs.Store(&map[string]func(Delivery){})
	return a
}

// Name implements Target.
func (a *AfterFunc) Name() string { return "afterfunc" }

// Addr implements Target.
func (a *AfterFunc) Addr() string { return "in process" }

// Schedule implements Target: one time.AfterFunc per timer. A timer whose
// topic has no subscription when it fires is held for the next one.
func (a *AfterFunc) Schedule(_ context.Context, timers []Timer) error {
	for _, t := range timers {
		e := &afterTimer{}
		if prev, ok := a.timers.Swap(t.ID, e); ok {
			prev.(*afterTimer).stop() // scheduling an id again replaces it
		}
		d := Delivery{ID: t.ID, Due: t.Due, Attempt: 1}
		topic := t.Topic
		// time.Until uses the monotonic reading of Due when it has one.
		e.t.Store(time.AfterFunc(time.Until(t.Due), func() { a.fire(e, d, topic) }))
	}
	return nil
}

// fire delivers the timer e, unless Cleanup or Close took it first.
func (a *AfterFunc) fire(e *afterTimer, d Delivery, topic string) {
	d.Fired = time.Now()
	if !a.timers.CompareAndDelete(d.ID, e) {
		return
	}
	fn := (*a.subs.Load())[topic]
	if fn == nil {
		// Rare: nobody subscribed. Look again under mu, which Subscribe
		// holds while it installs a subscription and takes what is held.
		a.mu.Lock()
		if fn = (*a.subs.Load())[topic]; fn == nil {
			a.held[topic] = append(a.held[topic], d)
		}
		a.mu.Unlock()
		if fn == nil {
			return
		}
	}
	fn(d)
}

// Subscribe implements Firer.
func (a *AfterFunc) Subscribe(ctx context.Context, topic string, fn func(Delivery)) error {
	a.mu.Lock()
	a.setSubLocked(topic, fn)
	held := a.held[topic]
	delete(a.held, topic)
	a.mu.Unlock()
	for _, d := range held {
		fn(d)
	}
	<-ctx.Done()
	a.mu.Lock()
	a.setSubLocked(topic, nil)
	a.mu.Unlock()
	return nil
}

// setSubLocked replaces the subscriptions with a copy in which topic has
// fn (none for nil).
func (a *AfterFunc) setSubLocked(topic string, fn func(Delivery)) {
	subs := maps.Clone(*a.subs.Load())
	if fn == nil {
		delete(subs, topic)
	} else {
		subs[topic] = fn
	}
	a.subs.Store(&subs)
}

// Cleanup implements Target by stopping the timers ids still pending.
func (a *AfterFunc) Cleanup(_ context.Context, _ string, ids []string) error {
	for _, id := range ids {
		if e, ok := a.timers.LoadAndDelete(id); ok {
			e.(*afterTimer).stop()
		}
	}
	return nil
}

// Close implements Target by stopping every pending timer.
func (a *AfterFunc) Close() error {
	a.timers.Range(func(id, _ any) bool {
		if e, ok := a.timers.LoadAndDelete(id); ok {
			e.(*afterTimer).stop()
		}
		return true
	})
	a.mu.Lock()
	clear(a.held)
	a.mu.Unlock()
	return nil
}
