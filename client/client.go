// Package client is the Go client of timerd. It owns the client side of
// the public gRPC contract (api/timerd/v1): turning plain Go values into
// requests and answers back into plain Go values, mapping gRPC status codes
// to the package's errors, retrying what is safe to retry, routing every
// call to the node that owns its timers, batching high volumes of
// schedules (Scheduler) and consuming deliveries from every node with
// bounded concurrency and batched acks (Client.Subscribe).
//
// It depends only on the generated contract, the shard function of
// package ring, gRPC and protobuf; it never imports the server, shard or
// store packages, so it speaks to timerd exactly as a client in any other
// language would.
//
// # Routing
//
// A Client is made with the address of one node or of several (seeds). In
// the background it asks a seed, or any member it knows, for the cluster's
// members (ClusterService.Members) and shard map (ClusterService.ShardMap),
// keeps one connection per member, and sends each timer's items straight
// to the node that owns the timer's shard (ring.Shard of its namespace and
// id): the parts of a batch that belong to different nodes go in one RPC
// per node, concurrently, and the results keep the caller's order. A shard
// without an owner goes to the node the ring assigns it to; a shard whose
// node is not known, and every call that concerns no single timer
// (ListDeadLetters, a ReplayDeadLetters of a whole namespace, Members,
// ShardMap), goes to the node that last answered for the map, which
// forwards what it does not own. A single node is a cluster of one member
// that owns every shard: every call goes to it, at the address the client
// was given.
//
// The client polls the membership every WithRefreshInterval (default 1s)
// and fetches the shard map again when the membership changed, while
// shards move, and when a call or an item comes back UNAVAILABLE (its
// shard moved, or its node died): such fetches are made one at a time and
// at most one per 100ms, however many calls ask, and the retries of those
// calls wait for the new map and go where it says. When the node asked
// does not answer, the others the client knows are asked, then the seeds;
// until a map is known, calls go to a seed.
//
// # Retries
//
// A call is retried only where repeating it cannot change the outcome:
// Schedule (an idempotent create, always sent with an absolute due time),
// Reschedule (always sent with an absolute due time), Cancel, Get,
// ListDeadLetters, Members and ShardMap. A whole RPC is retried when it
// fails with UNAVAILABLE, or with DEADLINE_EXCEEDED while the caller's
// context is still live; within a batch, only the items whose result is
// UNAVAILABLE or DEADLINE_EXCEEDED are sent again. Attempts are bounded and
// spaced by exponential backoff with jitter (RetryPolicy).
// ReplayDeadLetters is never retried.
//
// Every Schedule and Reschedule call (and every batch of a Scheduler)
// carries a random request id, the same on all its attempts and on every
// node its parts go to. The server remembers it with the timers the call
// made or moved, so a retry that arrives after a timer fired, or after a
// one-shot timer was delivered and acknowledged (within the server's retry
// window, default 1 minute), changes nothing instead of scheduling or
// moving the timer again, while a new call with the same timer does.
//
// # Delays
//
// A Timer or Move given as a delay is turned into an absolute due time on
// the client's clock before its first attempt, so every retry of it is
// identical and the timer fires when the caller meant, however long the
// retries took. Calling Schedule again with the same Delay is a new
// request with a new due time; to repeat a Schedule at the application
// level, repeat it with the due time the first call returned.
//
// # Errors
//
// Failures of a call or of one item of a batch are *Error values: they
// wrap one of the package's sentinel errors (ErrNotFound, ErrExists, ...)
// chosen from the gRPC code, so errors.Is works, and they carry the gRPC
// status, so status.FromError and status.Code work as well.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	timerdv1 "github.com/timerd/timerd/api/timerd/v1"
)

var (
	// ErrInvalid reports a request or item the server (or the client, before
	// sending) refused as malformed: gRPC INVALID_ARGUMENT or OUT_OF_RANGE.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound reports a timer that does not exist: gRPC NOT_FOUND. A
	// Cancel that was retried may report it for a timer its own earlier
	// attempt removed.
	ErrNotFound = errors.New("timer not found")
	// ErrExists reports a Schedule of an id that exists with a different
	// spec: gRPC ALREADY_EXISTS.
	ErrExists = errors.New("timer exists with a different spec")
	// ErrFailedPrecondition reports a timer in the wrong state for the
	// call: gRPC FAILED_PRECONDITION. ErrDead and ErrNotDead wrap it.
	ErrFailedPrecondition = errors.New("timer in the wrong state")
	// ErrDead reports a Reschedule of a dead letter; replay it instead.
	ErrDead = fmt.Errorf("%w: timer is a dead letter", ErrFailedPrecondition)
	// ErrNotDead reports a ReplayDeadLetters of a timer that is not a dead
	// letter.
	ErrNotDead = fmt.Errorf("%w: timer is not a dead letter", ErrFailedPrecondition)
	// ErrUnavailable reports a transient failure that outlasted the retries
	// (or was not retried): gRPC UNAVAILABLE, or DEADLINE_EXCEEDED while the
	// caller's context was still live.
	ErrUnavailable = errors.New("unavailable")
	// ErrDenied reports a refusal on authority: gRPC PERMISSION_DENIED or
	// UNAUTHENTICATED.
	ErrDenied = errors.New("permission denied")
	// ErrResourceExhausted reports a request over a server or transport
	// limit, such as a batch larger than the maximum message size: gRPC
	// RESOURCE_EXHAUSTED.
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrInternal reports any other failure: gRPC INTERNAL, UNKNOWN,
	// UNIMPLEMENTED, DATA_LOSS, ABORTED, CANCELED by the server, or an
	// answer that breaks the contract.
	ErrInternal = errors.New("internal error")
	// ErrClosed reports a call on a closed Client or Scheduler.
	ErrClosed = errors.New("client: closed")
	// ErrInvalidConfig is wrapped by the errors of New, NewScheduler and
	// Subscribe for a bad option or config field; the message names it.
	ErrInvalidConfig = errors.New("client: invalid config")
)

