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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/redistest"
	"github.com/timerd/timerd/internal/testcert"
)

// redisACL is the least-privilege Redis ACL of a timerd user whose keys
// begin "td:", as docs/SECURITY.md gives it: the keys of its prefix
// only, no channels, and only the commands timerd sends (the lease and
// commit scripts' commands too, which Redis checks inside scripts).
const redisACL = "on resetkeys ~td:* resetchannels -@all +hello +ping +select +info +cluster|slots +cluster|shards +command +asking +config|get +evalsha +eval +script|load +get +set +setnx +del +hset +hdel +hscan +pexpire +pttl +time +wait"

// TestRedisLeastPrivilegeACL runs a node as a Redis user that has
// redisACL (with and without CONFIG GET, which the persistence check can
// do without), on one redis-server and on a Redis Cluster of three
// masters with a replica each, the user set on every node of it. The
// node goes through what it asks of Redis (aclWorkload): it starts,
// schedules, delivers, acks, cancels, makes and replays dead letters,
// and loads its timers again after a restart; Redis's ACL log then shows
// that it refused the node nothing. On the cluster, the user follows a
// redirect of a slot being migrated. And that user really is denied what
// timerd has no business doing.
func TestRedisLeastPrivilegeACL(t *testing.T) {
	doc, err := os.ReadFile("../docs/SECURITY.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), redisACL) {
		t.Fatalf("docs/SECURITY.md does not give the ACL this test checks:\n%s", redisACL)
	}
	const user, password = "timerd", "s3cret pass"
	userinfo := url.UserPassword(user, password).String()
	for _, dep := range []string{"standalone", "redis-cluster"} {
		for _, tt := range []struct {
			name string
			acl  string
			// denied are the ACL log entries a node's run may leave:
			// what it asks for and can do without.
			denied []string
		}{
			{"documented", redisACL, nil},
			{"without CONFIG GET", strings.Replace(redisACL, " +config|get", "", 1), []string{"timerd: command config|get"}},
		} {
			t.Run(dep+"/"+tt.name, func(t *testing.T) {
				var redisURL string
				var as redis.UniversalClient
				var denied func(testing.TB) []string
				var onRedis []func(*Config)
				switch rules := strings.Fields(tt.acl); dep {
				case "standalone":
					rs := redistest.Start(t)
					rs.SetUser(t, user, password, rules...)
					redisURL = "redis://" + userinfo + "@" + rs.Addr() + "/0"
					as = redis.NewClient(&redis.Options{Addr: rs.Addr(), Username: user, Password: password})
					denied = rs.ACLDenials
				default:
					rc := redistest.StartRedisCluster(t, 3, 1)
					rc.SetUser(t, user, password, rules...)
					redisURL = "redis://" + userinfo + "@" + strings.Join(rc.Addrs(), ",")
					o := rc.ClusterOptions()
					o.Username, o.Password = user, password
					as = redis.NewClusterClient(o)
					denied = func(tb testing.TB) []string {
						var out []string
						for _, d := range rc.ACLDenials(tb) {
							_, d, _ = strings.Cut(d, " ") // without the node's address
							out = append(out, d)
						}
						return out
					}
					// With a replica per master, every commit waits for it
					// (WAIT), as --redis-wait-replicas 1 has it.
					onRedis = append(onRedis, func(c *Config) { c.RedisWaitReplicas = 1 })
					// While a resharding moves a slot, go-redis follows a
					// -ASK redirect with ASKING: the user may send it.
					key := "td:{acl-ask}:k"
					from, to := rc.StartMigration(t, key)
					if err := as.Set(context.Background(), key, "v", 0).Err(); err != nil {
						t.Errorf("SET %s, its slot migrating from %s to %s, as the timerd user: %v", key, from.Addr(), to.Addr(), err)
					}
				}
				defer as.Close()
				aclWorkload(t, redisURL, onRedis...)
				// A node that works only after being refused something
				// (go-redis gives up on what it may not ask, and asks
				// again at each command) shows in the ACL log.
				for _, d := range denied(t) {
					if !slices.Contains(tt.denied, d) {
						t.Errorf("Redis refused the node: %s", d)
					}
				}
				aclDenials(t, as)
			})
		}
	}
}

