package server

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// syncBuffer is a bytes.Buffer that a logger may write from several
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestStartLogsOneSummary: at info, a start says where it serves and
// then, once, what it loaded: shards, timers and the time it took; the
// shards and the embedded store log their own steps at debug only.
func TestStartLogsOneSummary(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	if _, err := e.timers.Schedule(e.ctx(), &pb.ScheduleRequest{Timers: []*pb.TimerSpec{spec("a", "t", time.Hour), spec("b", "t", time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	e.stop()

	var buf syncBuffer
	start(t, dir, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "msg=serving") || !strings.Contains(lines[1], "msg=ready") {
		t.Fatalf("start logged at info:\n%s\nwant serving, then ready", buf.String())
	}
	for _, want := range []string{"shards=4", "timers=2", "took="} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("ready line %q lacks %s", lines[1], want)
		}
	}
}

// TestFailedStartDoesNotLogStopped: a start that fails (here, its port
// is taken) returns the error and logs nothing that reads as a stop of a
// node that never served.
func TestFailedStartDoesNotLogStopped(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	var buf syncBuffer
	cfg := LocalConfig(t.TempDir())
	cfg.GRPCAddr = busy.Addr().String()
	cfg.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Start = %v, want address already in use", err)
	}
	if strings.Contains(buf.String(), "stopped") {
		t.Errorf("a failed start logged:\n%s", buf.String())
	}
}
