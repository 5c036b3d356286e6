package client_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/client"
	"github.com/timerd/timerd/internal/servertest"
	"github.com/timerd/timerd/server"
)

// localConfig returns the configuration of a test server on dir: the
// server's LocalConfig (embedded store, free loopback ports, 4 shards,
// 3 attempts, redelivery backoff 100ms to 1s) with ack timeouts down to
// 50ms allowed, so dead letters are made in well under a second.
func localConfig(dir string) server.Config {
	cfg := server.LocalConfig(dir)
	cfg.HTTPAddr = ""
	cfg.MinAckTimeout = 50 * time.Millisecond
	cfg.Logger = slog.New(slog.DiscardHandler)
	return cfg
}

// startServer starts a timerd node on dir listening on addr (empty: a
// free port) and closes it when the test ends.
func startServer(tb testing.TB, dir, addr string) *server.Server {
	tb.Helper()
	cfg := localConfig(dir)
	if addr != "" {
		cfg.GRPCAddr = addr
	}
	return servertest.Start(tb, cfg)
}

// newClient returns a client of srv, closed when the test ends.
func newClient(tb testing.TB, addr string, opts ...client.Option) *client.Client {
	tb.Helper()
	c, err := client.New(context.Background(), addr, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// testCtx returns a context that ends when the test does, or after a
// generous bound against hangs: 2 minutes, since under -race on a loaded
// 2-core machine a test that joins and kills nodes runs past 30 s.
func testCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	tb.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or the deadline passes.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The examples share one server, started on first use and closed by
// TestMain.
var example struct {
	once sync.Once
	srv  *server.Server
	dir  string
	err  error
}

// serverAddr returns the address of the examples' timerd node.
func serverAddr() string {
	example.once.Do(func() {
		example.dir, example.err = os.MkdirTemp("", "timerd-client-example-")
		if example.err != nil {
			return
		}
		var srv *server.Server
		if srv, example.err = server.New(localConfig(example.dir)); example.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if example.err = srv.Start(ctx); example.err == nil {
			example.srv = srv
		}
	})
	if example.err != nil {
		panic(fmt.Sprintf("start the examples' server: %v", example.err))
	}
	return example.srv.GRPCAddr()
}

// deadLetter makes the timer id of namespace and topic a dead letter: it
// schedules it due now and fails every delivery until the server gives up.
func deadLetter(addr, namespace, topic, id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.New(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Schedule(ctx, client.Timer{Namespace: namespace, ID: id, Topic: topic}); err != nil {
		return err
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	subErr := make(chan error, 1)
	go func() {
		subErr <- c.Subscribe(sctx, namespace, topic, func(context.Context, *client.Delivery) error {
			return fmt.Errorf("refused")
		}, client.WithAckTimeout(50*time.Millisecond))
	}()
	for {
		info, err := c.Get(ctx, namespace, id)
		if err != nil {
			return err
		}
		if info.State == client.StateDead {
			stop()
			return <-subErr
		}
		select {
		case err := <-subErr:
			return fmt.Errorf("subscription ended: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if example.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := example.srv.Close(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "close the examples' server:", err)
			code = 1
		}
		cancel()
	}
	if example.dir != "" {
		_ = os.RemoveAll(example.dir)
	}
	os.Exit(code)
}
