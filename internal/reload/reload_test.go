package reload

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValue: a change of the file is loaded on the next Get, a file that
// fails to load keeps the previous value, and Reload loads at once.
func TestValue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	loads := 0
	load := func() (string, error) {
		loads++
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(string(b), "bad") {
			return "", errors.New("bad contents")
		}
		return string(b), nil
	}
	if _, err := New(load, 0, nil, path); err == nil {
		t.Fatal("New loaded a missing file")
	}
	write("one")
	v, err := New(load, 0, nil, path)
	if err != nil {
		t.Fatal(err)
	}
	before := loads
	if got := v.Get(); got != "one" || loads != before {
		t.Fatalf("Get = %q after %d loads; want one, no new load for an unchanged file", got, loads-before)
	}
	steps := []struct {
		write, want string
	}{
		{"two!", "two!"},
		{"bad!!", "two!"},    // fails: the previous value stays
		{"three!", "three!"}, // sizes differ at each step: a file's mtime may not move within a few ms
	}
	for _, s := range steps {
		write(s.write)
		if got := v.Get(); got != s.want {
			t.Fatalf("after writing %q: Get = %q, want %q", s.write, got, s.want)
		}
	}
	if err := os.WriteFile(path, []byte("bad"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := v.Reload(); err == nil || v.Get() != "three!" {
		t.Fatalf("Reload of a bad file = %v, value %q; want an error and three!", err, v.Get())
	}
}
