package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/clustertest"
	"github.com/timerd/timerd/server"
	"github.com/timerd/timerd/shard"
)

// TestRunStatusCluster runs status against a real cluster of three
// in-process nodes while one of them dies: before, every shard is served
// where the ring assigns it; right after the kill, each shard the dead
// node held shows as without an owner or moving (its lease has not
// lapsed yet, so nobody serves it); once the others have taken it over,
// nothing is moving or without an owner again, and the dead node owns
// nothing.
func TestRunStatusCluster(t *testing.T) {
	t.Parallel()
	// A lease outlives the status calls that follow the kill by far: the
	// dead node's shards cannot be taken over before it lapses.
	const ttl = 6 * time.Second
	c := clustertest.Start(t, 3, func(cfg *server.Config) {
		cfg.Shard.LeaseTTL = ttl
		cfg.Shard.ClockDrift = shard.ClockDriftFor(ttl)
	})
	addr := c.Node(0).GRPCAddr()
	const victim = "node-2"
	var victimShards []uint32 // the shards victim served before it died

	status := func(t *testing.T) statusView {
		t.Helper()
		return decode[statusView](t, mustCtl(t, addr, "status", "--json").stdout)
	}
	// elsewhere lists the shards of victimShards that are not in list.
	elsewhere := func(list []shardView) []uint32 {
		var out []uint32
		for _, s := range victimShards {
			if !slices.ContainsFunc(list, func(v shardView) bool { return v.Shard == s }) {
				out = append(out, s)
			}
		}
		return out
	}
	settled := func(t *testing.T, v statusView) {
		t.Helper()
		if v.Settled != 32 || len(v.Moving) != 0 || len(v.Unowned) != 0 {
			t.Errorf("settled %d, moving %+v, unowned %+v; want 32 settled", v.Settled, v.Moving, v.Unowned)
		}
		served := 0
		for _, m := range v.Members {
			served += m.Serving
			if m.Owned != m.Assigned || m.Serving != m.Owned {
				t.Errorf("member %+v: assigned, owned and serving differ", m)
			}
		}
		if served != 32 {
			t.Errorf("members serve %d shards, want 32: %+v", served, v.Members)
		}
	}

	tests := []struct {
		name  string
		act   func(t *testing.T)
		check func(t *testing.T)
	}{
		{"all three serve", func(*testing.T) {}, func(t *testing.T) {
			v := status(t)
			settled(t, v)
			if len(v.Members) != 3 {
				t.Fatalf("members %+v, want 3", v.Members)
			}
			for _, m := range v.Members {
				if m.State != "alive" || m.NodeState != "active" || m.Serving == 0 {
					t.Errorf("member %+v: want alive, active, serving shards", m)
				}
			}
			for _, s := range v.Shards {
				if s.Owner == victim {
					victimShards = append(victimShards, s.Shard)
				}
			}
			text := mustCtl(t, addr, "status").stdout
			for _, want := range []string{"MEMBER  GRPC ADDRESS", ": 32 served where assigned, 0 moving, 0 without an owner\n"} {
				if !strings.Contains(text, want) {
					t.Errorf("status lacks %q:\n%s", want, text)
				}
			}
		}},
		{"one killed", func(*testing.T) { c.Kill(2) }, func(t *testing.T) {
			v := status(t)
			if lost := elsewhere(append(v.Unowned, v.Moving...)); len(lost) > 0 {
				t.Errorf("shards %v of the dead %s are neither without an owner nor moving: %+v", lost, victim, v)
			}
			if v.Settled == 32 {
				t.Errorf("all 32 shards settled right after a kill")
			}
			text := mustCtl(t, addr, "status", "--limit", "0").stdout
			if !containsAny(text, "\nwithout an owner:\n", "\nmoving:\n") {
				t.Errorf("status lists no moving or unowned shard:\n%s", text)
			}
		}},
		{"taken over", func(t *testing.T) {
			waitFor(t, time.Minute, "the dead node's shards to be taken over", func() bool {
				v := status(t)
				return len(v.Moving) == 0 && len(v.Unowned) == 0
			})
		}, func(t *testing.T) {
			v := status(t)
			settled(t, v)
			for _, m := range v.Members {
				if m.Name == victim && m.Owned > 0 {
					t.Errorf("the dead %s still owns %d shards", victim, m.Owned)
				}
			}
			if lost := elsewhere(v.Shards); len(lost) != 0 {
				t.Errorf("shards %v missing from the map", lost)
			}
			for _, s := range v.Shards {
				if slices.Contains(victimShards, s.Shard) && (s.Owner == victim || s.Owner == "") {
					t.Errorf("shard %d of the dead node: %+v", s.Shard, s)
				}
			}
			text := mustCtl(t, addr, "status").stdout
			if strings.Contains(text, "moving:") || strings.Contains(text, "without an owner:") {
				t.Errorf("a settled cluster lists moving or unowned shards:\n%s", text)
			}
		}},
	}
	for _, tt := range tests {
		tt.act(t)
		t.Run(tt.name, tt.check)
	}
	if len(victimShards) == 0 {
		t.Fatalf("%s served no shard", victim)
	}
}
