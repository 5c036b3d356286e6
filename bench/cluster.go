package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"time"
)

// Cluster is a Target made of nodes that own shards, whose layout a run
// can read: what failover and recovery need to tell one node's timers
// from the others' and to see the cluster serve again.
type Cluster interface {
	Firer
	// Layout returns the members and the shard map as the first node that
	// answers sees them.
	Layout(ctx context.Context) (Layout, error)
	// Shard returns the shard of the run's timer id in a cluster of
	// shards shards.
	Shard(id string, shards uint32) uint32
	// Absent returns those of the timers ids that are not stored.
	Absent(ctx context.Context, ids []string) ([]string, error)
}

// Layout is a cluster's members and shards at one moment.
type Layout struct {
	Members []MemberInfo
	// Shards has one entry per shard, by shard number.
	Shards []ShardInfo
}

// MemberInfo is one member of a cluster.
type MemberInfo struct {
	Name string
	// Incarnation is new at every start of the member's process.
	Incarnation string
	// Alive: the answering node sees it alive. Active: it takes the
	// shards the ring gives it (not joining, not leaving).
	Alive, Active bool
}

// ShardInfo is one shard of a cluster.
type ShardInfo struct {
	// Owner names the member holding the shard's lease, empty for none.
	Owner string
	// Epoch is the fencing epoch of the owner's lease; it grows with
	// every change of owner.
	Epoch uint64
	// Serving: the owner takes requests and fires the shard's timers.
	Serving bool
	// Timers is how many timers the shard holds, 0 when not serving.
	Timers uint64
}

// member returns the member named name, false when there is none.
func (l Layout) member(name string) (MemberInfo, bool) {
	for _, m := range l.Members {
		if m.Name == name {
			return m, true
		}
	}
	return MemberInfo{}, false
}

// timers returns the timers the shards hold, and whether every shard
// serves (an unserved shard's timers are not counted).
func (l Layout) timers() (n uint64, all bool) {
	all = len(l.Shards) > 0
	for _, s := range l.Shards {
		n += s.Timers
		all = all && s.Serving
	}
	return n, all
}

// Action is a step a scenario takes on the system it measures: kill a
// node (failover), restart the cluster (recovery). The command line tool
// runs a shell command (ShellAction); tests call a function.
type Action struct {
	// Name describes the action in the report, such as its command line.
	Name string
	// Do carries the action out and returns when it is done: a kill once
	// the node is killed, a restart once the nodes have been started again
	// (not once they serve, which is what recovery measures).
	Do func(ctx context.Context) error
}

// set reports whether the action has something to do.
func (a Action) set() bool { return a.Do != nil }

// ShellAction is the Action that runs command with "sh -c", its output
// going to out (nil: discarded). It fails when the command exits with
// another status than 0. A command that leaves processes running in the
// background (a restart) should send their output elsewhere: when out is
// not a file, the action stops waiting for that output a second after
// the command exits.
func ShellAction(command string, out io.Writer) Action {
	return Action{Name: command, Do: func(ctx context.Context) error {
		cmd := exec.CommandContext(ctx, "sh", "-c", command)
		cmd.Stdin = nil
		cmd.Stdout, cmd.Stderr = out, out
		cmd.WaitDelay = time.Second
		if err := cmd.Run(); err != nil && !errors.Is(err, exec.ErrWaitDelay) {
			return fmt.Errorf("%q: %w", command, err)
		}
		return nil
	}}
}