// DefaultNamespace is the namespace of requests that name none, unless
// WithNamespace sets another.
const DefaultNamespace = "default"

// Client is a connection to a timerd cluster (or single node): one gRPC
// connection per member, and the shard map that says which member owns
// which timers. Its methods may be called concurrently from any number of
// goroutines. Close releases it.
type Client struct {
	topo *topology
	cfg  config

	closed    atomic.Bool
	closeOnce sync.Once
}

// RetryPolicy bounds the retries of the calls that are safe to retry. The
// wait before retry n (n >= 1) is drawn uniformly from [d/2, d], where d is
// MinBackoff doubled n-1 times and capped at MaxBackoff.
type RetryPolicy struct {
	// MaxAttempts is the most attempts of one call, the first included
	// (default 5). 1 disables retries.
	MaxAttempts int
	// MinBackoff is the wait before the first retry (default 50ms).
	MinBackoff time.Duration
	// MaxBackoff caps the wait between attempts (default 2s).
	MaxBackoff time.Duration
}

// DefaultRetryPolicy returns the defaults documented on RetryPolicy.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{MaxAttempts: 5, MinBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second}
}

// Validate reports the first invalid field. Errors wrap ErrInvalidConfig.
func (p RetryPolicy) Validate() error {
	switch {
	case p.MaxAttempts < 1 || p.MaxAttempts > 100:
		return badConfig("RetryPolicy.MaxAttempts", "must be in [1, 100], got %d", p.MaxAttempts)
	case p.MinBackoff < time.Millisecond:
		return badConfig("RetryPolicy.MinBackoff", "must be >= 1ms, got %v", p.MinBackoff)
	case p.MaxBackoff < p.MinBackoff:
		return badConfig("RetryPolicy.MaxBackoff", "must be >= MinBackoff, got %v", p.MaxBackoff)
	}
	return nil
}

// MinKeepaliveTime is the shortest keepalive ping interval the client
// accepts: servers refuse clients that ping more often.
const MinKeepaliveTime = 10 * time.Second

// config is what the Options set.
type config struct {
	logger    *slog.Logger
	namespace string
	retry     RetryPolicy
	keepalive keepalive.ClientParameters
	creds     credentials.TransportCredentials
	dialOpts  []grpc.DialOption
	waitReady bool
	refresh   time.Duration
}

func defaultConfig() config {
	return config{
		logger:    slog.New(slog.DiscardHandler),
		namespace: DefaultNamespace,
		retry:     DefaultRetryPolicy(),
		keepalive: keepalive.ClientParameters{
			Time:                30 * time.Second,
			Timeout:             10 * time.Second,
			PermitWithoutStream: false,
		},
		creds:   insecure.NewCredentials(),
		refresh: DefaultRefreshInterval,
	}
}

func (c *config) validate() error {
	switch {
	case c.logger == nil:
		return badConfig("WithLogger", "must not be nil")
	case !validName(c.namespace, 64):
		return badConfig("WithNamespace", "must match [A-Za-z0-9._-]{1,64}, got %q", c.namespace)
	case c.keepalive.Time < MinKeepaliveTime:
		return badConfig("WithKeepalive", "Time must be >= %v, got %v", MinKeepaliveTime, c.keepalive.Time)
	case c.keepalive.Timeout <= 0:
		return badConfig("WithKeepalive", "Timeout must be > 0, got %v", c.keepalive.Timeout)
	case c.creds == nil:
		return badConfig("WithTransportCredentials", "must not be nil")
	case c.refresh < 10*time.Millisecond || c.refresh > time.Hour:
		return badConfig("WithRefreshInterval", "must be in [10ms, 1h], got %v", c.refresh)
	}
	return c.retry.Validate()
}

// Option configures a Client in New.
type Option func(*config)

// WithLogger sets the logger of the client's events (retries, reconnects
// of subscriptions). Default: discard.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithNamespace sets the namespace used by requests that name none.
// Default DefaultNamespace ("default").
func WithNamespace(ns string) Option { return func(c *config) { c.namespace = ns } }

