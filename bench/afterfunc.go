package bench

import (
	"context"
	"sync"
	"time"
)

// AfterFunc is the floor of lateness on the machine the bench runs on: a
// timer is Go's time.AfterFunc in the bench's own process, with nothing
// durable, no network and no subscriber protocol between it and the
// bench. Run beside timerd on the same machine, its lateness is the part
// of timerd's that the machine's scheduling alone accounts for. Its
// methods may be called concurrently.
type AfterFunc struct {
	mu sync.Mutex
	// subs are the subscriptions by topic; timers are the pending
	// timers by id, so Cleanup can stop them.
	subs   map[string]func(Delivery)
	timers map[string]*time.Timer
	// held are the deliveries of topics that had no subscription when
	// their timers fired: like timerd, the peer keeps them for the next
	// one rather than drop them.
	// Invariant: a topic in subs has nothing held.
	held map[string][]Delivery
	// Invariant: every timer in timers is pending or being fired.
}

// NewAfterFunc returns the in-process peer.
func NewAfterFunc() *AfterFunc {
	return &AfterFunc{subs: make(map[string]func(Delivery)), timers: make(map[string]*time.Timer),
		held: make(map[string][]Delivery)}
}

// Name implements Target.
func (a *AfterFunc) Name() string { return "afterfunc" }

// Addr implements Target.
func (a *AfterFunc) Addr() string { return "in process" }

// Schedule implements Target: one time.AfterFunc per timer. A timer whose
// topic has no subscription when it fires is held for the next one.
func (a *AfterFunc) Schedule(_ context.Context, timers []Timer) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, t := range timers {
		d := Delivery{ID: t.ID, Due: t.Due, Attempt: 1}
		topic := t.Topic
		a.timers[t.ID] = time.AfterFunc(time.Until(t.Due), func() {
			d.Fired = time.Now()
			a.mu.Lock()
			fn := a.subs[topic]
			delete(a.timers, d.ID)
			if fn == nil {
				a.held[topic] = append(a.held[topic], d)
			}
			a.mu.Unlock()
			if fn != nil {
				fn(d)
			}
		})
	}
	return nil
}

// Subscribe implements Firer.
func (a *AfterFunc) Subscribe(ctx context.Context, topic string, fn func(Delivery)) error {
	a.mu.Lock()
	a.subs[topic] = fn
	held := a.held[topic]
	delete(a.held, topic)
	a.mu.Unlock()
	for _, d := range held {
		fn(d)
	}
	<-ctx.Done()
	a.mu.Lock()
	delete(a.subs, topic)
	a.mu.Unlock()
	return nil
}

// Cleanup implements Target by stopping the timers ids still pending.
func (a *AfterFunc) Cleanup(_ context.Context, _ string, ids []string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		if t := a.timers[id]; t != nil {
			t.Stop()
			delete(a.timers, id)
		}
	}
	return nil
}

// Close implements Target by stopping every pending timer.
func (a *AfterFunc) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, t := range a.timers {
		t.Stop()
		delete(a.timers, id)
	}
	clear(a.held)
	return nil
}
