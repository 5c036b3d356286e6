package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// npmTimeout bounds npm ci: with the packages in npm's cache it takes
// seconds, and a first run downloads about 2 MB.
const npmTimeout = 3 * time.Minute

// findNode returns the paths of node and npm. When either is missing the
// test is skipped, or fails when CI is set (CI=true), where the CI script
// installs them.
func findNode(t *testing.T) (node, npm string) {
	t.Helper()
	node, errNode := exec.LookPath("node")
	npm, errNPM := exec.LookPath("npm")
	if err := errors.Join(errNode, errNPM); err != nil {
		missing(t, "the Node.js example needs node and npm on PATH (apt-get install nodejs npm): "+err.Error())
	}
	return node, npm
}

// nodeExample copies examples/node (without node_modules) and the proto it
// is written against into a temporary tree laid out as the repository is,
// so that the example can only use the contract, and returns the copy of
// examples/node.
func nodeExample(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	dst := filepath.Join(root, "examples", "node")
	src := filepath.Join("..", "..", "examples", "node")
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	copyFile := func(from, to string) {
		t.Helper()
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range entries {
		if e.Type().IsRegular() {
			copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()))
		}
	}
	proto := filepath.Join("api", "timerd", "v1", "timerd.proto")
	copyFile(filepath.Join("..", "..", proto), filepath.Join(root, proto))
	return dst
}

// runIn runs name with args in dir, bounded by timeout, and returns its
// outcome.
func runIn(t *testing.T, dir string, timeout time.Duration, name string, args ...string) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = childEnv("npm_config_audit=false", "npm_config_fund=false", "npm_config_update_notifier=false")
	cmd.SysProcAttr = childAttr()
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	o := outcome{append([]string{filepath.Base(name)}, args...), stdout.String(), stderr.String(), 0}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s did not end within %v\n%v", strings.Join(o.args, " "), timeout, o)
	case errors.As(err, &ee):
		o.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %s: %v", name, err)
	}
	return o
}

var (
	exampleScheduled = regexp.MustCompile(`(?m)^scheduled id=(\S+) by=(\S+) due=(\S+)$`)
	exampleReceived  = regexp.MustCompile(`(?m)^received id=(\S+) attempt=(\d+) payload="([^"]*)" due=(\S+) late_ms=(-?\d+) fired_after_due_ms=(-?[\d.]+)(.*)$`)
	exampleAcked     = regexp.MustCompile(`(?m)^acked id=(\S+) delivery_id=(\S+)$`)
	exampleDone      = regexp.MustCompile(`(?m)^done: scheduled (\d+), received (\d+), acked (\d+), early (\d+)$`)
)

// TestNodeExample installs the Node.js example's pinned packages with
// npm ci, runs its unit tests, then runs it against a started node and
// checks what it printed: every timer it scheduled (by due_time and by
// delay) was received, never before its due time by either clock, and
// acknowledged, and the example ended with exit code 0.
func TestNodeExample(t *testing.T) {
	t.Parallel()
	node, npm := findNode(t)
	dir := nodeExample(t)
	n := startNode(t, t.TempDir())

	// --prefer-offline takes packages from npm's cache when they are
	// there, so a machine that ran it once needs no network.
	if o := runIn(t, dir, npmTimeout, npm, "ci", "--prefer-offline", "--no-audit", "--no-fund"); o.code != 0 {
		t.Fatalf("%v", o)
	}
	if o := runIn(t, dir, commandTimeout, npm, "test"); o.code != 0 {
		t.Fatalf("%v", o)
	}

	const count = 6
	o := runIn(t, dir, commandTimeout, node, "example.js", "--addr", n.grpcAddr,
		"--count", strconv.Itoa(count), "--delay-ms", "1000", "--timeout-ms", "30000")
	if o.code != 0 {
		t.Fatalf("%v", o)
	}
	t.Logf("%s", o.stdout)

	scheduled := map[string]bool{}
	by := map[string]int{}
	for _, m := range exampleScheduled.FindAllStringSubmatch(o.stdout, -1) {
		scheduled[m[1]] = true
		by[strings.SplitN(m[2], "=", 2)[0]]++
	}
	if len(scheduled) != count || by["due_time"] == 0 || by["delay"] == 0 {
		t.Fatalf("the example scheduled %d distinct timers (%v), want %d, by due_time and by delay\n%v", len(scheduled), by, count, o)
	}
	received := map[string]bool{}
	for _, m := range exampleReceived.FindAllStringSubmatch(o.stdout, -1) {
		id, late, fired, rest := m[1], m[5], m[6], m[7]
		if !scheduled[id] {
			t.Errorf("the example received %s, which it did not schedule", id)
			continue
		}
		received[id] = true
		lateMs, _ := strconv.Atoi(late)
		firedMs, _ := strconv.ParseFloat(fired, 64)
		if lateMs < 0 || firedMs < 0 || strings.Contains(rest, "EARLY") {
			t.Errorf("%s delivered early: late_ms=%s fired_after_due_ms=%s%s", id, late, fired, rest)
		}
		if !strings.HasPrefix(m[3], "hello from node") {
			t.Errorf("%s came with payload %q", id, m[3])
		}
	}
	acked := map[string]bool{}
	for _, m := range exampleAcked.FindAllStringSubmatch(o.stdout, -1) {
		acked[m[1]] = true
	}
	for id := range scheduled {
		if !received[id] || !acked[id] {
			t.Errorf("%s: received %v, acked %v", id, received[id], acked[id])
		}
	}
	want := []string{strconv.Itoa(count), strconv.Itoa(count), strconv.Itoa(count), "0"}
	if m := exampleDone.FindStringSubmatch(o.stdout); m == nil || strings.Join(m[1:], " ") != strings.Join(want, " ") {
		t.Errorf("the example's summary is %q, want scheduled, received and acked %d, early 0", m, count)
	}

	// A node nobody listens on: the example says so and exits 1.
	o = runIn(t, dir, commandTimeout, node, "example.js", "--addr", "127.0.0.1:1", "--timeout-ms", "5000")
	if o.code != 1 || !strings.Contains(o.stderr, "nothing answers at 127.0.0.1:1") {
		t.Errorf("against an address where nothing listens: %v", o)
	}
	n.stop(syscall.SIGTERM)
}
