package node

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Default ports of a seed given without one.
const (
	defaultRedisPort    = "6379"
	defaultSentinelPort = "26379"
)

// RedisOptions is a parsed Redis URL (see ParseRedisURL): the options of
// exactly one of go-redis's three clients.
type RedisOptions struct {
	// Simple is one Redis server.
	Simple *redis.Options
	// Cluster is a Redis Cluster, found through its seeds.
	Cluster *redis.ClusterOptions
	// Failover is a master that Redis Sentinel watches and fails over.
	Failover *redis.FailoverOptions
}

// ParseRedisURL parses the --redis URL, which names one of three Redis
// deployments:
//
//	redis://[user:password@]host[:port][/db][?option=value&...]
//	    one Redis server; rediss:// with TLS, and
//	    unix://[user:password@]/path/to/socket[?db=n&...] on a Unix socket.
//	redis://[user:password@]host1[:port1],host2[:port2],...[?option=value&...]
//	    a Redis Cluster: two or more seeds, any of its nodes; the client
//	    learns the rest from them. redis+cluster:// names a cluster
//	    with any number of seeds, one included; rediss:// and
//	    rediss+cluster:// with TLS. A cluster has only database 0.
//	redis-sentinel://[user:password@]host1[:port1][,host2[:port2]...][/db]?master=name[&option=value...]
//	    the master that these Sentinels call name, found again after
//	    they fail it over; rediss-sentinel:// with TLS. user:password
//	    are the master's; sentinel_username= and sentinel_password=
//	    are the Sentinels' own, if they ask for one.
//
// A port defaults to 6379, a Sentinel's to 26379. The options are
// go-redis's URL options of that client (redis.ParseURL,
// redis.ParseClusterURL, redis.ParseFailoverURL), such as
// dial_timeout=3s or pool_size=20; an unknown one is an error. Errors
// wrap ErrRedisURL and never quote the URL, whose password they would
// otherwise show.
func ParseRedisURL(raw string) (RedisOptions, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	scheme = strings.ToLower(scheme)
	if !ok {
		return RedisOptions{}, badRedisURL("it has no scheme: want redis://host:port, redis://host1:port1,host2:port2 (a Redis Cluster) or redis-sentinel://host:port?master=name")
	}
	// The host part ends where the path, query or fragment begins; it may
	// hold a list of seeds, which net/url does not parse.
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	userinfo, hosts := "", rest[:end]
	if i := strings.LastIndexByte(hosts, '@'); i >= 0 {
		userinfo, hosts = hosts[:i+1], hosts[i+1:]
	}
	tail := rest[end:]
	if strings.Contains(rest, "://") {
		return RedisOptions{}, badRedisURL("it holds a second scheme: list the seeds after one, as redis://host1:port1,host2:port2")
	}
	if strings.Contains(tail, "#") {
		return RedisOptions{}, badRedisURL("it has a fragment (#...), which means nothing here")
	}
	seeds := strings.Split(hosts, ",")
	switch scheme {
	case "redis", "rediss", "unix":
		if len(seeds) == 1 {
			return parseSimpleURL(raw)
		}
		if scheme == "unix" {
			return RedisOptions{}, badRedisURL("a unix:// URL names one socket, not a list")
		}
		return parseClusterURL(scheme, userinfo, seeds, tail)
	case "redis+cluster", "rediss+cluster":
		return parseClusterURL(strings.TrimSuffix(scheme, "+cluster"), userinfo, seeds, tail)
	case "redis-sentinel", "rediss-sentinel":
		return parseSentinelURL(strings.TrimSuffix(scheme, "-sentinel"), userinfo, seeds, tail)
	}
	return RedisOptions{}, badRedisURL("unknown scheme %q: want redis, rediss, redis+cluster, rediss+cluster, redis-sentinel, rediss-sentinel or unix", scheme)
}

func badRedisURL(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRedisURL, fmt.Sprintf(format, args...))
}

// redisURLError words an error of net/url or go-redis without the URL
// that net/url quotes in it.
func redisURLError(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err
	}
	return badRedisURL("%s", strings.TrimPrefix(err.Error(), "redis: "))
}

func parseSimpleURL(raw string) (RedisOptions, error) {
	if _, err := url.Parse(raw); err != nil {
		return RedisOptions{}, redisURLError(err)
	}
	o, err := redis.ParseURL(raw)
	if err != nil {
		return RedisOptions{}, redisURLError(err)
	}
	return RedisOptions{Simple: o}, nil
}

