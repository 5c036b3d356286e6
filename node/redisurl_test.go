package node

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// redisTarget is what a parsed URL says, whichever client it is for.
type redisTarget struct {
	kind     string // "simple", "cluster" or "sentinel"
	addrs    []string
	db       int
	user, pw string
	master   string
	sUser    string // the Sentinels' username
	sPW      string // the Sentinels' password
	tls      bool
	dial     time.Duration
}

func targetOf(o RedisOptions) redisTarget {
	switch {
	case o.Cluster != nil:
		c := o.Cluster
		return redisTarget{kind: "cluster", addrs: c.Addrs, user: c.Username, pw: c.Password, tls: c.TLSConfig != nil, dial: c.DialTimeout}
	case o.Failover != nil:
		f := o.Failover
		return redisTarget{kind: "sentinel", addrs: f.SentinelAddrs, db: f.DB, user: f.Username, pw: f.Password,
			master: f.MasterName, sUser: f.SentinelUsername, sPW: f.SentinelPassword, tls: f.TLSConfig != nil, dial: f.DialTimeout}
	}
	s := o.Simple
	return redisTarget{kind: "simple", addrs: []string{s.Addr}, db: s.DB, user: s.Username, pw: s.Password, tls: s.TLSConfig != nil, dial: s.DialTimeout}
}

// TestParseRedisURL: each documented form gives its client's options.
func TestParseRedisURL(t *testing.T) {
	tests := []struct {
		url  string
		want redisTarget
	}{
		{"redis://127.0.0.1:6380", redisTarget{kind: "simple", addrs: []string{"127.0.0.1:6380"}}},
		{"redis://u:p@h:1/3?dial_timeout=2s", redisTarget{kind: "simple", addrs: []string{"h:1"}, db: 3, user: "u", pw: "p", dial: 2 * time.Second}},
		{"rediss://h", redisTarget{kind: "simple", addrs: []string{"h:6379"}, tls: true}},
		{"unix:///run/redis.sock?db=2", redisTarget{kind: "simple", addrs: []string{"/run/redis.sock"}, db: 2}},
		{"REDIS://h:1", redisTarget{kind: "simple", addrs: []string{"h:1"}}},

		{"redis://h1:1,h2:2,h3:3", redisTarget{kind: "cluster", addrs: []string{"h1:1", "h2:2", "h3:3"}}},
		{"redis://u:p%2Cq@h1:1,h2", redisTarget{kind: "cluster", addrs: []string{"h1:1", "h2:6379"}, user: "u", pw: "p,q"}},
		{"redis://h1:1,[::1]:2/0?dial_timeout=5s", redisTarget{kind: "cluster", addrs: []string{"h1:1", "[::1]:2"}, dial: 5 * time.Second}},
		{"rediss://h1:1,h2:2/", redisTarget{kind: "cluster", addrs: []string{"h1:1", "h2:2"}, tls: true}},
		{"redis+cluster://h1:1", redisTarget{kind: "cluster", addrs: []string{"h1:1"}}},
		{"rediss+cluster://[::1],h2:2", redisTarget{kind: "cluster", addrs: []string{"[::1]:6379", "h2:2"}, tls: true}},

		{"redis-sentinel://s1:1,s2?master=mymaster", redisTarget{kind: "sentinel", addrs: []string{"s1:1", "s2:26379"}, master: "mymaster"}},
		{"redis-sentinel://u:p@s1:1/4?master=m&sentinel_username=su&sentinel_password=sp&dial_timeout=1s",
			redisTarget{kind: "sentinel", addrs: []string{"s1:1"}, db: 4, user: "u", pw: "p", master: "m", sUser: "su", sPW: "sp", dial: time.Second}},
		{"rediss-sentinel://s1?master=m&sentinel_password=sp", redisTarget{kind: "sentinel", addrs: []string{"s1:26379"}, master: "m", sPW: "sp", tls: true}},
	}
	for _, tt := range tests {
		o, err := ParseRedisURL(tt.url)
		if err != nil {
			t.Errorf("%s: %v", tt.url, err)
			continue
		}
		got := targetOf(o)
		if got.kind != tt.want.kind || !slices.Equal(got.addrs, tt.want.addrs) || got.db != tt.want.db ||
			got.user != tt.want.user || got.pw != tt.want.pw || got.master != tt.want.master ||
			got.sUser != tt.want.sUser || got.sPW != tt.want.sPW || got.tls != tt.want.tls || got.dial != tt.want.dial {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.url, got, tt.want)
		}
	}
}

