package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/timerd/timerd/internal/binary"
)

// findGRPCurl returns the path of grpcurl, on PATH or in
// $(go env GOPATH)/bin. When it is missing the test is skipped, or fails
// when CI is set (CI=true), where the CI script installs it.
func findGRPCurl(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("grpcurl"); err == nil {
		return p
	}
	if goCmd, err := binary.GoCommand(); err == nil {
		if out, err := exec.Command(goCmd, "env", "GOPATH").Output(); err == nil {
			for _, dir := range filepath.SplitList(strings.TrimSpace(string(out))) {
				p := filepath.Join(dir, "bin", "grpcurl")
				if _, err := os.Stat(p); err == nil {
					return p
				}
			}
		}
	}
	const msg = "grpcurl is neither on PATH nor in $(go env GOPATH)/bin; " +
		"install it with: go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4"
	missing(t, msg)
	return ""
}

// missing skips the test for want of msg's component, or fails it when
// CI is set (CI=true): the CI script installs every component, so a
// missing one there is a broken machine, not a reason to test less.
func missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// TestGRPCurl drives the running binary with grpcurl, through server
// reflection and gRPC health, as the README promises users can.
func TestGRPCurl(t *testing.T) {
	t.Parallel()
	grpcurl := findGRPCurl(t)
	n := startNode(t, t.TempDir())

	o := runBinary(t, grpcurl, "-plaintext", n.grpcAddr, "list")
	if o.code != 0 {
		t.Fatalf("grpcurl list: %v", o)
	}
	services := strings.Fields(o.stdout)
	for _, want := range []string{"timerd.v1.TimerService", "timerd.v1.ClusterService", "grpc.health.v1.Health"} {
		if !slices.Contains(services, want) {
			t.Errorf("grpcurl list does not show %s: %v", want, o)
		}
	}

	o = runBinary(t, grpcurl, "-plaintext", n.grpcAddr, "grpc.health.v1.Health/Check")
	if o.code != 0 || !strings.Contains(o.stdout, `"SERVING"`) {
		t.Errorf("health check: %v", o)
	}

	o = runBinary(t, grpcurl, "-plaintext", "-d", `{"timers":[{"id":"g1","topic":"t","delay":"1s"}]}`,
		n.grpcAddr, "timerd.v1.TimerService/Schedule")
	if o.code != 0 {
		t.Fatalf("grpcurl Schedule: %v", o)
	}
	var resp struct {
		Results []struct {
			ID      string `json:"id"`
			Code    int    `json:"code"`
			Message string `json:"message"`
			DueTime string `json:"dueTime"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(o.stdout), &resp); err != nil {
		t.Fatalf("grpcurl Schedule printed %q: %v", o.stdout, err)
	}
	if len(resp.Results) != 1 || resp.Results[0].ID != "g1" || resp.Results[0].Code != 0 || resp.Results[0].DueTime == "" {
		t.Errorf("Schedule result: %v", o)
	}
	// The timer is there for timerctl too.
	if st := timerState(t, n.grpcAddr, "g1"); st != "pending" {
		t.Errorf("g1 is %s, want pending", st)
	}
	n.stop(syscall.SIGTERM)
}
