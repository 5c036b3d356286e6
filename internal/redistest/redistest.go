// Package redistest owns the real redis-server processes that tests and
// benchmarks of this module run against. Each Server is one redis-server
// child process bound to 127.0.0.1 on a free port, with its own data
// directory under the test's temporary directory and append-only
// persistence (no RDB snapshots), so a test can kill it (a crash), restart
// it on the same port and directory, and find its writes again in the AOF.
//
// The AOF is fsynced every second by default, as production deployments
// commonly run it. With that policy Redis may acknowledge a write it has
// not yet handed to the kernel (it postpones the write while a slow fsync
// is in progress), so a crash can lose up to about two seconds of
// acknowledged writes; a test that kills the server and expects every
// acknowledged write back starts it with AppendFsync("always").
//
// StartRedisCluster starts a real multi-node Redis Cluster (masters and
// replicas, slots split evenly, a short cluster-node-timeout so that
// failovers finish within seconds) and returns a Cluster, which knows
// which node is a master now and waits for failovers.
//
// Invariants: a Server's process never outlives its test (tb.Cleanup stops
// it, and on Linux the kernel kills it if the test binary dies first); a
// Server answers PING without a LOADING error whenever Start, StartCluster
// or Restart has returned; Addr never changes over a Server's life.
//
// It never touches a system redis service and never uses a port other than
// those it picked itself.
package redistest

import (
	"bufio"
	"bytes"
	"cmp"
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
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// binary is the executable looked up on PATH.
	binary = "redis-server"
	// readyTimeout bounds the wait for a started server to answer PING
	// (and, after a restart, to finish loading its AOF).
	readyTimeout = 10 * time.Second
	// pollInterval is the pause between readiness probes.
	pollInterval = 10 * time.Millisecond
	// stopTimeout is how long a SIGTERM'd server may take to exit before it
	// is killed.
	stopTimeout = 10 * time.Second
	// termInterval is the pause between SIGTERMs to a server that has
	// not exited yet.
	termInterval = 200 * time.Millisecond
	// portAttempts bounds the retries when a picked port is taken before
	// redis-server binds it.
	portAttempts = 5
	// logTailBytes is how much of the server's log a fatal message quotes.
	logTailBytes = 2048
)

// Server is one redis-server child process.
//
// Addr may be called from any goroutine. Client, ClusterClient, Kill, Stop
// and Restart are serialized by a mutex, so they may also be called
// concurrently, but they call tb.Fatal on failure and so, as package
// testing requires, must be called from the goroutine running the test.
type Server struct {
	bin     string
	dir     string // the server's working directory: its AOF lives here
	logPath string
	port    int
	busPort int // cluster bus port; 0 when not a cluster node
	cluster bool
	id      string    // cluster node ID; set by StartRedisCluster, kept in nodes.conf across restarts
	fsync   string    // appendfsync policy; "" means everysec
	tls     *tlsFiles // TLS listener's files; nil: plaintext only
	tlsPort int       // TLS listener's port; 0 without TLS
	extra   []string  // further arguments, after the defaults

	mu   sync.Mutex
	proc *process // nil when the server is not running
}

// process is one run of redis-server.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd.Wait has returned
	err  error         // cmd.Wait's result; valid once done is closed
}

// Binary returns the path of redis-server. Without one on PATH it skips
// the test, or fails it when the environment variable CI is set: CI must
// install the real server rather than let its tests pass unrun.
func Binary(tb testing.TB) string {
	tb.Helper()
	bin, err := exec.LookPath(binary)
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("redistest: redis-server not found; CI must install it (apt-get install redis-server): %v", err)
		}
		tb.Skipf("redistest: redis-server not found on PATH; install it to run this test (Debian/Ubuntu: apt-get install redis-server): %v", err)
	}
	return bin
}

// Option changes how a Server runs redis-server.
type Option func(*Server)

// AppendFsync sets the AOF fsync policy: "everysec" (the default) or
// "always", with which Redis answers a write only after it is fsynced, so
// every acknowledged write survives a crash of the server.
func AppendFsync(policy string) Option {
	return func(s *Server) { s.fsync = policy }
}

// Args adds arguments to redis-server's command line after the defaults,
// so they override them (Redis applies the last of a directive): for
// example Args("--appendonly", "no") for a server without an AOF, which
// then loses everything on Kill or Stop.
func Args(args ...string) Option {
	return func(s *Server) { s.extra = append(s.extra, args...) }
}

// tlsFiles are the PEM files of a server's TLS listener.
type tlsFiles struct{ cert, key, ca string }

// TLS adds a TLS listener (TLSAddr) beside the plaintext one, serving the
// certificate and key in the PEM files cert and key; clients need not
// present a certificate, and ca is the CA file Redis requires for its
// TLS configuration. The plaintext port stays, for the readiness probes.
func TLS(cert, key, ca string) Option {
	return func(s *Server) { s.tls = &tlsFiles{cert, key, ca} }
}

// Start starts a standalone redis-server on a free port of 127.0.0.1 and
// stops it when the test ends. Without a redis-server on PATH it skips the
// test, or fails it when the environment variable CI is set.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	return start(tb, standalone, opts)
}

