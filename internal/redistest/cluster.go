package redistest

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// slotCount is the number of Redis Cluster hash slots.
	slotCount = 16384
	// NodeTimeout is the cluster-node-timeout of a cluster started by
	// StartRedisCluster, in milliseconds: how long a master may be
	// unreachable before the others mark it failed and its replica is
	// promoted. Production runs 15000; tests want failovers within seconds.
	NodeTimeout = 1000
	// formTimeout bounds the wait for a new cluster to agree on its slot
	// map and for its replicas to finish their first sync.
	formTimeout = 30 * time.Second
	// failoverTimeout bounds the wait for a failover: failure detection
	// (NodeTimeout), the replica's election delay (0.5–1 s plus 1 s per
	// rank) and the spread of the new configuration.
	failoverTimeout = 30 * time.Second
)

// Cluster is a real multi-node Redis Cluster: masters and their replicas,
// each a Server in cluster mode on its own free ports, with the 16384
// slots split evenly over the masters in order (master 0 owns the lowest
// range). Nodes are started with a cluster-node-timeout of NodeTimeout ms
// and cluster-replica-validity-factor 0 (a replica always may take over),
// so a killed master's replica is promoted within a few seconds.
//
// Which node is a master changes with failovers, so Masters and Replicas
// ask the running nodes each time. Kill and Restart a node through its
// Server; KillMaster and WaitFailover wrap the usual failover test. Like
// Server's, the methods that take a testing.TB call tb.Fatal on failure and
// must be called from the test's goroutine.
type Cluster struct {
	nodes []*Server // masters first, in slot order, then the replicas

	// mu guards lost.
	mu sync.Mutex
	// lost holds, for each master killed by KillMaster, the slots it
	// served, so that WaitFailover knows what must be served again.
	lost map[*Server][]int
}

// StartRedisCluster starts a Redis Cluster of masters masters, each with
// replicasPerMaster replicas, on free loopback ports, and stops every node
// when the test ends. It returns once every node reports cluster_state:ok,
// all nodes agree on which master serves each slot, and every replica's
// link to its master is up and its first sync done. opts apply to every
// node (AppendFsync, Args). Without a redis-server on PATH it skips the
// test, or fails it when the environment variable CI is set.
func StartRedisCluster(tb testing.TB, masters, replicasPerMaster int, opts ...Option) *Cluster {
	tb.Helper()
	if masters < 1 || masters > slotCount || replicasPerMaster < 0 {
		tb.Fatalf("redistest: StartRedisCluster(%d masters, %d replicas each): need 1..%d masters and replicas >= 0",
			masters, replicasPerMaster, slotCount)
	}
	nodeOpts := append([]Option{Args(
		"--cluster-node-timeout", strconv.Itoa(NodeTimeout),
		"--cluster-replica-validity-factor", "0",
		"--cluster-allow-replica-migration", "no",
	)}, opts...)
	c := &Cluster{lost: make(map[*Server][]int)}
	for range masters * (1 + replicasPerMaster) {
		c.nodes = append(c.nodes, start(tb, bareNode, nodeOpts))
	}
	for _, s := range c.nodes {
		id, err := s.do("CLUSTER", "MYID")
		if err != nil {
			tb.Fatalf("redistest: CLUSTER MYID on %s: %v", s.Addr(), err)
		}
		s.id = id
	}
	// Slots first, so that each master announces its own as it meets the
	// others and no slot is ever claimed twice.
	for i := range masters {
		lo, hi := i*slotCount/masters, (i+1)*slotCount/masters-1
		if _, err := c.nodes[i].do("CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(lo), strconv.Itoa(hi)); err != nil {
			tb.Fatalf("redistest: CLUSTER ADDSLOTSRANGE %d %d on %s: %v", lo, hi, c.nodes[i].Addr(), err)
		}
	}
	first := c.nodes[0]
	for _, s := range c.nodes[1:] {
		if _, err := first.do("CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(s.port), strconv.Itoa(s.busPort)); err != nil {
			tb.Fatalf("redistest: CLUSTER MEET %s from %s: %v", s.Addr(), first.Addr(), err)
		}
	}
	// A replica can follow its master only once it has heard of it
	// through the gossip MEET started.
	deadline := time.Now().Add(formTimeout)
	for r, s := range c.nodes[masters:] {
		m := c.nodes[r%masters]
		for {
			_, err := s.do("CLUSTER", "REPLICATE", m.id)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("redistest: CLUSTER REPLICATE %s on %s: %v", m.Addr(), s.Addr(), err)
			}
			time.Sleep(pollInterval)
		}
	}
	c.WaitHealthy(tb)
	return c
}

// Nodes returns every node, running or not: the first masters in slot
// order, then the replicas, as StartRedisCluster made them (a failover
// does not reorder them).
func (c *Cluster) Nodes() []*Server { return slices.Clone(c.nodes) }

// Addrs returns every node's address, the seeds for a cluster client.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		addrs[i] = s.Addr()
	}
	return addrs
}

