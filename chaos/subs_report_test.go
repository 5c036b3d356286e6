package chaos

import (
	"slices"
	"time"
)

// firstAttemptLateness returns how late after its due time each first
// attempt (attempt 1) of got that keep accepts was received.
func firstAttemptLateness(got []delivery, keep func(delivery) bool) []time.Duration {
	var out []time.Duration
	for _, d := range got {
		if d.attempt == 1 && keep(d) {
			out = append(out, d.received.Sub(d.due))
		}
	}
	return out
}

// pctOf is the p-th percentile of ds, in any order (p 100: the largest),
// or 0 when ds is empty.
func pctOf(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return percentile(s, p)
}
