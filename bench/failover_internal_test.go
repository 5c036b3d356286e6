package bench

import (
	"context"
	"testing"
	"time"
)

// cutLayout is a Cluster whose first Layout answers with layout and whose
// later ones wait until their context ends.
type cutLayout struct {
	Cluster
	layout Layout
	calls  int
}

func (c *cutLayout) Layout(ctx context.Context) (Layout, error) {
	c.calls++
	if c.calls == 1 {
		return c.layout, nil
	}
	<-ctx.Done()
	return Layout{}, ctx.Err()
}

// TestLayoutAfterKillCutShort: when the wait for a killed member ends in
// the middle of a read, the layout returned is the last one read whole,
// which still shows every member alive, not the empty one of the cut
// read, which would say every member died.
func TestLayoutAfterKillCutShort(t *testing.T) {
	l := Layout{Members: []MemberInfo{{Name: "a", Incarnation: "1", Alive: true}, {Name: "b", Incarnation: "1", Alive: true}}, Shards: make([]ShardInfo, 4)}
	r := &run{clock: wallClock{}, stop: func() {}}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	after := r.layoutAfterKill(ctx, &cutLayout{layout: l}, l)
	if dead := killedMembers(l, after); len(dead) > 0 {
		t.Fatalf("a read cut short made %v look killed", dead)
	}
	if r.failure() != nil {
		t.Fatalf("the run failed: %v", r.failure())
	}
}
