package client

import (
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 10, MinBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second}
	for n := 1; n <= 12; n++ {
		d := p.MinBackoff << (n - 1)
		if d > p.MaxBackoff || d <= 0 {
			d = p.MaxBackoff
		}
		for range 200 {
			if got := p.backoff(n); got < d/2 || got > d {
				t.Fatalf("backoff(%d) = %v; want in [%v, %v]", n, got, d/2, d)
			}
		}
	}
}

func TestResolve(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	due := now.Add(time.Hour)
	for _, tc := range []struct {
		due   time.Time
		delay time.Duration
		want  time.Time
		bad   bool
	}{
		{due: due, want: due},
		{delay: time.Minute, want: now.Add(time.Minute)},
		{want: now},
		{due: due, delay: time.Second, bad: true},
		{delay: -time.Nanosecond, bad: true},
	} {
		got, why := resolve(tc.due, tc.delay, now)
		if (why != "") != tc.bad || (!tc.bad && !got.Equal(tc.want)) {
			t.Errorf("resolve(%v, %v) = %v, %q; want %v (bad: %v)", tc.due, tc.delay, got, why, tc.want, tc.bad)
		}
	}
}

func TestValidName(t *testing.T) {
	for s, want := range map[string]bool{
		"default": true, "a.b_c-D9": true, "": false, "a b": false, "a/b": false, "é": false,
		string(make([]byte, 65)): false,
	} {
		if got := validName(s, 64); got != want {
			t.Errorf("validName(%q) = %v; want %v", s, got, want)
		}
	}
}
