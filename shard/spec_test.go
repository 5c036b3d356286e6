package shard

import (
	"errors"
	"math"
	"regexp"
	"testing"
	"time"
	"unicode/utf8"
)

var (
	namespaceRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	topicRE     = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
)

// FuzzValidateSpec checks ValidateSpec against the contract's rules,
// written independently as regular expressions and comparisons, and that
// every refusal wraps one of the package's ErrInvalid… errors.
func FuzzValidateSpec(f *testing.F) {
	f.Add("ns", "id", "topic", 10, int64(0), int64(1000))
	f.Add("", "", "", 70000, int64(-1), int64(999))
	f.Add("a.b-c_D9", "\xff", "t/x", 65536, int64(1), int64(1000))
	cfg := DefaultConfig(0, "a")
	f.Fuzz(func(t *testing.T, ns, id, topic string, payload int, delayMs, intervalMs int64) {
		const maxMs = math.MaxInt64 / int64(time.Millisecond) // beyond, a Duration overflows
		if payload < 0 || payload > 1<<20 || delayMs > maxMs || delayMs < -maxMs || intervalMs > maxMs || intervalMs < -maxMs {
			return
		}
		sp := Spec{Namespace: ns, ID: id, Topic: topic, Payload: make([]byte, payload),
			Delay: time.Duration(delayMs) * time.Millisecond, Interval: time.Duration(intervalMs) * time.Millisecond}
		err := cfg.ValidateSpec(&sp)
		want := namespaceRE.MatchString(ns) && topicRE.MatchString(topic) &&
			len(id) >= 1 && len(id) <= 256 && utf8.ValidString(id) &&
			payload <= 64<<10 && delayMs >= 0 &&
			(intervalMs == 0 || intervalMs >= 1000)
		if (err == nil) != want {
			t.Fatalf("ValidateSpec(%q, %q, %q, %d B, delay %dms, interval %dms) = %v, want ok=%v", ns, id, topic, payload, delayMs, intervalMs, err, want)
		}
		if err != nil && !errors.Is(err, ErrInvalidNamespace) && !errors.Is(err, ErrInvalidID) && !errors.Is(err, ErrInvalidTopic) &&
			!errors.Is(err, ErrInvalidPayload) && !errors.Is(err, ErrInvalidDue) && !errors.Is(err, ErrInvalidInterval) {
			t.Fatalf("error %v wraps none of the ErrInvalid… errors", err)
		}
	})
}
