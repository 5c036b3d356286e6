package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/timerd/timerd/internal/logline"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

const (
	// readyTimeout bounds the wait for a started timerd to log msg=ready.
	readyTimeout = 60 * time.Second
	// stableTimeout bounds the wait for every shard to be served by
	// exactly one node, as every node sees it.
	stableTimeout = 60 * time.Second
	// logTailLines is how much of a node's log a failing test shows.
	logTailLines = 40
)

// freeAddr returns a 127.0.0.1 address whose port is free for both
// TCP and UDP (memberlist binds both), as far as the kernel says now.
func freeAddr() (string, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue // the UDP port is taken: try another
		}
		u.Close()
		return addr, nil
	}
	return "", errors.New("no port free for both TCP and UDP on 127.0.0.1 after 20 tries")
}

// childEnv is the environment of a started timerd: the test's, without
// TIMERD_* variables, so that only the flags the test gives count.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TIMERD_") {
			env = append(env, kv)
		}
	}
	return env
}

// node is one timerd process. A restart starts a new one in its place,
// with the same name and addresses.
type node struct {
	name       string
	gossipAddr string
	grpcAddr   string // the gRPC address it serves, as it logged it
	httpAddr   string // its HTTP address (/metrics), as it logged it
	args       []string
	logPath    string
	cmd        *exec.Cmd

	ready  chan struct{} // closed when it logs msg=ready
	exited chan struct{} // closed once it has exited and its log is read
	mu     sync.Mutex
	state  *os.ProcessState // set before exited is closed
}

// startNode starts timerd with args (plus its name, its gossip and gRPC
// addresses and a free HTTP port on the gRPC address's host) in a process
// group of its own, its log appended to logPath, and returns once it logs
// the gRPC address it serves; ready closes when it logs msg=ready. wrap,
// if not nil, rewrites the command line (argv[0] is bin), e.g. to run it
// in a network namespace. The test's cleanup kills its process group.
func startNode(t *testing.T, bin, name, gossipAddr, grpcAddr, logPath string, args []string, wrap func([]string) []string) *node {
	t.Helper()
	host, _, err := net.SplitHostPort(grpcAddr)
	if err != nil {
		t.Fatalf("%s: gRPC address %q: %v", name, grpcAddr, err)
	}
	args = append([]string{"--node-name", name, "--gossip-addr", gossipAddr,
		"--grpc-addr", grpcAddr, "--http-addr", net.JoinHostPort(host, "0")}, args...)
	n := &node{name: name, gossipAddr: gossipAddr, args: args, logPath: logPath,
		ready: make(chan struct{}), exited: make(chan struct{})}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{bin}, args...)
	if wrap != nil {
		argv = wrap(argv)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = filepath.Dir(logPath)
	cmd.Env = childEnv()
	cmd.SysProcAttr = procAttr()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	n.cmd = cmd
	t.Cleanup(n.kill)

	serving := make(chan [2]string, 1) // the gRPC and HTTP addresses
	go func() {
		defer close(n.exited)
		defer logFile.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		sawReady := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logFile, line)
			f := logline.Parse(line)
			switch {
			case f["msg"] == "serving":
				select {
				case serving <- [2]string{f["grpc"], f["http"]}:
				default:
				}
			case f["msg"] == "ready" && !sawReady:
				sawReady = true
				close(n.ready)
			}
		}
		_, _ = io.Copy(logFile, stderr)
		_ = cmd.Wait() // after every read from the pipe, as Wait requires
		n.mu.Lock()
		n.state = cmd.ProcessState
		n.mu.Unlock()
	}()

	select {
	case addrs := <-serving:
		n.grpcAddr, n.httpAddr = addrs[0], addrs[1]
	case <-n.exited:
		t.Fatalf("%s exited before serving (%v):\n%s", name, n.exitState(), n.logTail())
	case <-time.After(readyTimeout):
		t.Fatalf("%s did not log msg=serving within %v:\n%s", name, readyTimeout, n.logTail())
	}
	if n.grpcAddr != grpcAddr {
		t.Fatalf("%s logged grpc=%q, want the address it was given, %s", name, n.grpcAddr, grpcAddr)
	}
	return n
}

// waitReady waits until the node logs msg=ready.
func (n *node) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-n.ready:
	case <-n.exited:
		t.Fatalf("%s exited before it was ready (%v):\n%s", n.name, n.exitState(), n.logTail())
	case <-time.After(readyTimeout):
		t.Fatalf("%s did not log msg=ready within %v:\n%s", n.name, readyTimeout, n.logTail())
	}
}

// kill9 sends SIGKILL to the node's process, as kill -9 does, and waits
// for it to exit.
func (n *node) kill9() error {
	if err := killGroup(n.cmd.Process.Pid); err != nil {
		return err
	}
	select {
	case <-n.exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s still running 10s after SIGKILL", n.name)
	}
}

// kill kills the node's process group, if it still runs, and waits for
// it.
func (n *node) kill() {
	select {
	case <-n.exited:
		return
	default:
	}
	_ = killGroup(n.cmd.Process.Pid)
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
	}
}

// running reports whether the process has not exited.
func (n *node) running() bool {
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

func (n *node) exitState() *os.ProcessState {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state
}

// logTail returns the last lines of the node's log.
func (n *node) logTail() string {
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	return strings.Join(lines, "\n")
}

// dial opens a client connection to addr; it connects lazily, and
// reconnects within a second of its node's coming back (gRPC's default
// backoff grows to two minutes, longer than a scenario).
func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}}))
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// shardOwner is one shard's owner and epoch in a ShardMap answer.
type shardOwner struct {
	owner string
	epoch uint64
}

// shardMap asks the node behind conn for the whole shard map.
func shardMap(ctx context.Context, conn *grpc.ClientConn) ([]shardOwner, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sm, err := pb.NewClusterServiceClient(conn).ShardMap(ctx, &pb.ShardMapRequest{})
	if err != nil {
		return nil, err
	}
	owners := make([]shardOwner, sm.GetShardCount())
	for _, o := range sm.GetShards() {
		if o.GetShard() >= sm.GetShardCount() {
			return nil, fmt.Errorf("ShardMap has shard %d of %d", o.GetShard(), sm.GetShardCount())
		}
		owners[o.GetShard()] = shardOwner{o.GetOwner(), o.GetEpoch()}
	}
	return owners, nil
}

// redisURL is the --redis flag for a server at addr.
func redisURL(addr string) string { return "redis://" + addr }

// itoa formats n with thousands separators, for the printed figures.
func itoa(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
