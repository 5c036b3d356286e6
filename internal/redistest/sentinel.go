package redistest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// MasterName is the name a Sentinel started by StartSentinel monitors its
// master by.
const MasterName = "mymaster"

// Sentinel is a real Sentinel deployment: one master, its replicas and
// one redis-server --sentinel process watching them, all on free loopback
// ports. One Sentinel is a quorum of one: enough to tell clients where
// the master is and to fail it over in a test, not a production setup.
//
// Invariant: once StartSentinel has returned, the Sentinel knows the
// master and every replica, and every replica has finished its first sync.
type Sentinel struct {
	// Master is the master the Sentinel watched when it started.
	Master *Server
	// Replicas replicate Master.
	Replicas []*Server
	// sentinel is the Sentinel process; only its process, port and log
	// are used, never launch.
	sentinel *Server
}

// StartSentinel starts a master, replicas replicas of it and a Sentinel
// that monitors it as MasterName, and stops them all when the test ends.
// opts apply to the master and the replicas (AppendFsync, Args). Without a
// redis-server on PATH it skips the test, or fails it when the
// environment variable CI is set.
func StartSentinel(tb testing.TB, replicas int, opts ...Option) *Sentinel {
	tb.Helper()
	d := &Sentinel{Master: start(tb, standalone, opts)}
	masterPort := strconv.Itoa(d.Master.port)
	for range replicas {
		r := start(tb, standalone, append(opts, Args("--replicaof", "127.0.0.1", masterPort)))
		d.Replicas = append(d.Replicas, r)
	}
	for _, r := range d.Replicas {
		if err := waitFor(func() (string, error) { return r.do("INFO", "replication") }, "master_link_status:up"); err != nil {
			tb.Fatalf("redistest: replica %s of %s: %v\n%s", r.Addr(), d.Master.Addr(), err, r.logTail())
		}
	}

	dir := tb.TempDir()
	s := &Server{bin: Binary(tb), dir: dir, logPath: filepath.Join(dir, "sentinel.log")}
	tb.Cleanup(func() { s.cleanup(tb) })
	d.sentinel = s
	s.mu.Lock()
	defer s.mu.Unlock()
	var lastErr error
	for range portAttempts {
		port, err := freePort()
		if err != nil {
			tb.Fatalf("redistest: pick a port: %v", err)
		}
		s.port = port
		if lastErr = s.launchSentinel(masterPort); !errors.Is(lastErr, errAddrInUse) {
			break
		}
	}
	if lastErr != nil {
		tb.Fatalf("redistest: start the Sentinel: %v\n%s", lastErr, s.logTail())
	}
	// The Sentinel learns of the replicas from the master's INFO, which
	// it reads every 10 s at first; it knows them once it says so.
	want := fmt.Sprintf("name=%s,status=ok,address=%s,slaves=%d,", MasterName, d.Master.Addr(), replicas)
	if err := waitFor(func() (string, error) { return s.do("INFO", "sentinel") }, want); err != nil {
		tb.Fatalf("redistest: Sentinel %s does not know the master and its %d replicas: %v\n%s", s.Addr(), replicas, err, s.logTail())
	}
	return d
}

// sentinelReadyTimeout bounds the wait for the Sentinel to have found the
// replicas, which it may take its first 10 s INFO period to do.
const sentinelReadyTimeout = 30 * time.Second

// waitFor polls probe until its reply contains want.
func waitFor(probe func() (string, error), want string) error {
	deadline := time.Now().Add(sentinelReadyTimeout)
	for {
		reply, err := probe()
		if err == nil && strings.Contains(reply, want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %q within %v: %v %q", want, sentinelReadyTimeout, err, reply)
		}
		time.Sleep(pollInterval)
	}
}

// launchSentinel writes the Sentinel's configuration, which it rewrites
// as it learns, and starts it on s.port. s.mu is held.
func (s *Server) launchSentinel(masterPort string) error {
	conf := filepath.Join(s.dir, "sentinel.conf")
	text := strings.Join([]string{
		"bind 127.0.0.1",
		"port " + strconv.Itoa(s.port),
		"dir " + s.dir,
		"logfile " + s.logPath,
		"daemonize no",
		"protected-mode no",
		fmt.Sprintf("sentinel monitor %s 127.0.0.1 %s 1", MasterName, masterPort),
		fmt.Sprintf("sentinel down-after-milliseconds %s 1000", MasterName),
		fmt.Sprintf("sentinel failover-timeout %s 5000", MasterName),
	}, "\n") + "\n"
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return err
	}
	return s.run(exec.Command(s.bin, conf, "--sentinel"))
}

// Addr is the Sentinel's host:port.
func (d *Sentinel) Addr() string { return d.sentinel.Addr() }
