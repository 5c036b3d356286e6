// Package servertest starts in-process timerd nodes for the tests of the
// packages that drive one from outside (client, bench, timerctl): it owns
// a test node's lifecycle, New, Start and a Close when the test ends, so
// each of those tests only says how its node differs.
//
// It must not be imported outside tests.
package servertest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/timerd/timerd/server"
)

// Start starts a node with cfg and closes it when the test ends. The test
// fails at once if the node does not start within 30s; a Close that fails
// fails it too.
func Start(tb testing.TB, cfg server.Config) *server.Server {
	tb.Helper()
	srv, err := server.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			tb.Errorf("close server: %v", err)
		}
	})
	return srv
}

// TokenFile writes body, a token file (see package auth), into a
// temporary directory of the test, readable by its owner only, and
// returns its path, for Config.AuthFile.
func TokenFile(tb testing.TB, body string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "tokens.json")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}