// seedAddrs checks each seed of a list and gives it the default port if
// it has none.
func seedAddrs(seeds []string, defaultPort string) ([]string, error) {
	addrs := make([]string, len(seeds))
	for i, seed := range seeds {
		if seed == "" {
			return nil, badRedisURL("seed %d of %d is empty", i+1, len(seeds))
		}
		// A port follows the last colon, unless that is inside an IPv6
		// literal's brackets.
		if c := strings.LastIndexByte(seed, ':'); c < 0 || c < strings.LastIndexByte(seed, ']') {
			seed = net.JoinHostPort(strings.Trim(seed, "[]"), defaultPort)
		}
		host, port, err := net.SplitHostPort(seed)
		if err != nil {
			return nil, badRedisURL("seed %d of %d: %v", i+1, len(seeds), err)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return nil, badRedisURL("seed %d of %d: port %q is not a number in [1, 65535]", i+1, len(seeds), port)
		}
		if u, err := url.Parse("redis://" + seed); err != nil || host == "" || u.Host != seed {
			return nil, badRedisURL("seed %d of %d: %q is not host:port", i+1, len(seeds), seed)
		}
		addrs[i] = seed
	}
	return addrs, nil
}

// oneHostURL parses a URL of the first seed alone, so that net/url reads
// its credentials, path and query.
func oneHostURL(scheme, userinfo, host, tail string) (*url.URL, error) {
	u, err := url.Parse(scheme + "://" + userinfo + host + tail)
	if err != nil {
		return nil, redisURLError(err)
	}
	return u, nil
}

func parseClusterURL(scheme, userinfo string, seeds []string, tail string) (RedisOptions, error) {
	addrs, err := seedAddrs(seeds, defaultRedisPort)
	if err != nil {
		return RedisOptions{}, err
	}
	u, err := oneHostURL(scheme, userinfo, addrs[0], tail)
	if err != nil {
		return RedisOptions{}, err
	}
	if p := strings.Trim(u.Path, "/"); p != "" && p != "0" {
		return RedisOptions{}, badRedisURL("a Redis Cluster has only database 0, not %q", p)
	}
	q := u.Query()
	if q.Has("addr") {
		return RedisOptions{}, badRedisURL("option addr: list the seeds in the host part instead, as redis://host1:port1,host2:port2")
	}
	for _, a := range addrs[1:] {
		q.Add("addr", a)
	}
	u.Path, u.RawQuery = "", q.Encode()
	o, err := redis.ParseClusterURL(u.String())
	if err != nil {
		return RedisOptions{}, redisURLError(err)
	}
	return RedisOptions{Cluster: o}, nil
}

func parseSentinelURL(scheme, userinfo string, seeds []string, tail string) (RedisOptions, error) {
	addrs, err := seedAddrs(seeds, defaultSentinelPort)
	if err != nil {
		return RedisOptions{}, err
	}
	u, err := oneHostURL(scheme, userinfo, addrs[0], tail)
	if err != nil {
		return RedisOptions{}, err
	}
	q := u.Query()
	for _, opt := range []string{"master_name", "username", "password", "addr"} {
		if q.Has(opt) {
			return RedisOptions{}, badRedisURL("option %s is not taken: the master is master=, its credentials go before the @, the Sentinels are the host part", opt)
		}
	}
	master := q.Get("master")
	if master == "" {
		return RedisOptions{}, badRedisURL("a redis-sentinel:// URL needs master=name, the name the Sentinels monitor the master by")
	}
	q.Del("master")
	q.Set("master_name", master)
	// go-redis takes the Sentinels' credentials from the user part and
	// the master's from options: the other way round from this URL,
	// whose user part, like every other form's, is the data's.
	if u.User != nil {
		q.Set("username", u.User.Username())
		pw, _ := u.User.Password()
		q.Set("password", pw)
	}
	su, sp := q.Get("sentinel_username"), q.Get("sentinel_password")
	q.Del("sentinel_username")
	q.Del("sentinel_password")
	u.User = nil
	if su != "" || sp != "" {
		u.User = url.UserPassword(su, sp)
	}
	for _, a := range addrs[1:] {
		q.Add("addr", a)
	}
	u.RawQuery = q.Encode()
	o, err := redis.ParseFailoverURL(u.String())
	if err != nil {
		return RedisOptions{}, redisURLError(err)
	}
	return RedisOptions{Failover: o}, nil
}

// NewClient returns a client of the deployment: a *redis.Client (of the
// master, with Sentinel) or a *redis.ClusterClient.
func (o RedisOptions) NewClient() redis.UniversalClient {
	switch {
	case o.Cluster != nil:
		return redis.NewClusterClient(o.Cluster)
	case o.Failover != nil:
		return redis.NewFailoverClient(o.Failover)
	}
	return redis.NewClient(o.Simple)
}

// String names the deployment for logs and errors, without credentials.
func (o RedisOptions) String() string {
	switch {
	case o.Cluster != nil:
		return "cluster seeds " + strings.Join(o.Cluster.Addrs, ",")
	case o.Failover != nil:
		return fmt.Sprintf("master %q of Sentinels %s", o.Failover.MasterName, strings.Join(o.Failover.SentinelAddrs, ","))
	case o.Simple != nil:
		return o.Simple.Addr
	}
	return "no Redis"
}
