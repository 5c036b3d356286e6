package chaos

import (
	"context"
	"time"

	"github.com/timerd/timerd/internal/scrape"
)

// goroutines reads go_goroutines, the number of goroutines of n's
// process, from its /metrics.
func goroutines(ctx context.Context, n *node) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := scrape.Sum(ctx, n.httpAddr, "go_goroutines")
	return int(v), err
}
