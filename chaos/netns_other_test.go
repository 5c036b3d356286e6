//go:build !linux

package chaos

import (
	"os"
	"testing"
)

// netLab needs Linux network namespaces; elsewhere a test that asks for
// one skips, or fails under CI, before any method is called.
type netLab struct{}

func newNetLab(t testing.TB, _ int) *netLab {
	t.Helper()
	const why = "network namespaces need Linux"
	if os.Getenv("CI") != "" {
		t.Fatal(why)
	}
	t.Skip(why)
	return nil
}

func (l *netLab) ip(int) string            { return "" }
func (l *netLab) bridgeIP() string         { return "" }
func (l *netLab) wrap(int) []string        { return nil }
func (l *netLab) partition(...[]int) error { return nil }
func (l *netLab) heal() error              { return nil }
