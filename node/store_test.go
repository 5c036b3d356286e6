package node

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestRedisTimeouts: the Redis client's socket timeouts cover the group
// commit's CommitTimeout; a longer one, or none, given in the URL stands.
func TestRedisTimeouts(t *testing.T) {
	commit := DefaultConfig("o", "d").Commit
	tests := []struct {
		url        string
		read, writ time.Duration
	}{
		{"redis://127.0.0.1:1", commit.CommitTimeout, commit.CommitTimeout},
		{"redis://127.0.0.1:1?read_timeout=1s&write_timeout=2s", commit.CommitTimeout, commit.CommitTimeout},
		{"redis://127.0.0.1:1?read_timeout=1m&write_timeout=-1", time.Minute, -1},
	}
	for _, tt := range tests {
		opts, err := redis.ParseURL(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		RedisTimeouts(opts, commit)
		if opts.ReadTimeout != tt.read || opts.WriteTimeout != tt.writ || !opts.ContextTimeoutEnabled {
			t.Errorf("%s: read %v, write %v, context deadlines %v; want %v, %v, true",
				tt.url, opts.ReadTimeout, opts.WriteTimeout, opts.ContextTimeoutEnabled, tt.read, tt.writ)
		}
	}
}