// ClusterOptions returns options for a cluster client of this cluster,
// seeded with every node, for a test that wants to set more of them.
func (c *Cluster) ClusterOptions() *redis.ClusterOptions {
	return &redis.ClusterOptions{Addrs: c.Addrs()}
}

// ClusterClient returns a new cluster client of the cluster, closed when
// the test ends.
func (c *Cluster) ClusterClient(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	cc := redis.NewClusterClient(c.ClusterOptions())
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// SetUser creates (or changes) the ACL user name on every running node,
// masters and replicas, as Server.SetUser does: Redis Cluster does not
// pass ACL users from node to node, and a client may send a command
// (CLUSTER SLOTS, say) to any of them.
func (c *Cluster) SetUser(tb testing.TB, name, password string, rules ...string) {
	tb.Helper()
	for _, s := range c.nodes {
		if s.Running() {
			s.SetUser(tb, name, password, rules...)
		}
	}
}

// ACLDenials returns the ACL log entries of every running node (see
// Server.ACLDenials), each after its node's address.
func (c *Cluster) ACLDenials(tb testing.TB) []string {
	tb.Helper()
	var out []string
	for _, s := range c.nodes {
		if s.Running() {
			for _, d := range s.ACLDenials(tb) {
				out = append(out, s.Addr()+" "+d)
			}
		}
	}
	return out
}

// StartMigration starts moving the slot of key from its master to
// another master, as a resharding does before it moves the slot's keys
// (CLUSTER SETSLOT IMPORTING on the target, then MIGRATING on the
// source), and leaves it there: a command on a key of that slot that the
// source does not hold is redirected with -ASK, and a client must send
// ASKING to the target before it. It returns the source and the target.
func (c *Cluster) StartMigration(tb testing.TB, key string) (from, to *Server) {
	tb.Helper()
	from = c.MasterOf(tb, key)
	for _, m := range c.Masters(tb) {
		if m != from {
			to = m
			break
		}
	}
	if to == nil {
		tb.Fatal("redistest: StartMigration needs two masters")
	}
	slot, err := from.do("CLUSTER", "KEYSLOT", key)
	if err != nil {
		tb.Fatalf("redistest: CLUSTER KEYSLOT %s: %v", key, err)
	}
	if _, err := to.do("CLUSTER", "SETSLOT", slot, "IMPORTING", from.id); err != nil {
		tb.Fatalf("redistest: CLUSTER SETSLOT %s IMPORTING on %s: %v", slot, to.Addr(), err)
	}
	if _, err := from.do("CLUSTER", "SETSLOT", slot, "MIGRATING", to.id); err != nil {
		tb.Fatalf("redistest: CLUSTER SETSLOT %s MIGRATING on %s: %v", slot, from.Addr(), err)
	}
	return from, to
}

// ID is the node's cluster node ID (empty for a server not started by
// StartRedisCluster). It survives Kill and Restart, which keep nodes.conf.
func (s *Server) ID() string { return s.id }

// Running reports whether the server's process is running.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// Masters returns the masters serving slots, in the order of the slots
// they serve, as a running node sees them now.
func (c *Cluster) Masters(tb testing.TB) []*Server {
	tb.Helper()
	v, err := c.view()
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return v.masters()
}

// Replicas returns the running nodes that are replicas now.
func (c *Cluster) Replicas(tb testing.TB) []*Server {
	tb.Helper()
	v, err := c.view()
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	var out []*Server
	for _, s := range c.nodes {
		if n, ok := v.byID[s.id]; ok && n.master != "" && s.Running() {
			out = append(out, s)
		}
	}
	return out
}

// MasterOf returns the master that serves key's slot now.
func (c *Cluster) MasterOf(tb testing.TB, key string) *Server {
	tb.Helper()
	v, err := c.view()
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	var slot string
	for _, s := range c.nodes {
		if s.Running() {
			if slot, err = s.do("CLUSTER", "KEYSLOT", key); err == nil {
				break
			}
		}
	}
	n, perr := strconv.Atoi(slot)
	if err != nil || perr != nil {
		tb.Fatalf("redistest: CLUSTER KEYSLOT %q: %v %v", key, err, perr)
	}
	s := v.slots[n]
	if s == nil {
		tb.Fatalf("redistest: no master serves slot %d of %q", n, key)
	}
	return s
}

// KillMaster kills master m with SIGKILL, a crash, after noting the slots
// it serves, so that WaitFailover can wait for a replica to serve them
// again.
func (c *Cluster) KillMaster(tb testing.TB, m *Server) {
	tb.Helper()
	v, err := c.view()
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	var slots []int
	for slot, s := range v.slots {
		if s == m {
			slots = append(slots, slot)
		}
	}
	if len(slots) == 0 {
		tb.Fatalf("redistest: KillMaster of %s, which serves no slot", m.Addr())
	}
	c.mu.Lock()
	c.lost[m] = slots
	c.mu.Unlock()
	m.Kill(tb)
}

// WaitFailover waits until the slots that master old served when
// KillMaster killed it are served by a running master, the promoted
// replica, and the cluster is healthy again (see WaitHealthy); it returns
// the promoted node.
func (c *Cluster) WaitFailover(tb testing.TB, old *Server) *Server {
	tb.Helper()
	c.mu.Lock()
	slots, ok := c.lost[old]
	c.mu.Unlock()
	if !ok {
		tb.Fatalf("redistest: WaitFailover of %s, which KillMaster did not kill", old.Addr())
	}
	deadline := time.Now().Add(failoverTimeout)
	for {
		v, err := c.view()
		if err == nil {
			if s := v.slots[slots[0]]; s != nil && s != old && s.Running() && c.healthy() == nil {
				c.mu.Lock()
				delete(c.lost, old)
				c.mu.Unlock()
				return s
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redistest: no failover of %s within %v: %v\n%s", old.Addr(), failoverTimeout, c.healthy(), c.logTails())
		}
		time.Sleep(pollInterval)
	}
}

// WaitHealthy waits until every running node reports cluster_state:ok,
// all of them agree on which master serves each slot, every slot is
// served by a running master, and every running replica's link to its
// master is up with its sync done.
func (c *Cluster) WaitHealthy(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(formTimeout)
	for {
		err := c.healthy()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redistest: cluster not healthy within %v: %v\n%s", formTimeout, err, c.logTails())
		}
		time.Sleep(pollInterval)
	}
}

// healthy returns why the cluster is not healthy, or nil.
func (c *Cluster) healthy() error {
	var first *view
	for _, s := range c.nodes {
		if !s.Running() {
			continue
		}
		info, err := s.do("CLUSTER", "INFO")
		if err != nil {
			return fmt.Errorf("CLUSTER INFO on %s: %w", s.Addr(), err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("%s: cluster state not ok", s.Addr())
		}
		v, err := c.viewOf(s)
		if err != nil {
			return err
		}
		for slot, m := range v.slots {
			if m == nil || !m.Running() {
				return fmt.Errorf("%s: slot %d has no running master", s.Addr(), slot)
			}
			if first != nil && first.slots[slot] != m {
				return fmt.Errorf("%s and %s disagree on the master of slot %d", s.Addr(), first.self.Addr(), slot)
			}
		}
		if first == nil {
			first = v
		}
		if v.byID[s.id].master != "" {
			repl, err := s.do("INFO", "replication")
			if err != nil {
				return fmt.Errorf("INFO replication on %s: %w", s.Addr(), err)
			}
			if !strings.Contains(repl, "master_link_status:up") || !strings.Contains(repl, "master_sync_in_progress:0") {
				return fmt.Errorf("replica %s not in sync with its master", s.Addr())
			}
		}
	}
	if first == nil {
		return fmt.Errorf("no node is running")
	}
	return nil
}

// view is one node's CLUSTER NODES, resolved to this cluster's Servers.
type view struct {
	self  *Server
	byID  map[string]nodeLine
	slots [slotCount]*Server // the master serving each slot; nil if none
}

// nodeLine is what a view says of one node.
type nodeLine struct {
	flags  string
	master string // the master's ID for a replica; "" for a master
}

// masters returns the masters serving slots, in slot order.
func (v *view) masters() []*Server {
	var out []*Server
	for _, s := range v.slots {
		if s != nil && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// view asks the first running node for its view.
func (c *Cluster) view() (*view, error) {
	var lastErr error
	for _, s := range c.nodes {
		if !s.Running() {
			continue
		}
		v, err := c.viewOf(s)
		if err == nil {
			return v, nil
		}
		lastErr = err
	}
	return nil, cmp.Or(lastErr, fmt.Errorf("no node is running"))
}

// viewOf parses s's CLUSTER NODES: one line per node, "<id> <ip:port@bus>
// <flags> <master id or -> <ping> <pong> <epoch> <link> <slot or lo-hi>...".
func (c *Cluster) viewOf(s *Server) (*view, error) {
	out, err := s.do("CLUSTER", "NODES")
	if err != nil {
		return nil, fmt.Errorf("CLUSTER NODES on %s: %w", s.Addr(), err)
	}
	byID := make(map[string]*Server, len(c.nodes))
	for _, n := range c.nodes {
		byID[n.id] = n
	}
	v := &view{self: s, byID: make(map[string]nodeLine)}
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		n := nodeLine{flags: f[2]}
		if f[3] != "-" {
			n.master = f[3]
		}
		v.byID[f[0]] = n
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") { // a slot being migrated
				continue
			}
			lo, hi, isRange := strings.Cut(r, "-")
			if !isRange {
				hi = lo
			}
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if err1 != nil || err2 != nil || a < 0 || b >= slotCount || a > b {
				return nil, fmt.Errorf("CLUSTER NODES on %s: bad slot range %q", s.Addr(), r)
			}
			for slot := a; slot <= b; slot++ {
				v.slots[slot] = byID[f[0]]
			}
		}
	}
	return v, nil
}

// logTails returns the end of every node's log, for failure messages.
func (c *Cluster) logTails() string {
	var b strings.Builder
	for _, s := range c.nodes {
		fmt.Fprintf(&b, "== %s (%s)\n%s\n", s.Addr(), s.id, s.logTail())
	}
	return b.String()
}
