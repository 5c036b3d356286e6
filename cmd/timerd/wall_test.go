package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWallOffsetFile checks the test hook that steps a node's wall clock:
// the offset in the file moves the wall the node reads, and a rewrite of
// the file moves it again; a bad offset is refused at the start, naming
// the variable.
func TestWallOffsetFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "offset")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("+5m\n")
	t.Setenv(wallOffsetEnv, path)
	cfg, _, _, err := parse(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Wall == nil {
		t.Fatalf("%s set, Config.Wall is nil", wallOffsetEnv)
	}
	for _, tc := range []struct {
		file string
		want time.Duration
	}{
		{"+5m", 5 * time.Minute},
		{"-3m", -3 * time.Minute},
		{"not a duration", -3 * time.Minute}, // a bad rewrite keeps the last offset
		{"", 0},
		{"+90s", 90 * time.Second},
	} {
		write(tc.file)
		time.Sleep(wallOffsetReread) // the file is read again this often
		if got := time.Until(cfg.Wall()); got < tc.want-time.Second || got > tc.want+time.Second {
			t.Errorf("file %q: the wall is %v from the machine's clock, want %v", tc.file, got, tc.want)
		}
	}

	write("five minutes")
	if _, _, _, err := parse(nil, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), wallOffsetEnv) {
		t.Errorf("a bad offset at the start: %v, want an error naming %s", err, wallOffsetEnv)
	}
	t.Setenv(wallOffsetEnv, filepath.Join(t.TempDir(), "missing"))
	if _, _, _, err := parse(nil, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), wallOffsetEnv) {
		t.Errorf("a missing file: %v, want an error naming %s", err, wallOffsetEnv)
	}
}
