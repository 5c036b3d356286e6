package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestStartKillRestart(t *testing.T) {
	ctx := context.Background()
	// Every acknowledged write must survive the kill: with everysec a
	// loaded machine's slow fsync lets Redis answer writes it has not yet
	// handed to the kernel (see the package doc).
	s := Start(t, AppendFsync("always"))
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
	if _, err := s.do("PING"); err == nil {
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

// TestPortTaken: a port taken between picking it and starting the server
// is reported as errAddrInUse, which Start answers with another port.
func TestPortTaken(t *testing.T) {
	bin := Binary(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	s := &Server{bin: bin, dir: dir, logPath: filepath.Join(dir, "redis.log"), port: l.Addr().(*net.TCPAddr).Port}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.launch(); !errors.Is(err, errAddrInUse) {
		t.Fatalf("launch on a taken port: %v, want errAddrInUse", err)
	}
	if s.proc != nil {
		t.Fatal("a failed launch left a process behind")
	}
}

// stopper is a testing.TB whose Fatal and Skip record the message and
// stop the caller by panicking, so a test can observe them.
type stopper struct {
	testing.TB
	kind, msg string
}

type stopped struct{}

func (s *stopper) Fatalf(format string, args ...any) {
	s.kind, s.msg = "fatal", fmt.Sprintf(format, args...)
	panic(stopped{})
}

func (s *stopper) Skipf(format string, args ...any) {
	s.kind, s.msg = "skip", fmt.Sprintf(format, args...)
	panic(stopped{})
}

func (s *stopper) run(f func(testing.TB)) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(stopped); !ok {
				panic(r)
			}
		}
	}()
	f(s)
}

// TestMissingBinary: without redis-server on PATH, Start skips the test,
// or fails it under CI.
func TestMissingBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	for _, tt := range []struct {
		ci, kind, says string
	}{
		{"", "skip", "apt-get install redis-server"},
		{"true", "fatal", "redis-server not found; CI must install it"},
	} {
		t.Setenv("CI", tt.ci)
		s := &stopper{TB: t}
		s.run(func(tb testing.TB) { Start(tb) })
		if s.kind != tt.kind || !strings.Contains(s.msg, tt.says) {
			t.Errorf("CI=%q: %s %q, want %s saying %q", tt.ci, s.kind, s.msg, tt.kind, tt.says)
		}
	}
}

// TestStartRedisCluster: three masters with a replica each serve the slots
// evenly, keys spread over them, and a killed master's replica takes over
// with the writes it had replicated.
func TestStartRedisCluster(t *testing.T) {
	ctx := context.Background()
	c := StartRedisCluster(t, 3, 1, AppendFsync("always"))
	masters := c.Masters(t)
	if len(masters) != 3 {
		t.Fatalf("Masters() = %d nodes, want 3", len(masters))
	}
	if r := c.Replicas(t); len(r) != 3 {
		t.Fatalf("Replicas() = %d nodes, want 3", len(r))
	}
	if len(c.Addrs()) != 6 || len(c.Nodes()) != 6 {
		t.Fatalf("Addrs() = %v, Nodes() = %d, want 6 each", c.Addrs(), len(c.Nodes()))
	}
	cc := c.ClusterClient(t)
	perMaster := make(map[*Server]int)
	const keys = 300
	for i := range keys {
		k := "{k" + strconv.Itoa(i) + "}x"
		if err := cc.Set(ctx, k, i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
		perMaster[c.MasterOf(t, k)]++
	}
	for i, m := range masters {
		n, err := m.Client(t).DBSize(ctx).Result()
		if err != nil {
			t.Fatalf("DBSIZE on master %d: %v", i, err)
		}
		if n == 0 || int(n) != perMaster[m] {
			t.Errorf("master %d holds %d keys, MasterOf counted %d; want the same, above 0", i, n, perMaster[m])
		}
	}
	// WAIT makes sure the replica has every key before the crash.
	if err := masters[1].Client(t).Do(ctx, "WAIT", 1, 5000).Err(); err != nil {
		t.Fatalf("WAIT: %v", err)
	}
	c.KillMaster(t, masters[1])
	promoted := c.WaitFailover(t, masters[1])
	if promoted == masters[1] || !promoted.Running() {
		t.Fatalf("WaitFailover returned %s, want a running replica", promoted.Addr())
	}
	if got := c.Masters(t); len(got) != 3 || !slices.Contains(got, promoted) || slices.Contains(got, masters[1]) {
		t.Fatalf("masters after failover do not swap %s for %s", masters[1].Addr(), promoted.Addr())
	}
	// A cluster client learns of the failover from its next slot map.
	cc.ReloadState(ctx)
	for i := range keys {
		k := "{k" + strconv.Itoa(i) + "}x"
		if got, err := cc.Get(ctx, k).Int(); err != nil || got != i {
			t.Fatalf("GET %s after failover = %d, %v; want %d", k, got, err, i)
		}
	}
	// The old master comes back as a replica of the promoted one.
	masters[1].Restart(t)
	c.WaitHealthy(t)
	if r := c.Replicas(t); !slices.Contains(r, masters[1]) {
		t.Fatalf("restarted old master %s is not a replica", masters[1].Addr())
	}
}

// TestStopReplicaAfterSync: a replica stopped just after its first sync,
// while it still writes its first AOF (when Redis ignores a SIGTERM),
// stops without being killed.
func TestStopReplicaAfterSync(t *testing.T) {
	ctx := context.Background()
	m := Start(t)
	if err := m.Client(t).Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	host, port, _ := net.SplitHostPort(m.Addr())
	r := Start(t, Args("--replicaof", host, port))
	deadline := time.Now().Add(formTimeout)
	for {
		info, err := r.do("INFO", "replication")
		if err == nil && strings.Contains(info, "master_link_status:up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica not linked within %v: %v", formTimeout, err)
		}
		time.Sleep(pollInterval)
	}
	r.Stop(t)
}

func TestMain(m *testing.M) { os.Exit(RunMain(m)) }

// TestSharedRedisCluster: tests that ask for the same shape share one
// cluster, which serves them all.
func TestSharedRedisCluster(t *testing.T) {
	a := SharedRedisCluster(t, 2, 0)
	var b *Cluster
	t.Run("Another", func(t *testing.T) { b = SharedRedisCluster(t, 2, 0) })
	if a != b {
		t.Fatal("two tests got different clusters of one shape")
	}
	if got := len(a.Masters(t)); got != 2 {
		t.Fatalf("Masters() = %d nodes, want 2", got)
	}
	if err := a.ClusterClient(t).Set(context.Background(), "shared", "1", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
}
