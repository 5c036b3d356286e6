package bench

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// pending is the number of timers of a not yet fired, stopped or replaced.
func (a *AfterFunc) pending() int {
	n := 0
	a.timers.Range(func(_, _ any) bool { n++; return true })
	return n
}

// TestAfterFuncNoLockAcrossBatch checks that a timer of the in-process
// peer fires and reaches its subscription while another caller is still
// scheduling a large batch: the peer holds no lock across a batch, so
// the floor it measures is the machine's, not its own. (A peer that
// held one would let the timer be scheduled only once the batch was
// done.) A batch too quick to tell is tried again twice as large.
func TestAfterFuncNoLockAcrossBatch(t *testing.T) {
	a := NewAfterFunc()
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan struct{}, 16)
	go func() { _ = a.Subscribe(ctx, "now", func(Delivery) { got <- struct{}{} }) }()
	for n := 100_000; n <= 800_000; n *= 2 {
		batch := make([]Timer, n)
		for i := range batch {
			batch[i] = Timer{ID: "later-" + strconv.Itoa(n) + "-" + strconv.Itoa(i), Topic: "later", Due: time.Now().Add(time.Hour)}
		}
		var done atomic.Bool
		returned := make(chan struct{})
		go func() {
			_ = a.Schedule(ctx, batch)
			done.Store(true)
			close(returned)
		}()
		for a.pending() == 0 && !done.Load() { // until the batch has begun
			time.Sleep(10 * time.Microsecond)
		}
		if err := a.Schedule(ctx, []Timer{{ID: "now-" + strconv.Itoa(n), Topic: "now", Due: time.Now()}}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
		case <-time.After(30 * time.Second):
			t.Fatal("the timer due now never arrived")
		}
		during := !done.Load()
		<-returned
		if err := a.Cleanup(ctx, "later", ids(batch)); err != nil {
			t.Fatal(err)
		}
		if during {
			return
		}
		t.Logf("a batch of %d was done before the timer arrived; again with a larger one", n)
	}
	t.Fatal("no timer arrived while a batch was being scheduled: the peer serialises firing behind scheduling")
}

func ids(ts []Timer) []string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.ID
	}
	return s
}
