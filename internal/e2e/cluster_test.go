package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/logline"
	"github.com/timerd/timerd/internal/redistest"
)

// gossipAddr returns the gossip address a cluster member logged at start.
func (n *node) gossipAddr() string {
	n.t.Helper()
	for line := range strings.Lines(n.logs.String()) {
		if strings.Contains(line, `msg="cluster: started"`) {
			return logline.Parse(line)["gossip"]
		}
	}
	n.t.Fatal("timerd did not log its gossip address")
	return ""
}

// shardOwners returns how many shards each member owns, from
// timerctl status --json on the node at addr.
func shardOwners(t *testing.T, addr string) map[string]int {
	t.Helper()
	o := mustTimerctl(t, addr, "--json", "status")
	var st struct {
		Shards []struct {
			Owner string `json:"owner"`
			State string `json:"state"`
		} `json:"shards"`
	}
	if err := json.Unmarshal([]byte(o.stdout), &st); err != nil {
		t.Fatalf("status --json printed %q: %v", o.stdout, err)
	}
	owners := map[string]int{}
	for _, s := range st.Shards {
		owners[s.Owner]++
	}
	return owners
}

// TestClusterLeave runs two timerd processes as a cluster on one real
// Redis: they split the shards, any node takes any timer, and SIGTERM
// makes one hand its shards over and exit 0, after which the other owns
// every shard and delivers every timer.
func TestClusterLeave(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	common := []string{"--redis", "redis://" + rs.Addr(), "--shards", "16", "--gossip-addr", "127.0.0.1:0"}
	a := startNode(t, t.TempDir(), append(common, "--node-name", "a")...)
	b := startNode(t, t.TempDir(), append(common, "--node-name", "b", "--join", a.gossipAddr())...)
	waitFor(t, readyTimeout, "both nodes to own shards", func() bool {
		o := shardOwners(t, a.grpcAddr)
		return o["a"] > 0 && o["b"] > 0 && o["a"]+o["b"] == 16
	})
	const n = 40
	for i := range n {
		mustTimerctl(t, b.grpcAddr, "schedule", fmt.Sprint("c", i), "--topic", "leave", "--in", "2s")
	}

	a.stop(syscall.SIGTERM) // fails unless it exits 0
	if !strings.Contains(a.logs.String(), `msg="cluster: left"`) {
		t.Errorf("a did not log that it handed its shards over and left")
	}
	if o := shardOwners(t, b.grpcAddr); o["b"] != 16 {
		t.Fatalf("after a left, owners %v; want b to own all 16 shards", o)
	}
	recs, o := subscribe(t, b.grpcAddr, "--topic", "leave", "--count", fmt.Sprint(n), "--json", "--max-wait", "30s")
	if o.code != 0 || len(recs) != n {
		t.Fatalf("want %d deliveries from b: %v", n, o)
	}
	for _, d := range recs {
		if d.at.Before(d.DueTime) {
			t.Errorf("%s received %v early", d.ID, d.DueTime.Sub(d.at))
		}
	}
	b.stop(syscall.SIGTERM)
}

// TestClusterStopsTogether: every member of a cluster stopped at once
// (a whole deployment shut down) still exits 0 without waiting out its
// shutdown timeout, though no member is left to take its shards or to
// hear it leave.
func TestClusterStopsTogether(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	common := []string{"--redis", "redis://" + rs.Addr(), "--shards", "16", "--gossip-addr", "127.0.0.1:0", "--shutdown-timeout", "20s"}
	a := startNode(t, t.TempDir(), append(common, "--node-name", "a")...)
	b := startNode(t, t.TempDir(), append(common, "--node-name", "b", "--join", a.gossipAddr())...)
	c := startNode(t, t.TempDir(), append(common, "--node-name", "c", "--join", a.gossipAddr())...)
	waitFor(t, readyTimeout, "the three nodes to own shards", func() bool {
		o := shardOwners(t, a.grpcAddr)
		return o["a"] > 0 && o["b"] > 0 && o["c"] > 0
	})
	began := time.Now()
	for _, n := range []*node{a, b, c} {
		if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*node{a, b, c} {
		select {
		case <-n.exited:
		case <-time.After(stopTimeout):
			t.Fatalf("a member did not exit within %v of SIGTERM", stopTimeout)
		}
		if n.state.ExitCode() != 0 {
			t.Errorf("a member exited with %v after SIGTERM, want exit code 0", n.state)
		}
	}
	t.Logf("three members stopped together in %v", time.Since(began))
}
