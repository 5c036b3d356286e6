package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
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