// StartCluster starts a redis-server in cluster mode as a one-node cluster
// that owns all 16384 slots, so that cluster clients, hash slots and
// cross-slot rules can be tested against a real server. Otherwise it is
// like Start.
func StartCluster(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	return start(tb, formOne, opts)
}

// mode says what start makes of a server.
type mode int

const (
	standalone mode = iota // a plain redis-server
	formOne                // a cluster node that owns every slot itself
	bareNode               // a cluster node that owns no slot and knows no other node yet
)

func start(tb testing.TB, m mode, opts []Option) *Server {
	tb.Helper()
	bin := Binary(tb)
	dir := tb.TempDir()
	s := &Server{
		bin:     bin,
		dir:     dir,
		logPath: filepath.Join(dir, "redis.log"),
		cluster: m != standalone,
	}
	for _, o := range opts {
		o(s)
	}
	// Registered after TempDir, so it runs before the directory is removed.
	tb.Cleanup(func() { s.cleanup(tb) })

	s.mu.Lock()
	defer s.mu.Unlock()
	var lastErr, err error
	for range portAttempts {
		if s.port, err = freePort(); err != nil {
			tb.Fatalf("redistest: pick a port: %v", err)
		}
		if s.tls != nil {
			if s.tlsPort, err = freePort(); err != nil {
				tb.Fatalf("redistest: pick a TLS port: %v", err)
			}
		}
		if s.cluster {
			if s.busPort, err = freePort(); err != nil {
				tb.Fatalf("redistest: pick a cluster bus port: %v", err)
			}
		}
		err := s.launch()
		if err == nil && m == formOne {
			err = s.formCluster()
		}
		if err == nil {
			return s
		}
		lastErr = err
		if !errors.Is(err, errAddrInUse) {
			break
		}
	}
	tb.Fatalf("redistest: start redis-server: %v\n%s", lastErr, s.logTail())
	return nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// TLSAddr is the host:port of the TLS listener of a server started with
// the TLS option.
func (s *Server) TLSAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.tlsPort))
}

// Dir is the server's data directory (its AOF is under it).
func (s *Server) Dir() string { return s.dir }

// Client returns a new client of the server, closed when the test ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// ClusterClient returns a new cluster client of a server started with
// StartCluster, closed when the test ends.
func (s *Server) ClusterClient(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	if !s.cluster {
		tb.Fatal("redistest: ClusterClient of a server not started with StartCluster")
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{s.Addr()}})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// SetUser creates (or changes) the ACL user name on the server, with
// password and rules, each one ACL SETUSER rule ("~td:*", "+get", ...).
// The user lives in the server's memory only: a Restart forgets it.
func (s *Server) SetUser(tb testing.TB, name, password string, rules ...string) {
	tb.Helper()
	args := append([]string{"ACL", "SETUSER", name, ">" + password}, rules...)
	if _, err := s.do(args...); err != nil {
		tb.Fatalf("redistest: ACL SETUSER %s on %s: %v", name, s.Addr(), err)
	}
}

// ACLDenials returns the entries of the server's ACL log, each a
// command, key or channel it refused a user since it started, as
// "user: reason object" (e.g. "timerd: command cluster|slots"), oldest
// first.
func (s *Server) ACLDenials(tb testing.TB) []string {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	log, err := c.ACLLog(ctx, 128).Result()
	if err != nil {
		tb.Fatalf("redistest: ACL LOG on %s: %v", s.Addr(), err)
	}
	out := make([]string, 0, len(log))
	for i := len(log) - 1; i >= 0; i-- { // ACL LOG lists the newest first
		out = append(out, fmt.Sprintf("%s: %s %s", log[i].Username, log[i].Reason, log[i].Object))
	}
	return out
}

// Kill kills the server with SIGKILL, a crash, and waits for it to exit.
// What it had acknowledged stays in the AOF only as far as its writes had
// reached the kernel.
func (s *Server) Kill(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		tb.Fatal("redistest: Kill of a server that is not running")
	}
	_ = s.proc.cmd.Process.Kill()
	<-s.proc.done
	s.proc = nil
}

// Stop stops the server gracefully (SIGTERM, which flushes and fsyncs the
// AOF) and waits for it to exit; it kills it if it takes longer than
// stopTimeout.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		tb.Fatal("redistest: Stop of a server that is not running")
	}
	if err := s.stop(); err != nil {
		tb.Fatalf("redistest: stop: %v\n%s", err, s.logTail())
	}
}

// Restart starts the server again on the same port and directory, after
// Kill or Stop (a running server is stopped gracefully first), and returns
// once it has loaded its AOF and answers PING. It fails the test if the
// port was taken in the meantime.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		if err := s.stop(); err != nil {
			tb.Fatalf("redistest: stop before restart: %v\n%s", err, s.logTail())
		}
	}
	err := s.launch()
	if err == nil && s.cluster {
		err = s.waitClusterOK()
	}
	if err != nil {
		tb.Fatalf("redistest: restart redis-server on %s: %v\n%s", s.Addr(), err, s.logTail())
	}
}

