package cluster

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testShards is the shard count of the test clusters.
const testShards = 128

// logBuf collects a test's log. memberlist's goroutines may log a moment
// after the test ends, which t.Log does not allow; the buffer is printed
// when the test failed.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// newLog returns a debug logger into a buffer that is printed when t
// fails.
func newLog(t testing.TB) (*slog.Logger, *logBuf) {
	var l logBuf
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", l.String())
		}
	})
	return slog.New(slog.NewTextHandler(&l, &slog.HandlerOptions{Level: slog.LevelDebug})), &l
}

var incarnations atomic.Uint64

// testConfig returns a LocalConfig for node name joining seeds.
func testConfig(name string, seeds ...string) Config {
	return presetConfig(LocalConfig(), name, seeds...)
}

// presetConfig returns cfg, a preset bound to a free loopback port, for
// node name joining seeds.
func presetConfig(cfg Config, name string, seeds ...string) Config {
	cfg.BindAddr = "127.0.0.1:0"
	cfg.NodeName = name
	cfg.Incarnation = fmt.Sprintf("%s-%d", name, incarnations.Add(1))
	cfg.GRPCAddr = "127.0.0.1:" + strconv.Itoa(7000+int(incarnations.Load()))
	cfg.Shards = testShards
	cfg.Seeds = seeds
	return cfg
}

// start creates and starts a Cluster for cfg, closed when t ends.
func start(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// startActive starts n active nodes "n0".."n{n-1}" of one cluster on
// LocalConfig, the first one the seed of the others, and waits until
// every node sees all of them active.
func startActive(t testing.TB, n int, log *slog.Logger) []*Cluster {
	t.Helper()
	return startPreset(t, n, log, LocalConfig)
}

// startPreset is startActive on the preset's configuration.
func startPreset(t testing.TB, n int, log *slog.Logger, preset func() Config) []*Cluster {
	t.Helper()
	var nodes []*Cluster
	for i := range n {
		var seeds []string
		if i > 0 {
			seeds = []string{nodes[0].GossipAddr()}
		}
		cfg := presetConfig(preset(), "n"+strconv.Itoa(i), seeds...)
		cfg.Logger = log
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.SetState(context.Background(), StateActive); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if err := c.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, c)
	}
	waitFor(t, 10*time.Second, func() error {
		for _, c := range nodes {
			if err := wantActive(c.View(), names(nodes)...); err != nil {
				return fmt.Errorf("%s: %w", c.Self().Name, err)
			}
		}
		return nil
	})
	return nodes
}

// names returns the nodes' names.
func names(nodes []*Cluster) []string {
	var s []string
	for _, c := range nodes {
		s = append(s, c.Self().Name)
	}
	return s
}

// wantActive checks that v's members are exactly names, all active.
func wantActive(v View, names ...string) error {
	var got []string
	for _, m := range v.Members {
		if m.State != StateActive {
			return fmt.Errorf("member %s is %s", m.Name, m.State)
		}
		got = append(got, m.Name)
	}
	want := slices.Sorted(slices.Values(names))
	if !slices.Equal(got, want) {
		return fmt.Errorf("members %v, want %v", got, want)
	}
	return nil
}

// waitFor polls cond until it returns nil, failing t after timeout.
func waitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freePort returns a loopback port that was free a moment ago, on both
// TCP and UDP.
func freePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", l.Addr().String())
		_ = l.Close()
		if err == nil {
			_ = u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// contains reports whether the log holds s.
func (l *logBuf) contains(s string) bool { return strings.Contains(l.String(), s) }

// withLogger returns cfg logging to log.
func withLogger(cfg Config, log *slog.Logger) Config {
	cfg.Logger = log
	return cfg
}
