package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/redistest"
)

// clusterStatus is what the test reads of timerctl status --json.
type clusterStatus struct {
	ShardCount uint32            `json:"shard_count"`
	Members    []clusterMember   `json:"members"`
	Settled    int               `json:"settled"`
	Moving     []json.RawMessage `json:"moving"`
	Unowned    []json.RawMessage `json:"unowned"`
	Shards     []struct {
		Shard uint32 `json:"shard"`
		Owner string `json:"owner"`
		State string `json:"state"`
	} `json:"shards"`
}

type clusterMember struct {
	Name    string `json:"name"`
	Owned   int    `json:"owned"`
	Serving int    `json:"serving"`
}

func clusterStatusOf(t *testing.T, addr string) clusterStatus {
	t.Helper()
	o := mustTimerctl(t, addr, "--json", "status")
	var st clusterStatus
	if err := json.Unmarshal([]byte(o.stdout), &st); err != nil {
		t.Fatalf("status --json printed %q: %v", o.stdout, err)
	}
	return st
}

// processGone reports whether process pid has exited (a zombie has).
func processGone(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	s := string(stat)
	return strings.HasPrefix(s[strings.LastIndexByte(s, ')')+1:], " Z")
}

// started is one process tools/cluster.sh says it started.
type started struct {
	addr string // gRPC address of a node, Redis's address
	pid  int
}

// TestMakeCluster runs the script of make cluster as a user does: it
// waits for the printed addresses, checks timerctl status against the
// three nodes, schedules a timer on one node and receives it from
// another, kills one node with SIGKILL and sees its shards served by the
// others, then interrupts the script (Ctrl-C) and checks that every
// process it started has exited and its directory is gone.
func TestMakeCluster(t *testing.T) {
	if runtime.GOOS != "linux" {
		missing(t, "tools/cluster.sh reads /proc, which only Linux has")
	}
	redistest.Binary(t) // skips without redis-server, or fails under CI
	t.Parallel()

	cmd := exec.Command("bash", filepath.Join("..", "..", "tools", "cluster.sh"))
	cmd.Env = childEnv("BIN="+filepath.Dir(bin.timerd), "BASE=free", "SHARDS=16", "KEEP=0")
	cmd, stdout, stderr := startSubscribe(t, cmd)
	procs := map[string]started{}
	var work string
	t.Cleanup(func() { // when the test failed midway
		_ = cmd.Process.Kill()
		for _, p := range procs {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	})

	// Read the banner up to "ready", bounded against a hang.
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	banner := new(lockedBuffer) // written on by the reader once ready
	timeout := time.After(2 * time.Minute)
read:
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("the script ended before it was ready:\n%s\nstderr:\n%s", banner.String(), stderr.String())
			}
			_, _ = banner.Write([]byte(line + "\n"))
			f := strings.Fields(line)
			switch {
			case strings.HasSuffix(line, "ready; Ctrl-C stops everything"):
				break read
			case strings.HasPrefix(line, "make cluster: data and logs in "):
				work = f[len(f)-1]
			case len(f) == 6 && slices.Contains([]string{"n1", "n2", "n3", "redis"}, f[0]):
				pid, err := strconv.Atoi(f[4])
				if err != nil {
					t.Fatalf("pid of %s in %q: %v", f[0], line, err)
				}
				procs[f[0]] = started{f[1], pid}
			}
		case <-timeout:
			t.Fatalf("the script was not ready within 2m:\n%s\nstderr:\n%s", banner.String(), stderr.String())
		}
	}
	go func() { // the rest of its output, until it exits
		for line := range lines {
			_, _ = banner.Write([]byte(line + "\n"))
		}
	}()
	t.Logf("make cluster printed:\n%s", banner.String())
	if len(procs) != 4 || work == "" {
		t.Fatalf("want three nodes, Redis and the directory in the banner, got %v, %q", procs, work)
	}
	for _, want := range []string{"status", "schedule hello", "subscribe --topic demo", "kill -9 " + strconv.Itoa(procs["n3"].pid), "restart.sh n3"} {
		if !strings.Contains(banner.String(), want) {
			t.Errorf("the banner does not suggest %q", want)
		}
	}
	n1, n2 := procs["n1"].addr, procs["n2"].addr

	st := clusterStatusOf(t, n1)
	if len(st.Members) != 3 || st.ShardCount != 16 || st.Settled != 16 {
		t.Fatalf("status of the started cluster: %+v", st)
	}
	var n3Shards []uint32
	for _, s := range st.Shards {
		if s.Owner == "n3" {
			n3Shards = append(n3Shards, s.Shard)
		}
	}
	if len(n3Shards) == 0 {
		t.Fatalf("n3 owns no shard: %+v", st)
	}

	mustTimerctl(t, n2, "schedule", "hello", "--topic", "demo", "--in", "1s", "--payload", "hi")
	recs, o := subscribe(t, n1, "--topic", "demo", "--count", "1", "--max-wait", "30s")
	if o.code != 0 || len(recs) != 1 || recs[0].ID != "hello" || recs[0].at.Before(recs[0].DueTime) {
		t.Fatalf("want hello, not early: %v", o)
	}

	if err := syscall.Kill(procs["n3"].pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the others to serve n3's shards", func() bool {
		st = clusterStatusOf(t, n1)
		return st.Settled == 16 && len(st.Moving) == 0 && len(st.Unowned) == 0
	})
	for _, s := range st.Shards {
		if slices.Contains(n3Shards, s.Shard) && (s.Owner != "n1" && s.Owner != "n2" || s.State != "serving") {
			t.Errorf("shard %d of the killed n3: %+v", s.Shard, s)
		}
	}

	// n3 starts again through the script the banner names; it is no child
	// of the script's shell, and must be stopped with the rest.
	if o := runIn(t, work, commandTimeout, "bash", filepath.Join(work, "restart.sh"), "n3"); o.code != 0 {
		t.Fatalf("%v", o)
	}
	pid, err := os.ReadFile(filepath.Join(work, "n3.pid"))
	if err != nil {
		t.Fatal(err)
	}
	restarted := started{procs["n3"].addr, 0}
	if restarted.pid, err = strconv.Atoi(strings.TrimSpace(string(pid))); err != nil {
		t.Fatal(err)
	}
	procs["n3 restarted"] = restarted
	waitFor(t, time.Minute, "the restarted n3 to serve shards again", func() bool {
		st = clusterStatusOf(t, n1)
		n3 := slices.IndexFunc(st.Members, func(m clusterMember) bool { return m.Name == "n3" })
		return n3 >= 0 && st.Members[n3].Serving > 0 && st.Settled == 16
	})

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("the script exited with %v after SIGINT:\n%s\nstderr:\n%s", err, banner.String(), stderr.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the script did not exit within 2m of SIGINT:\nstderr:\n%s", stderr.String())
	}
	t.Logf("the script stopped %v after SIGINT", time.Since(start).Round(time.Millisecond))
	for name, p := range procs {
		if !processGone(p.pid) {
			t.Errorf("%s (pid %d) still runs after the script exited", name, p.pid)
		}
	}
	if _, err := os.Stat(work); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the script left %s behind (stat: %v)", work, err)
	}
}