// cleanup stops the server at the end of the test.
func (s *Server) cleanup(tb testing.TB) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	if err := s.stop(); err != nil {
		tb.Errorf("redistest: stop at cleanup: %v\n%s", err, s.logTail())
	}
}

// stop sends SIGTERM and waits, then SIGKILL if the server lingers.
// SIGTERM is sent again every termInterval: Redis refuses to shut down
// while it writes its first AOF (a replica just after its initial sync
// does) and goes on running, so one signal may not stop it.
// s.mu is held.
func (s *Server) stop() error {
	p := s.proc
	s.proc = nil
	deadline := time.After(stopTimeout)
	tick := time.NewTicker(termInterval)
	defer tick.Stop()
	for {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			return nil
		case <-tick.C:
			continue
		case <-deadline:
		}
		break
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("redis-server did not exit within %v of SIGTERM; killed it", stopTimeout)
}

// errAddrInUse means redis-server could not bind its port.
var errAddrInUse = errors.New("address already in use")

// launch starts redis-server on s.port and waits until it is ready.
// s.mu is held.
func (s *Server) launch() error {
	args := []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(s.port),
		"--dir", s.dir,
		"--logfile", s.logPath,
		"--appendonly", "yes",
		"--appendfsync", cmp.Or(s.fsync, "everysec"),
		"--save", "",
		"--daemonize", "no",
		"--protected-mode", "no",
	}
	if s.cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(s.dir, "nodes.conf"),
			"--cluster-port", strconv.Itoa(s.busPort),
		)
	}
	if s.tls != nil {
		args = append(args,
			"--tls-port", strconv.Itoa(s.tlsPort),
			"--tls-cert-file", s.tls.cert,
			"--tls-key-file", s.tls.key,
			"--tls-ca-cert-file", s.tls.ca,
			"--tls-auth-clients", "no",
		)
	}
	args = append(args, s.extra...)
	return s.run(exec.Command(s.bin, args...))
}

// run starts cmd, a redis-server of s, as s's process in s's directory,
// and waits until it answers; one that does not is killed. s.mu is held.
func (s *Server) run(cmd *exec.Cmd) error {
	cmd.Dir = s.dir
	cmd.SysProcAttr = sysProcAttr()
	// Output before the log file is open (bad arguments) goes here.
	var early bytes.Buffer
	cmd.Stdout = &early
	cmd.Stderr = &early
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec %s: %w", strings.Join(cmd.Args, " "), err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.proc = p
	err := s.waitReady(p)
	if err == nil {
		return nil
	}
	if s.proc != nil {
		_ = cmd.Process.Kill()
		<-p.done
		s.proc = nil
	}
	if strings.Contains(s.logTail(), "Address already in use") {
		return fmt.Errorf("port %d: %w", s.port, errAddrInUse)
	}
	if early.Len() > 0 {
		err = fmt.Errorf("%w; output: %s", err, bytes.TrimSpace(early.Bytes()))
	}
	return err
}

// waitReady polls until this process (not some other one that took the
// port) answers PING without a LOADING error.
func (s *Server) waitReady(p *process) error {
	want := "process_id:" + strconv.Itoa(p.cmd.Process.Pid) + "\r\n"
	deadline := time.Now().Add(readyTimeout)
	var lastErr error
	for {
		select {
		case <-p.done:
			return fmt.Errorf("redis-server exited before it was ready: %v", p.err)
		default:
		}
		reply, err := s.do("PING")
		if err == nil && reply == "PONG" {
			info, err := s.do("INFO", "server")
			if err == nil && strings.Contains(info, want) {
				return nil
			}
			if err == nil {
				err = errors.New("another process answers on the port")
			}
			lastErr = err
		} else if err != nil {
			lastErr = err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v: %v", readyTimeout, lastErr)
		}
		time.Sleep(pollInterval)
	}
}

// formCluster gives the one node every slot and waits for the cluster to
// report itself ok.
func (s *Server) formCluster() error {
	if _, err := s.do("CLUSTER", "ADDSLOTSRANGE", "0", "16383"); err != nil {
		return fmt.Errorf("cluster addslotsrange: %w", err)
	}
	return s.waitClusterOK()
}

func (s *Server) waitClusterOK() error {
	deadline := time.Now().Add(readyTimeout)
	for {
		info, err := s.do("CLUSTER", "INFO")
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not ok within %v: %v %q", readyTimeout, err, info)
		}
		time.Sleep(pollInterval)
	}
}

// do sends one command on a fresh connection and returns its reply: a
// simple string, a bulk string or an integer as text. An error reply is
// returned as an error. It avoids the go-redis client so that probing a
// server that is not up yet neither retries nor logs.
func (s *Server) do(args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", fmt.Errorf("bad bulk reply %q", line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

// logTail returns the end of the server's log for failure messages.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no redis-server log: %v)", err)
	}
	if len(b) > logTailBytes {
		b = b[len(b)-logTailBytes:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return "redis-server log (tail):\n" + string(b)
}

// freePort returns a port of 127.0.0.1 that was free a moment ago. Another
// process may take it before redis-server binds it; launch detects that
// and start tries another.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
