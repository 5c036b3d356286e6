package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/timerd/timerd/internal/redistest"
)

// toxicProxy is an in-process toxiproxy between the nodes and one Redis
// server: the nodes dial Addr instead of Redis, and a scenario poisons
// what flows through it with latency, a blackhole or connection resets,
// then heals it. Every toxic applies to both directions.
//
// It listens on 127.0.0.1 only. Its methods may be called from any
// goroutine; close is safe to call twice.
type toxicProxy struct {
	proxy *toxiproxy.Proxy

	mu sync.Mutex
	// active names the toxics added and not yet removed; closed is set
	// by close. Both are guarded by mu.
	active []string
	closed bool
}

// errToxicProxyClosed is returned by a toxic added after close.
var errToxicProxyClosed = errors.New("toxic proxy closed")

// startToxicProxy starts a proxy to upstream on a free port of 127.0.0.1,
// closed when the test ends.
func startToxicProxy(tb testing.TB, name, upstream string) *toxicProxy {
	tb.Helper()
	// The proxy logs every connection it accepts through zerolog; the
	// nodes' logs say what a scenario needs, so it logs nothing.
	api := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(api, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		tb.Fatalf("toxiproxy %s to %s: %v", name, upstream, err)
	}
	tp := &toxicProxy{proxy: p}
	tb.Cleanup(tp.close)
	return tp
}

// Addr is the address the nodes dial instead of the upstream's; Start
// replaced the requested :0 with the port it bound.
func (p *toxicProxy) Addr() string {
	p.proxy.Lock()
	defer p.proxy.Unlock()
	return p.proxy.Listen
}

// latency delays every chunk, both ways, by d ± jitter.
func (p *toxicProxy) latency(d, jitter time.Duration) error {
	return p.addBoth("latency", map[string]int64{"latency": d.Milliseconds(), "jitter": jitter.Milliseconds()})
}

// blackhole drops every byte, both ways, of the open connections and of
// the new ones (which the proxy still accepts and connects upstream):
// Redis is reachable but never answers, as behind a partition that drops
// packets. A timeout toxic of 0 keeps connections open until heal.
func (p *toxicProxy) blackhole() error {
	return p.addBoth("timeout", map[string]int64{"timeout": 0})
}

// resetPeer resets (TCP RST) every connection after it next carries data,
// after a delay of after, so every client call through the proxy ends in
// a connection reset until heal.
func (p *toxicProxy) resetPeer(after time.Duration) error {
	return p.addBoth("reset_peer", map[string]int64{"timeout": after.Milliseconds()})
}

// heal removes every toxic: bytes flow again at full speed. Bytes that a
// blackhole dropped stay dropped, so a client sees the connections it
// used through the blackhole answer out of step and must close them.
func (p *toxicProxy) heal() error {
	p.mu.Lock()
	names := p.active
	p.active = nil
	p.mu.Unlock()
	var errs []error
	for _, name := range names {
		if err := p.proxy.Toxics.RemoveToxic(context.Background(), name); err != nil {
			errs = append(errs, fmt.Errorf("remove toxic %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// addBoth adds a toxic of type typ with attrs to the upstream and the
// downstream stream of every connection, open or new.
func (p *toxicProxy) addBoth(typ string, attrs any) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errToxicProxyClosed
	}
	for _, stream := range []string{"upstream", "downstream"} {
		name := fmt.Sprintf("%s_%s_%d", typ, stream, len(p.active))
		js, err := json.Marshal(map[string]any{"name": name, "type": typ, "stream": stream, "toxicity": 1.0, "attributes": attrs})
		if err != nil {
			return err
		}
		if _, err := p.proxy.Toxics.AddToxicJson(bytes.NewReader(js)); err != nil {
			return fmt.Errorf("add toxic %s: %w", name, err)
		}
		p.active = append(p.active, name)
	}
	return nil
}

// close stops the proxy and closes every connection through it.
func (p *toxicProxy) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	_ = p.heal() // a toxic's goroutines end with their toxic
	p.proxy.Stop()
}

// TestToxicProxy checks each toxic against a real redis-server through
// the proxy: a PING through latency takes at least the latency less its
// jitter, one through a blackhole or resets fails, and after heal a fresh
// connection answers again. It starts no timerd, so it runs without
// TIMERD_CHAOS.
func TestToxicProxy(t *testing.T) {
	srv := redistest.Start(t)
	p := startToxicProxy(t, "redis", srv.Addr())
	tests := []struct {
		name   string
		poison func() error
		// minRTT is a lower bound on a PING's round trip while poisoned;
		// fails says the PING must fail.
		minRTT time.Duration
		fails  bool
	}{
		{name: "none", poison: func() error { return nil }},
		{name: "latency", poison: func() error { return p.latency(150*time.Millisecond, 20*time.Millisecond) }, minRTT: 2 * 130 * time.Millisecond},
		{name: "blackhole", poison: p.blackhole, fails: true},
		{name: "reset_peer", poison: func() error { return p.resetPeer(0) }, fails: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// One client per case and no retries: every PING is one
			// attempt on a connection opened while the toxic is on.
			c := redis.NewClient(&redis.Options{Addr: p.Addr(), MaxRetries: -1, DialTimeout: time.Second,
				ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
			defer c.Close()
			if err := tc.poison(); err != nil {
				t.Fatal(err)
			}
			began := time.Now()
			err := c.Ping(context.Background()).Err()
			rtt := time.Since(began)
			t.Logf("PING through %s: %v after %v", tc.name, err, rtt.Round(time.Millisecond))
			switch {
			case tc.fails && err == nil:
				t.Errorf("PING through %s answered", tc.name)
			case tc.fails && !isNetErr(err):
				t.Errorf("PING through %s: %v, want a timeout or a reset", tc.name, err)
			case !tc.fails && err != nil:
				t.Errorf("PING through %s: %v", tc.name, err)
			case rtt < tc.minRTT:
				t.Errorf("PING through %s took %v, less than the toxic's %v", tc.name, rtt, tc.minRTT)
			}
			if err := p.heal(); err != nil {
				t.Fatal(err)
			}
			fresh := redis.NewClient(&redis.Options{Addr: p.Addr(), MaxRetries: -1})
			defer fresh.Close()
			if err := fresh.Ping(context.Background()).Err(); err != nil {
				t.Errorf("PING after heal: %v", err)
			}
		})
	}
	p.close()
	p.close() // twice is fine
	if err := p.blackhole(); !errors.Is(err, errToxicProxyClosed) {
		t.Errorf("blackhole after close: %v, want %v", err, errToxicProxyClosed)
	}
}

// isNetErr reports whether err is a network failure: a timeout, a reset
// or a connection closed under the client.
func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}
