package server

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/redistest"
	"github.com/timerd/timerd/internal/testcert"
)

// redisACL is the least-privilege Redis ACL of a timerd user whose keys
// begin "td:", as docs/SECURITY.md gives it: the keys of its prefix
// only, no channels, and only the commands timerd sends (the lease and
// commit scripts' commands too, which Redis checks inside scripts).
const redisACL = "on resetkeys ~td:* resetchannels -@all +hello +ping +select +info +config|get +evalsha +eval +script|load +get +set +setnx +del +hset +hdel +hscan +pexpire +pttl +time"

// TestRedisLeastPrivilegeACL runs a node as a Redis user that has
// redisACL (with and without CONFIG GET, which the persistence check can
// do without): it starts, schedules and delivers; and that user really
// is denied what timerd has no business doing.
func TestRedisLeastPrivilegeACL(t *testing.T) {
	doc, err := os.ReadFile("../docs/SECURITY.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), redisACL) {
		t.Fatalf("docs/SECURITY.md does not give the ACL this test checks:\n%s", redisACL)
	}
	for _, tt := range []struct {
		name string
		acl  string
	}{
		{"documented", redisACL},
		{"without CONFIG GET", strings.Replace(redisACL, " +config|get", "", 1)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rs := redistest.Start(t)
			admin := rs.Client(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			args := []any{"ACL", "SETUSER", "timerd", ">s3cret pass"}
			for _, r := range strings.Fields(tt.acl) {
				args = append(args, r)
			}
			if err := admin.Do(ctx, args...).Err(); err != nil {
				t.Fatalf("ACL SETUSER: %v", err)
			}
			u := url.URL{Scheme: "redis", User: url.UserPassword("timerd", "s3cret pass"), Host: rs.Addr(), Path: "/0"}
			e := start(t, "", func(c *Config) { c.RedisURL = u.String() })
			st := e.subscribe(&pb.Subscription{Topic: "acl"})
			if r := e.schedule(spec("a", "acl", 0))[0]; r.GetCode() != 0 {
				t.Fatalf("schedule as the ACL user: %v", r)
			}
			if d := st.next(); d.GetId() != "a" {
				t.Fatalf("delivered %v, want a", d)
			}

			user := redis.NewClient(&redis.Options{Addr: rs.Addr(), Username: "timerd", Password: "s3cret pass"})
			defer user.Close()
			// NOPERM, or inside a script "can't run" or "can't access";
			// DEBUG is refused before the ACL is consulted.
			denials := []string{"NOPERM", "can't run", "can't access", "DEBUG command not allowed"}
			for _, cmd := range [][]any{
				{"FLUSHALL"}, {"KEYS", "*"}, {"CONFIG", "SET", "appendonly", "no"}, {"DEBUG", "SLEEP", "0"},
				{"GET", "other:key"}, {"SET", "other:key", "x"}, {"SHUTDOWN"}, {"ACL", "LIST"}, {"SCRIPT", "FLUSH"},
				{"EVAL", "return redis.call('FLUSHALL')", "0"}, {"EVAL", "return redis.call('GET', 'other:key')", "0"},
			} {
				err := user.Do(ctx, cmd...).Err()
				if err == nil || !slices.ContainsFunc(denials, func(d string) bool { return strings.Contains(err.Error(), d) }) {
					t.Errorf("%v as the timerd user: %v, want it denied", cmd, err)
				}
			}
		})
	}
}

// TestRedisOverTLS runs a node on a rediss:// URL with a user and
// password against a real redis-server's TLS listener, whose certificate
// a test CA signed. Go trusts a private CA through SSL_CERT_FILE (see
// docs/SECURITY.md), which it reads once per process, so the node runs in
// a child process of this test binary with that variable set.
func TestRedisOverTLS(t *testing.T) {
	if url := os.Getenv("TIMERD_TEST_REDISS_URL"); url != "" {
		e := start(t, "", func(c *Config) { c.RedisURL = url })
		st := e.subscribe(&pb.Subscription{Topic: "tls"})
		if r := e.schedule(spec("a", "tls", 0))[0]; r.GetCode() != 0 {
			t.Fatalf("schedule over rediss: %v", r)
		}
		if d := st.next(); d.GetId() != "a" {
			t.Fatalf("delivered %v, want a", d)
		}
		return
	}
	ca := testcert.NewCA(t, "redis CA")
	leaf := ca.Issue(t, "", "redis")
	rs := redistest.Start(t, redistest.TLS(leaf.CertFile, leaf.KeyFile, ca.CertFile))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := rs.Client(t).Do(ctx, "ACL", "SETUSER", "timerd", "on", ">pw", "~*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	u := url.URL{Scheme: "rediss", User: url.UserPassword("timerd", "pw"), Host: "localhost:" + strings.Split(rs.TLSAddr(), ":")[1]}
	for _, tt := range []struct {
		name    string
		caFile  string
		wantErr bool
	}{
		{"trusted CA", ca.CertFile, false},
		{"unknown CA", testcert.NewCA(t, "other CA").CertFile, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRedisOverTLS$", "-test.count=1")
			cmd.Env = append(os.Environ(), "TIMERD_TEST_REDISS_URL="+u.String(), "SSL_CERT_FILE="+tt.caFile)
			out, err := cmd.CombinedOutput()
			if (err != nil) != tt.wantErr {
				t.Fatalf("node on %s with SSL_CERT_FILE=%s: %v, want failed=%v\n%s", strings.Replace(u.String(), "pw", "xxx", 1), tt.name, err, tt.wantErr, out)
			}
			if tt.wantErr && !strings.Contains(string(out), "certificate") {
				t.Fatalf("the refusal does not mention the certificate:\n%s", out)
			}
		})
	}
}
