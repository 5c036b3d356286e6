package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// errNoServingLine says a node's log holds no msg=serving line with its
// HTTP address yet.
var errNoServingLine = errors.New("no msg=serving line with an http address in the log")

// httpAddrOf returns the HTTP address (metrics, health) a node logged
// when it began serving, from its log file: the last one logged, since a
// restarted node appends to the same log.
func httpAddrOf(logPath string) (string, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	addr := ""
	for sc.Scan() {
		if fs := logFields(sc.Text()); fs["msg"] == "serving" && fs["http"] != "" {
			addr = fs["http"]
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if addr == "" {
		return "", fmt.Errorf("%s: %w", logPath, errNoServingLine)
	}
	return addr, nil
}

// goroutines reads go_goroutines, the number of goroutines of the node's
// process, from its /metrics.
func goroutines(ctx context.Context, httpAddr string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics of %s: %s", httpAddr, resp.Status)
	}
	v, err := gauge(resp.Body, "go_goroutines")
	return int(v), err
}

// gauge returns the value of the unlabelled metric name in a Prometheus
// text exposition.
func gauge(r io.Reader, name string) (float64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no metric %s", name)
}

// TestGauge checks the reading of a metric from a Prometheus text
// exposition.
func TestGauge(t *testing.T) {
	const body = "# HELP go_goroutines Number of goroutines that currently exist.\n# TYPE go_goroutines gauge\n" +
		"go_goroutines_total_not 7\ngo_goroutines 142\ngo_threads 9\n"
	tests := []struct {
		name    string
		want    float64
		wantErr bool
	}{
		{name: "go_goroutines", want: 142},
		{name: "go_threads", want: 9},
		{name: "go_gc_duration_seconds", wantErr: true},
	}
	for _, tc := range tests {
		got, err := gauge(strings.NewReader(body), tc.name)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("gauge(%s) = %v, %v; want %v, error %v", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}
