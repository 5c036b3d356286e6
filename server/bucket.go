package server

import "time"

// bucket is a token bucket refilled continuously: it holds tokens as of
// at. Its rate and burst are its owner's, passed to each call, since the
// namespace limits and the bad-call tarpit change them (a reload, a
// node's share of the shards) without touching the buckets. Not safe for
// concurrent use: its owner's lock guards it.
type bucket struct {
	tokens float64
	at     time.Time
}

// fill adds what rate (tokens a second) refilled since at, up to burst,
// and moves at to now. A now before at adds nothing.
func (b *bucket) fill(now time.Time, rate, burst float64) {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(burst, b.tokens+d.Seconds()*rate)
		b.at = now
	}
}

// fullAt reports whether b will hold burst at now, as a new bucket does,
// so that its owner may forget it.
func (b *bucket) fullAt(now time.Time, rate, burst float64) bool {
	return b.tokens+now.Sub(b.at).Seconds()*rate >= burst
}