// WithRetry sets the retry policy of the calls that are safe to retry.
// Default DefaultRetryPolicy().
func WithRetry(p RetryPolicy) Option { return func(c *config) { c.retry = p } }

// WithKeepalive sets the connections' keepalive pings. Default: a ping
// after 30s without activity, 10s to answer it, and no pings while no call
// or stream is open. Time must be at least MinKeepaliveTime.
func WithKeepalive(p keepalive.ClientParameters) Option {
	return func(c *config) { c.keepalive = p }
}

// WithTransportCredentials sets the transport security of the
// connections (to the seeds and to every member), for example
// credentials.NewTLS. Default: insecure (plaintext), which suits loopback
// and private networks.
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(c *config) { c.creds = creds }
}

// WithDialOptions adds gRPC dial options, applied after the client's own
// (credentials, keepalive), so they may override them, to every
// connection: the seeds' and the members'. Default: none.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) { c.dialOpts = append(c.dialOpts, opts...) }
}

// WithWaitConnected makes New wait, within its context, until the
// connection to a seed is ready, so that an unreachable address is
// reported by New. Default: New returns at once; it connects in the
// background, where it fetches the cluster's shard map.
func WithWaitConnected() Option { return func(c *config) { c.waitReady = true } }

// DefaultRefreshInterval is how often a Client polls the cluster's
// membership unless WithRefreshInterval says otherwise.
const DefaultRefreshInterval = time.Second

// WithRefreshInterval sets how often the client asks a node for the
// cluster's membership, in the background, to learn of nodes that join
// or leave (it then fetches the shard map too, and Subscribe follows the
// new members). Default DefaultRefreshInterval (1s); it must be in
// [10ms, 1h]. Calls that meet a moved shard make the client fetch the map
// at once, whatever the interval.
func WithRefreshInterval(d time.Duration) Option { return func(c *config) { c.refresh = d } }

// connectBackoff spaces the attempts to reconnect a lost connection:
// quicker than gRPC's default (1s growing to 2m), so that a restarted node
// is found again within seconds.
var connectBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second}

// New returns a Client of the timerd cluster or node at addr: the gRPC
// address of one node (host:port, or any target grpc.NewClient accepts),
// or the addresses of several nodes separated by commas
// ("10.0.0.1:7070,10.0.0.2:7070"), the seeds the client learns the
// cluster from; a target that contains a comma cannot be given. ctx
// bounds New itself; it matters only with WithWaitConnected. The options'
// defaults are documented on each Option.
//
// New returns at once, and in the background connects to a seed, fetches
// the members and the shard map, and connects to every member (at the
// gRPC address it advertises; the connections are made with the same
// options as the seeds'). Calls made before the first map is known wait
// for it, within their context. A lost connection is dialled again after
// 100ms, then at growing intervals up to 5s (grpc.WithConnectParams in
// WithDialOptions changes that). New fails with an error wrapping
// ErrInvalidConfig for a bad option or an empty address.
func New(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var seeds []string
	for a := range strings.SplitSeq(addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			seeds = append(seeds, a)
		}
	}
	if len(seeds) == 0 {
		return nil, badConfig("addr", "must name at least one node, got %q", addr)
	}
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(cfg.creds),
		grpc.WithKeepaliveParams(cfg.keepalive),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: connectBackoff, MinConnectTimeout: 5 * time.Second}),
	}, cfg.dialOpts...)
	topo, err := newTopology(seeds, dial, cfg.refresh, cfg.logger)
	if err != nil {
		return nil, err
	}
	c := &Client{topo: topo, cfg: cfg}
	if cfg.waitReady {
		if err := topo.waitReady(ctx); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("client: connect to %s: %w", addr, err)
		}
	}
	return c, nil
}

// Close stops the background polling and closes every connection. Calls
// in progress fail, Subscribe returns ErrClosed, and later calls fail with
// ErrClosed. Close does not flush Schedulers: close them first. It
// returns nil; it is safe to call more than once.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.topo.close()
	})
	return nil
}

// Namespace returns the namespace used by requests that name none.
func (c *Client) Namespace() string { return c.cfg.namespace }

// TimerService returns the generated TimerService client of the
// connection to the first seed, for what this package does not cover. It
// retries nothing, maps no errors and routes nothing: the node forwards
// what it does not own.
func (c *Client) TimerService() timerdv1.TimerServiceClient { return c.topo.seeds[0].timers }

// ClusterService returns the generated ClusterService client of the
// connection to the first seed. It retries nothing and maps no errors.
func (c *Client) ClusterService() timerdv1.ClusterServiceClient { return c.topo.seeds[0].cluster }

// ns returns namespace, or the client's default when it is empty.
func (c *Client) ns(namespace string) string {
	if namespace == "" {
		return c.cfg.namespace
	}
	return namespace
}

func badConfig(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
}

// validName reports whether s matches [A-Za-z0-9._-]{1,max}, the rule for
// namespaces and topics.
func validName(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '.', b == '_', b == '-':
		default:
			return false
		}
	}
	return true
}