// aclWorkload runs a node on redisURL, its configuration changed by
// opts, through every kind of Redis call it makes: schedule, delivery,
// ack, cancel, dead letters and their replay, and a restart that loads
// the pending timers again.
func aclWorkload(t *testing.T, redisURL string, opts ...func(*Config)) {
	t.Helper()
	opts = append([]func(*Config){func(c *Config) { c.RedisURL = redisURL }}, opts...)
	e := start(t, "", opts...)
	st := e.subscribe(&pb.Subscription{Topic: "acl"})
	e.schedule(spec("a", "acl", 0), spec("later", "acl", time.Hour))
	d := st.next()
	if d.GetId() != "a" {
		t.Fatalf("delivered %v, want a", d)
	}
	st.ack(d)
	waitFor(t, "a to be gone after its ack", func() bool {
		_, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "a"})
		return status.Code(err) == codes.NotFound
	})
	cr, err := e.timers.Cancel(e.ctx(), &pb.CancelRequest{Ids: []string{"later"}})
	if err != nil || len(cr.GetResults()) != 1 || cr.GetResults()[0].GetCode() != 0 {
		t.Fatalf("Cancel later: %v, %v", cr, err)
	}
	st.close()

	// Each stream that ends unacked uses up an attempt.
	e.schedule(spec("dead", "dl", 0))
	for range e.cfg.Shard.MaxAttempts {
		s := e.subscribe(&pb.Subscription{Topic: "dl"})
		if d := s.next(); d.GetId() != "dead" {
			t.Fatalf("delivered %v, want dead", d)
		}
		s.close()
	}
	waitFor(t, "the dead letter", func() bool {
		dl, err := e.timers.ListDeadLetters(e.ctx(), &pb.ListDeadLettersRequest{Topic: "dl"})
		return err == nil && len(dl.GetDeadLetters()) == 1 && dl.GetDeadLetters()[0].GetTimer().GetSpec().GetId() == "dead"
	})
	rr, err := e.timers.ReplayDeadLetters(e.ctx(), &pb.ReplayDeadLettersRequest{Ids: []string{"dead"}})
	if err != nil || rr.GetReplayed() != 1 {
		t.Fatalf("ReplayDeadLetters: %v, %v", rr, err)
	}
	again := e.subscribe(&pb.Subscription{Topic: "dl"})
	if d := again.next(); d.GetId() != "dead" {
		t.Fatalf("after the replay, delivered %v, want dead", d)
	} else {
		again.ack(d)
	}
	again.close()

	e.schedule(spec("kept", "acl", time.Hour))
	e.stop()
	e = start(t, "", opts...)
	if got, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "kept"}); err != nil || got.GetTimer().GetState() != pb.TimerState_TIMER_STATE_PENDING {
		t.Fatalf("kept after a restart: %v, %v; want it pending", got, err)
	}
	if _, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "later"}); status.Code(err) != codes.NotFound {
		t.Fatalf("later, cancelled, after a restart: %v; want NOT_FOUND", err)
	}
}

// aclDenials checks that the ACL user as is denied what timerd has no
// business doing.
func aclDenials(t *testing.T, as redis.UniversalClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// NOPERM, or inside a script "can't run" or "can't access";
	// DEBUG is refused before the ACL is consulted.
	denials := []string{"NOPERM", "can't run", "can't access", "DEBUG command not allowed"}
	for _, cmd := range [][]any{
		{"FLUSHALL"}, {"KEYS", "*"}, {"CONFIG", "SET", "appendonly", "no"}, {"DEBUG", "SLEEP", "0"},
		{"GET", "other:key"}, {"SET", "other:key", "x"}, {"SHUTDOWN"}, {"ACL", "LIST"}, {"SCRIPT", "FLUSH"},
		{"EVAL", "return redis.call('FLUSHALL')", "0"}, {"EVAL", "return redis.call('GET', 'other:key')", "0"},
		{"CLUSTER", "RESET"}, {"CLUSTER", "FAILOVER"}, {"CLUSTER", "ADDSLOTS", "1"}, {"CLUSTER", "FORGET", "x"},
		{"READONLY"}, {"MIGRATE", "127.0.0.1", "1", "td:x", "0", "1000"},
	} {
		err := as.Do(ctx, cmd...).Err()
		if err == nil || !slices.ContainsFunc(denials, func(d string) bool { return strings.Contains(err.Error(), d) }) {
			t.Errorf("%v as the timerd user: %v, want it denied", cmd, err)
		}
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
