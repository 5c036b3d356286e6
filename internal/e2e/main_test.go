package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/binary"
	"github.com/timerd/timerd/internal/logline"
)

const (
	// readyTimeout bounds the wait for a started timerd to log msg=ready.
	readyTimeout = 30 * time.Second
	// stopTimeout bounds the wait for a signalled timerd to exit.
	stopTimeout = 30 * time.Second
	// commandTimeout bounds one run of a binary that is expected to end by
	// itself.
	commandTimeout = 60 * time.Second
)

// bin holds the paths of the binaries TestMain built.
var bin struct{ timerd, timerctl string }

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "timerd-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	paths, err := binary.Build(dir, "timerd", "timerctl")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	bin.timerd, bin.timerctl = paths[0], paths[1]
	return m.Run()
}

// childEnv is the environment of the started binaries: the test's,
// without TIMERD_* variables, so that only the flags the tests give
// count.
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TIMERD_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// node is one running timerd process.
type node struct {
	t        *testing.T
	cmd      *exec.Cmd
	dataDir  string
	grpcAddr string // gRPC address it bound, from its log
	httpAddr string // HTTP address it bound, from its log
	logs     *lockedBuffer

	exited chan struct{} // closed once the process has exited and its log is read
	state  *os.ProcessState
}

// startNode starts timerd on free loopback ports with its embedded store
// in dataDir, plus extra flags, and waits until it logs msg=ready. The
// node is killed when the test ends if it is still running, and its log
// is shown if the test failed.
func startNode(t *testing.T, dataDir string, extra ...string) *node {
	t.Helper()
	return startNodeWatch(t, dataDir, nil, extra...)
}

// startNodeWatch is startNode that also calls first, when set, with the
// process as soon as it logs its first line, before it is ready.
func startNodeWatch(t *testing.T, dataDir string, first func(*os.Process), extra ...string) *node {
	t.Helper()
	args := append([]string{"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir", dataDir}, extra...)
	cmd := exec.Command(bin.timerd, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = childEnv()
	cmd.SysProcAttr = childAttr()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, cmd: cmd, dataDir: dataDir, logs: new(lockedBuffer), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start timerd: %v", err)
	}
	t.Cleanup(func() {
		n.kill()
		if t.Failed() {
			t.Logf("timerd %s log:\n%s", strings.Join(args, " "), n.logs.String())
		}
	})

	type addrs struct{ grpc, http string }
	serving := make(chan addrs, 1)
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		sawReady := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(n.logs, line)
			if first != nil {
				first(cmd.Process)
				first = nil
			}
			f := logline.Parse(line)
			switch {
			case f["msg"] == "serving":
				select {
				case serving <- addrs{f["grpc"], f["http"]}:
				default:
				}
			case f["msg"] == "ready" && !sawReady:
				sawReady = true
				close(ready)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait() // after every read from the pipe, as Wait requires
		n.state = cmd.ProcessState
		close(n.exited)
	}()

	timeout := time.After(readyTimeout)
	select {
	case a := <-serving:
		n.grpcAddr, n.httpAddr = a.grpc, a.http
	case <-n.exited:
		t.Fatalf("timerd exited before serving (%v)", n.state)
	case <-timeout:
		t.Fatalf("timerd did not log msg=serving within %v", readyTimeout)
	}
	select {
	case <-ready:
	case <-n.exited:
		t.Fatalf("timerd exited before it was ready (%v)", n.state)
	case <-timeout:
		t.Fatalf("timerd did not log msg=ready within %v", readyTimeout)
	}
	if !strings.HasPrefix(n.grpcAddr, "127.0.0.1:") || !strings.HasPrefix(n.httpAddr, "127.0.0.1:") {
		t.Fatalf("timerd logged grpc=%q http=%q, want loopback addresses", n.grpcAddr, n.httpAddr)
	}
	return n
}

// stop sends sig to the node and waits for it to exit. With SIGTERM it
// fails the test unless the node exits with code 0 within stopTimeout.
func (n *node) stop(sig syscall.Signal) {
	n.t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		n.t.Fatalf("signal timerd: %v", err)
	}
	select {
	case <-n.exited:
	case <-time.After(stopTimeout):
		n.kill()
		n.t.Fatalf("timerd did not exit within %v of %v", stopTimeout, sig)
	}
	if sig == syscall.SIGTERM && n.state.ExitCode() != 0 {
		n.t.Fatalf("timerd exited with %v after SIGTERM, want exit code 0", n.state)
	}
	if sig == syscall.SIGTERM && !strings.Contains(n.logs.String(), "msg=stopped") {
		n.t.Errorf("timerd did not log msg=stopped on SIGTERM")
	}
}

// kill kills the node, if it still runs, and waits for it.
func (n *node) kill() {
	select {
	case <-n.exited:
		return
	default:
	}
	_ = n.cmd.Process.Kill()
	<-n.exited
}

// outcome is the result of one run of a binary.
type outcome struct {
	args           []string
	stdout, stderr string
	code           int
}

func (o outcome) String() string {
	return fmt.Sprintf("%s: exit code %d\nstdout:\n%s\nstderr:\n%s", strings.Join(o.args, " "), o.code, o.stdout, o.stderr)
}

// runBinary runs a binary to its end (or commandTimeout) in a temporary
// directory and returns its output and exit code.
func runBinary(t *testing.T, path string, args ...string) outcome {
	t.Helper()
	return runBinaryEnv(t, nil, path, args...)
}

// runBinaryEnv is runBinary with extra environment variables.
func runBinaryEnv(t *testing.T, env []string, path string, args ...string) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = childEnv(env...)
	cmd.SysProcAttr = childAttr()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	o := outcome{append([]string{filepath.Base(path)}, args...), stdout.String(), stderr.String(), 0}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s did not end within %v\n%v", strings.Join(o.args, " "), commandTimeout, o)
	case errors.As(err, &ee):
		o.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %s: %v", path, err)
	}
	return o
}

// timerctl runs timerctl against addr.
func timerctl(t *testing.T, addr string, args ...string) outcome {
	t.Helper()
	return runBinary(t, bin.timerctl, append([]string{"--addr", addr}, args...)...)
}

// mustTimerctl runs timerctl against addr and fails the test unless it
// exits 0.
func mustTimerctl(t *testing.T, addr string, args ...string) outcome {
	t.Helper()
	o := timerctl(t, addr, args...)
	if o.code != 0 {
		t.Fatalf("%v", o)
	}
	return o
}
