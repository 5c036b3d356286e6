package node

import (
	"context"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/redistest"
	"github.com/timerd/timerd/shard"
)

// TestSteadyClockAnchor opens nodes whose wall clock is 5 minutes ahead of
// the machine's: on Redis the node's clock takes Redis's time (TIME) and
// reports the wall's skew; on the embedded store, with no clock to ask,
// it takes the wall. A node given a clock of its own keeps it.
func TestSteadyClockAnchor(t *testing.T) {
	const ahead = 5 * time.Minute
	wall := func() time.Time { return time.Now().Add(ahead).Round(0) }
	rs := redistest.Start(t)
	for _, tc := range []struct {
		name      string
		redis     bool
		clock     shard.Clock // Config.Shard.Clock; nil keeps the default
		wantAhead time.Duration
		wantSkew  time.Duration
		wantNil   bool
	}{
		{name: "redis", redis: true, wantAhead: 0, wantSkew: ahead},
		{name: "embedded", wantAhead: ahead, wantSkew: 0},
		{name: "a clock of its own", clock: fixedClock{}, wantNil: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := LocalConfig("a/1", t.TempDir())
			if tc.redis {
				c.RedisURL = "redis://" + rs.Addr()
			}
			if tc.clock != nil {
				c.Shard.Clock = tc.clock
			}
			c.SteadyClock.Wall = wall
			n, err := New(c)
			if err != nil {
				t.Fatal(err)
			}
			if err := n.Open(context.Background()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = n.Close(context.Background()) })
			clk := n.Clock()
			if tc.wantNil {
				if clk != nil {
					t.Fatalf("Clock() = %v with Shard.Clock set, want nil", clk)
				}
				return
			}
			const slack = time.Second
			if got := time.Until(clk.Now().Round(0)); (got - tc.wantAhead).Abs() > slack {
				t.Errorf("the node's clock is %v ahead of the machine's, want %v", got, tc.wantAhead)
			}
			if got := clk.Skew(); (got - tc.wantSkew).Abs() > slack {
				t.Errorf("Skew() = %v, want %v", got, tc.wantSkew)
			}
		})
	}
}

// fixedClock is a Clock that is not the default.
type fixedClock struct{ shard.SystemClock }
