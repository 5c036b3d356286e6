package node

import (
	"testing"
	"time"
)

// TestRedisTimeouts: the Redis client's socket timeouts cover the group
// commit's CommitTimeout, whichever deployment the URL names; a longer
// one, or none, given in the URL stands.
func TestRedisTimeouts(t *testing.T) {
	commit := DefaultConfig("o", "d").Commit
	tests := []struct {
		url        string
		read, writ time.Duration
	}{
		{"redis://127.0.0.1:1", commit.CommitTimeout, commit.CommitTimeout},
		{"redis://127.0.0.1:1?read_timeout=1s&write_timeout=2s", commit.CommitTimeout, commit.CommitTimeout},
		{"redis://127.0.0.1:1?read_timeout=1m&write_timeout=-1", time.Minute, -1},
		{"redis://127.0.0.1:1,127.0.0.1:2", commit.CommitTimeout, commit.CommitTimeout},
		{"redis+cluster://127.0.0.1:1?read_timeout=1m&write_timeout=-1", time.Minute, -1},
		{"redis-sentinel://127.0.0.1:1?master=m", commit.CommitTimeout, commit.CommitTimeout},
		{"redis-sentinel://127.0.0.1:1?master=m&read_timeout=1m&write_timeout=-1", time.Minute, -1},
	}
	for _, tt := range tests {
		opts, err := ParseRedisURL(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		RedisTimeouts(opts, commit)
		var read, writ time.Duration
		var deadlines bool
		switch {
		case opts.Cluster != nil:
			read, writ, deadlines = opts.Cluster.ReadTimeout, opts.Cluster.WriteTimeout, opts.Cluster.ContextTimeoutEnabled
		case opts.Failover != nil:
			read, writ, deadlines = opts.Failover.ReadTimeout, opts.Failover.WriteTimeout, opts.Failover.ContextTimeoutEnabled
		default:
			read, writ, deadlines = opts.Simple.ReadTimeout, opts.Simple.WriteTimeout, opts.Simple.ContextTimeoutEnabled
		}
		if read != tt.read || writ != tt.writ || !deadlines {
			t.Errorf("%s: read %v, write %v, context deadlines %v; want %v, %v, true",
				tt.url, read, writ, deadlines, tt.read, tt.writ)
		}
	}
}
