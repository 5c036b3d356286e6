package redistest

import (
	"context"
	"strconv"
	"testing"
)

func TestStartKillRestart(t *testing.T) {
	ctx := context.Background()
	s := Start(t)
	c := s.Client(t)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}
	// Acknowledged writes before the crash.
	for i := range 100 {
		if err := c.Set(ctx, "k"+strconv.Itoa(i), i, 0).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
	}
	s.Kill(t)
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded after Kill")
	}
	s.Restart(t)
	for i := range 100 {
		got, err := c.Get(ctx, "k"+strconv.Itoa(i)).Int()
		if err != nil || got != i {
			t.Fatalf("GET k%d after restart = %d, %v; want %d", i, got, err, i)
		}
	}
	// A graceful stop and restart keeps the data too.
	s.Stop(t)
	s.Restart(t)
	if n, err := c.DBSize(ctx).Result(); err != nil || n != 100 {
		t.Fatalf("DBSIZE after stop and restart = %d, %v; want 100", n, err)
	}
}

func TestTwoServersDistinctPorts(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("two servers share %s", a.Addr())
	}
}

func TestStartCluster(t *testing.T) {
	ctx := context.Background()
	s := StartCluster(t)
	c := s.ClusterClient(t)
	if err := c.Set(ctx, "{a}x", "1", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	slot, err := c.ClusterKeySlot(ctx, "{a}x").Result()
	if err != nil {
		t.Fatalf("CLUSTER KEYSLOT: %v", err)
	}
	if want, _ := c.ClusterKeySlot(ctx, "a").Result(); slot != want {
		t.Fatalf("slot of {a}x = %d, want slot of a = %d", slot, want)
	}
	s.Kill(t)
	s.Restart(t)
	if got, err := c.Get(ctx, "{a}x").Result(); err != nil || got != "1" {
		t.Fatalf("GET after restart = %q, %v", got, err)
	}
}
