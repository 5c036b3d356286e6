package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadmeQuickStart runs the commands of the README's quick start, in
// order and as written there, against a node of its own (their --addr is
// the node's, the rest is the README's), so the quick start cannot drift
// from what the binaries do. Every line of the block must be one the test
// knows how to run.
func TestReadmeQuickStart(t *testing.T) {
	t.Parallel()
	lines := quickStart(t, "../../README.md")
	n := startNode(t, t.TempDir())
	scheduled := false
	for _, line := range lines {
		words, err := shellWords(line)
		if err != nil || len(words) == 0 {
			t.Fatalf("README quick start line %q: %v", line, err)
		}
		switch {
		case len(words) >= 2 && words[0] == "bin/timerctl" && words[1] == "subscribe":
			if !scheduled {
				t.Fatalf("README quick start subscribes before it schedules: %q", line)
			}
			readmeSubscribe(t, n, words[1:])
		case words[0] == "bin/timerctl":
			o := mustTimerctl(t, n.grpcAddr, words[1:]...)
			switch words[1] {
			case "schedule":
				scheduled = true
			case "get":
				if !strings.Contains(o.stdout, "state      pending") {
					t.Errorf("%q does not show the timer pending:\n%s", line, o.stdout)
				}
			}
		case words[0] == "curl":
			readmeMetrics(t, n, words)
		default:
			t.Fatalf("README quick start line %q: the test does not know how to run %q", line, words[0])
		}
	}
	if !scheduled {
		t.Fatal("README quick start schedules no timer")
	}
	n.stop(syscall.SIGTERM)
}

// quickStart returns the command lines of the first sh block after the
// README's "in a second terminal", without their comments.
func quickStart(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	found, in := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !found:
			found = strings.Contains(line, "in a second terminal")
		case !in:
			in = line == "```sh"
		case line == "```":
			return lines
		default:
			if cmd := strings.TrimSpace(stripComment(line)); cmd != "" {
				lines = append(lines, cmd)
			}
		}
	}
	t.Fatalf("%s has no sh block after \"in a second terminal\"", path)
	return nil
}

// stripComment cuts line at a # that starts a shell comment: outside
// single quotes and after a blank.
func stripComment(line string) string {
	quoted := false
	for i, r := range line {
		switch {
		case r == '\'':
			quoted = !quoted
		case r == '#' && !quoted && (i == 0 || line[i-1] == ' '):
			return line[:i]
		}
	}
	return line
}

// shellWords splits a command line as sh does for the README's lines:
// words separated by blanks, single quotes around literal text, and a
// pipe as a word of its own. Anything else sh would expand is refused.
func shellWords(line string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord, quoted := false, false
	for _, r := range line {
		switch {
		case quoted && r == '\'':
			quoted = false
		case quoted:
			w.WriteRune(r)
		case r == '\'':
			quoted, inWord = true, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case strings.ContainsRune(`"$*?\;&<>`+"`", r):
			return nil, fmt.Errorf("%q is shell syntax the test does not run", r)
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote")
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

// readmeSubscribe runs a blocking timerctl subscribe until it has printed
// the timer the quick start scheduled, then stops it as Ctrl-C would.
func readmeSubscribe(t *testing.T, n *node, args []string) {
	t.Helper()
	cmd, stdout, stderr := startSubscribe(t, exec.Command(bin.timerctl, append([]string{"--addr", n.grpcAddr}, args...)...))
	got := make(chan delivery, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var d delivery
			if json.Unmarshal(sc.Bytes(), &d) == nil && d.ID != "" {
				select {
				case got <- d:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case d := <-got:
		if d.ID != "order-42" || d.Topic != "orders" || d.FiredTime.Before(d.DueTime) {
			t.Errorf("subscribe printed %+v, want order-42 of topic orders, fired at or after its due time", d)
		}
	case <-time.After(commandTimeout):
		_ = cmd.Process.Kill()
		t.Fatalf("subscribe printed no delivery within %v; stderr:\n%s", commandTimeout, stderr.String())
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Errorf("subscribe stopped by SIGINT: %v; stderr:\n%s", err, stderr.String())
	}
}

// readmeMetrics runs the README's `curl -s URL | grep WORD` against the
// node's HTTP address.
func readmeMetrics(t *testing.T, n *node, words []string) {
	t.Helper()
	if len(words) != 6 || words[1] != "-s" || words[3] != "|" || words[4] != "grep" || !strings.HasPrefix(words[2], "127.0.0.1:7071/") {
		t.Fatalf("README curl line %q: want `curl -s 127.0.0.1:7071/PATH | grep WORD`", strings.Join(words, " "))
	}
	path := strings.TrimPrefix(words[2], "127.0.0.1:7071")
	resp, err := http.Get("http://" + n.httpAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), words[5]) {
		t.Errorf("GET %s: %s, and its body has no %q", path, resp.Status, words[5])
	}
	// The line shows the timer the quick start scheduled, pending.
	if pending := `timerd_timers{state="pending"} 1`; words[5] == "timerd_timers" && !strings.Contains(string(body), pending) {
		t.Errorf("GET %s: its body has no %s", path, pending)
	}
}