// TestParseRedisURLErrors: a bad URL is refused with ErrRedisURL and a
// message that says what is wrong, and never shows the password.
func TestParseRedisURLErrors(t *testing.T) {
	tests := []struct{ url, want string }{
		{"", "no scheme"},
		{"127.0.0.1:6379", "no scheme"},
		{"http://h:1", `unknown scheme "http"`},
		{"redis://h:1,redis://h:2", "second scheme"},
		{"redis://h:1,,h:3", "seed 2 of 3 is empty"},
		{"redis://h:1,h:x", `seed 2 of 2: port "x"`},
		{"redis://h:1,h:70000", `seed 2 of 2: port "70000"`},
		{"redis://h:1,:2", "seed 2 of 2"},
		{"redis://h:1,a b:2", "seed 2 of 2"},
		{"redis://u:secret@h:1,h:2/5", "only database 0"},
		{"redis://h:1,h:2?addr=h:3", "option addr"},
		{"redis://h:1,h:2?bogus=1", "unexpected option: bogus"},
		{"redis://u:secret@h:1?bogus=1", "unexpected option: bogus"},
		{"redis://u:secret@h:1/x", "database number"},
		{"redis://u:secret@h:1#f", "fragment"},
		{"unix://a,b/s", "one socket"},
		{"redis-sentinel://s:1", "needs master=name"},
		{"redis-sentinel://s:1?master_name=m", "option master_name"},
		{"redis-sentinel://s:1?master=m&password=x", "option password"},
		{"redis-sentinel://u:secret@s:1?master=m&bogus=1", "unexpected option: bogus"},
		{"redis://u:secret@h:bad", "invalid port"},
	}
	for _, tt := range tests {
		_, err := ParseRedisURL(tt.url)
		switch {
		case err == nil:
			t.Errorf("%q: accepted", tt.url)
		case !errors.Is(err, ErrRedisURL):
			t.Errorf("%q: %v does not wrap ErrRedisURL", tt.url, err)
		case !strings.Contains(err.Error(), tt.want):
			t.Errorf("%q: %v; want it to say %q", tt.url, err, tt.want)
		case strings.Contains(err.Error(), "secret"):
			t.Errorf("%q: %v shows the password", tt.url, err)
		}
	}
}

// FuzzParseRedisURL: any string either parses to exactly one client's
// options, with at least one address, or is refused with ErrRedisURL.
func FuzzParseRedisURL(f *testing.F) {
	for _, s := range []string{
		"redis://u:p@h:1/3?dial_timeout=2s", "rediss://h", "unix:///s?db=1",
		"redis://h1:1,h2:2", "redis+cluster://[::1]:1", "redis-sentinel://u:p@s1,s2:2/1?master=m&sentinel_password=x",
		"redis://h:1,,", "redis-sentinel://s?master=", "redis://@,@/?#",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := ParseRedisURL(s)
		if err != nil {
			if !errors.Is(err, ErrRedisURL) {
				t.Fatalf("%q: %v does not wrap ErrRedisURL", s, err)
			}
			return
		}
		set := 0
		for _, p := range []bool{o.Simple != nil, o.Cluster != nil, o.Failover != nil} {
			if p {
				set++
			}
		}
		if set != 1 {
			t.Fatalf("%q: %d clients' options set, want 1", s, set)
		}
		switch {
		case o.Cluster != nil && len(o.Cluster.Addrs) == 0:
			t.Fatalf("%q: a cluster without seeds", s)
		case o.Failover != nil && (len(o.Failover.SentinelAddrs) == 0 || o.Failover.MasterName == ""):
			t.Fatalf("%q: Sentinel options without Sentinels or master: %+v", s, o.Failover)
		}
		if o.String() == "" {
			t.Fatalf("%q: no description", s)
		}
	})
}
