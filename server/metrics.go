package server

import (
	"strconv"
	"sync"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/timerd/timerd/shard"
	"github.com/timerd/timerd/store"
)

// otherNamespace labels the series of namespaces past
// Config.MetricNamespaces. No namespace can be named so (parentheses are
// not allowed in one), so a tenant's series never mix with the overflow.
const otherNamespace = "(other)"

// metrics is the node's Prometheus instrumentation, in its own registry.
// Its methods may be called concurrently; the per-event ones (dispatched,
// ignoredAcks, scheduled, Acked, DeadLettered) are called on hot paths,
// some under a shard's lock, and do not block.
type metrics struct {
	scheduled, fired, redelivered, acked, dead *prometheus.CounterVec
	// lateness and wait split the first attempts: those dispatched when
	// they came due, and those that waited for a subscriber first.
	lateness, wait                          *prometheus.HistogramVec
	subscribers                             *prometheus.GaugeVec
	commitSeconds, commitOps, commitBatches prometheus.Histogram
	commitRetries, commitGivenUp            prometheus.Counter
	// acksNotHeld and acksNotSent count acks ignored because the stream
	// did not hold the delivery, or held it but had not sent it yet.
	acksNotHeld, acksNotSent prometheus.Counter
	// shardsAcquired, shardsReleased and shardsLost count the moves of
	// shards onto and off this node; shardLoad and shardTakeover time
	// them: the load alone, and from being told to hold a shard until
	// serving it (the previous owner's release or lapse included).
	shardsAcquired, shardsReleased, shardsLost prometheus.Counter
	shardLoad, shardTakeover, shardRelease     prometheus.Histogram
	// limited counts Schedule items refused by a namespace limit, by
	// namespace and limit (pending, rate); streamsRefused the Subscribe
	// streams refused by Limits.MaxSubscribeStreams.
	limited        *prometheus.CounterVec
	streamsRefused prometheus.Counter
	// paced counts, by namespace, the shards' topics held back by their
	// namespace's delivery rate.
	paced *prometheus.CounterVec
	// badCalls counts the calls refused as malformed, unauthenticated or
	// forbidden, and badCallsSlowed those of them the tarpit answered
	// late.
	badCalls, badCallsSlowed prometheus.Counter
	// forwarded counts the items and requests this node sent on to the
	// shards' owners.
	forwardedItems, forwardedCalls *prometheus.CounterVec
	// relaysOpen counts the relay streams open to peers, and relaysOpened
	// those ever opened; relayedDeliveries, relayedAcks and
	// relayedReleases count what came and went on them.
	relaysOpen                                                    prometheus.Gauge
	relaysOpened, relayedDeliveries, relayedAcks, relayedReleases prometheus.Counter
	// peerRelaysEnded counts the relay streams peers opened here that
	// this node ended because the peer left its membership view.
	peerRelaysEnded prometheus.Counter
	// grpc counts the node's gRPC calls and messages and times them, by
	// service, method and code; its interceptors go on the gRPC server.
	grpc *grpcprom.ServerMetrics

	// maxNS caps the namespaces that get series of their own: the label
	// comes from clients. Every namespace-labelled metric is reached
	// through ns, which applies the cap.
	maxNS int
	byNS  sync.Map // namespace -> *nsMetrics, at most maxNS entries

	// mu serializes additions to byNS.
	mu    sync.Mutex
	count int        // entries in byNS
	other *nsMetrics // the series of namespaces past maxNS, once needed
}

// nsMetrics is the series of one namespace, resolved once.
type nsMetrics struct {
	scheduled, fired, redelivered, acked, dead prometheus.Counter
	lateness, wait                             prometheus.Observer
	subscribers                                prometheus.Gauge
	limitedPending, limitedRate                prometheus.Counter
	paced                                      prometheus.Counter
}

// newMetrics registers the node's metrics in reg. stats reads the loaded
// shards' counts and queue the group commit's, at scrape time.
func newMetrics(reg *prometheus.Registry, maxNS int, stats func() []shardStats, queue func() store.QueueStats) *metrics {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "timerd", Name: name, Help: help}, []string{"namespace"})
	}
	m := &metrics{
		scheduled:   counter("timers_scheduled_total", "Timers accepted by Schedule (idempotent retries included)."),
		fired:       counter("timers_fired_total", "First delivery attempts of timer occurrences, counted when sent."),
		redelivered: counter("timers_redelivered_total", "Delivery attempts after the first, after an ack timeout or a closed stream, counted when sent."),
		acked:       counter("timers_acked_total", "Occurrences ended by an ack."),
		dead:        counter("timers_dead_lettered_total", "Timers that became dead letters."),
		lateness: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "timerd", Name: "fire_lateness_seconds",
			Help:    "Fired time minus due time of first delivery attempts a subscriber could take when they came due (not those that waited for one: see timerd_fire_wait_seconds).",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"namespace"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "timerd", Name: "fire_wait_seconds",
			Help:    "Fired time minus due time of first delivery attempts that came due while no subscriber of their topic could take them (none connected, or none with credit), and waited for one.",
			Buckets: []float64{.01, .1, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600},
		}, []string{"namespace"}),
		subscribers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "timerd", Name: "subscribers", Help: "Subscribe streams connected.",
		}, []string{"namespace"}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "timerd", Name: "store_commit_seconds",
			Help:    "Duration of group commit cycles, from start to durable, retries included.",
			Buckets: prometheus.ExponentialBuckets(.0001, 2, 18),
		}),
		commitOps: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "timerd", Name: "store_commit_ops",
			Help:    "Writes per group commit cycle.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 16),
		}),
		commitBatches: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "timerd", Name: "store_commit_shards",
			Help:    "Shard batches per group commit cycle.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		commitRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "store_commit_retries_total",
			Help: "Failed store round trips of group commits, retried.",
		}),
		commitGivenUp: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "store_commit_given_up_total",
			Help: "Group commit cycles given up after the store failed for GiveUpAfter; their shards stopped to reload.",
		}),
		shardsAcquired: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "shards_acquired_total",
			Help: "Shards this node acquired and loaded (at start, on a join, a leave or a peer's death).",
		}),
		shardsReleased: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "shards_released_total",
			Help: "Shards this node flushed and released (handed over, or at shutdown).",
		}),
		shardsLost: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "shards_lost_total",
			Help: "Shards that stopped on their own (lease lost, write fenced or given up) and were reopened.",
		}),
		shardLoad: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "timerd", Name: "shard_load_seconds",
			Help:    "Time to acquire a shard's lease and load its timers.",
			Buckets: prometheus.ExponentialBuckets(.001, 2, 16),
		}),
		shardTakeover: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "timerd", Name: "shard_takeover_seconds",
			Help:    "Time from being told to hold a shard until serving it: waiting for the previous owner's release or lapse, then the load.",
			Buckets: prometheus.ExponentialBuckets(.001, 2, 16),
		}),
		shardRelease: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "timerd", Name: "shard_release_seconds",
			Help:    "Time to hand a shard over: flush its writes, stop firing, release its lease.",
			Buckets: prometheus.ExponentialBuckets(.001, 2, 16),
		}),
		forwardedItems: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "timerd", Name: "forwarded_items_total",
			Help: "Items of requests this node forwarded to the node that owns their shard, by method.",
		}, []string{"method"}),
		forwardedCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "timerd", Name: "forwarded_requests_total",
			Help: "Requests this node sent to peers on a caller's behalf, by method and outcome code.",
		}, []string{"method", "code"}),
		relaysOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "timerd", Name: "relays_open",
			Help: "Relay streams open to peers: one per topic with one-address subscribers here and per peer.",
		}),
		relaysOpened: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "relays_opened_total",
			Help: "Relay streams opened to peers, those opened again after a break or to change their credit included.",
		}),
		peerRelaysEnded: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "peer_relays_ended_total",
			Help: "Relay streams that peers opened to this node, ended because the membership declared the peer dead or gone; what they held went back to be redelivered.",
		}),
		relayedDeliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "relayed_deliveries_total",
			Help: "Deliveries of the peers' shards that came on relays, for one-address subscribers here.",
		}),
		relayedAcks: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "relayed_acks_total",
			Help: "Acks of relayed deliveries sent back to the peers that own them.",
		}),
		relayedReleases: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "relayed_releases_total",
			Help: "Relayed deliveries given back to their owners: no subscriber here had room, or the one that held it ended or let it time out.",
		}),
		grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(prometheus.ExponentialBuckets(.0001, 2, 18)))),
		maxNS: maxNS,
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "timerd", Name: "limit_rejections_total",
			Help: "Schedule items refused with RESOURCE_EXHAUSTED because their namespace reached a limit, by namespace and limit: pending (--ns-max-pending) or rate (--ns-schedule-rate), or their values in --ns-limits-file.",
		}, []string{"namespace", "limit"}),
		paced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "timerd", Name: "deliveries_paced_total",
			Help: "Times a shard's deliveries of a namespace's topic were held back because the namespace reached its delivery rate on this node (--ns-deliver-rate, or deliver_rate in --ns-limits-file), by namespace: they wait in order and go out as the rate allows.",
		}, []string{"namespace"}),
		badCalls: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "bad_calls_total",
			Help: "Calls refused as malformed, unauthenticated or forbidden (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED, or every item of a batch so), counted when --bad-call-rate is on.",
		}),
		badCallsSlowed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "bad_calls_slowed_total",
			Help: "Bad calls answered late because their client address made more than --bad-call-burst of them at over --bad-call-rate a second.",
		}),
		streamsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "timerd", Name: "subscribe_streams_refused_total",
			Help: "Subscribe streams refused with RESOURCE_EXHAUSTED because the node served --max-subscribe-streams.",
		}),
	}
	ignored := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "timerd", Name: "acks_ignored_total",
		Help: "Acked delivery ids a stream may not acknowledge, by reason: not_held (another stream's, another namespace's, expired, repeated or unknown), not_sent (held but not sent yet).",
	}, []string{"reason"})
	m.acksNotHeld = ignored.WithLabelValues("not_held")
	m.acksNotSent = ignored.WithLabelValues("not_sent")
	reg.MustRegister(m.scheduled, m.fired, m.redelivered, m.acked, m.dead, m.lateness, m.wait, m.subscribers,
		m.commitSeconds, m.commitOps, m.commitBatches, m.commitRetries, m.commitGivenUp, ignored,
		m.shardsAcquired, m.shardsReleased, m.shardsLost, m.shardLoad, m.shardTakeover, m.shardRelease,
		m.forwardedItems, m.forwardedCalls, m.grpc, m.limited, m.paced, m.streamsRefused, m.badCalls, m.badCallsSlowed,
		m.relaysOpen, m.relaysOpened, m.relayedDeliveries, m.relayedAcks, m.relayedReleases, m.peerRelaysEnded,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "timerd", Name: "store_commit_queue_ops",
			Help: "Writes the group commit holds, queued or in a round trip not yet finished.",
		}, func() float64 { return float64(queue().Ops) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "timerd", Name: "store_commit_refused_total",
			Help: "Calls refused at once because the group commit's queue was full (RESOURCE_EXHAUSTED).",
		}, func() float64 { return float64(queue().Refused) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "timerd", Name: "store_commit_fenced_total",
			Help: "Shard batches of the group commit the store refused because the shard's epoch had moved on: writes of an owner that had lost the shard (paused, cut off) and not yet learnt it. The writes changed nothing; the shard stopped.",
		}, func() float64 { return float64(queue().Fenced) }),
		shardCollector{stats},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ns returns the series of namespace: its own among the first maxNS
// namespaces seen since the start, the shared otherNamespace ones after.
func (m *metrics) ns(namespace string) *nsMetrics {
	if v, ok := m.byNS.Load(namespace); ok {
		return v.(*nsMetrics)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.byNS.Load(namespace); ok {
		return v.(*nsMetrics)
	}
	if m.count >= m.maxNS {
		if m.other == nil {
			m.other = m.series(otherNamespace)
		}
		return m.other
	}
	n := m.series(namespace)
	m.byNS.Store(namespace, n)
	m.count++
	return n
}

func (m *metrics) series(label string) *nsMetrics {
	return &nsMetrics{
		scheduled:      m.scheduled.WithLabelValues(label),
		fired:          m.fired.WithLabelValues(label),
		redelivered:    m.redelivered.WithLabelValues(label),
		acked:          m.acked.WithLabelValues(label),
		dead:           m.dead.WithLabelValues(label),
		lateness:       m.lateness.WithLabelValues(label),
		wait:           m.wait.WithLabelValues(label),
		subscribers:    m.subscribers.WithLabelValues(label),
		limitedPending: m.limited.WithLabelValues(label, "pending"),
		limitedRate:    m.limited.WithLabelValues(label, "rate"),
		paced:          m.paced.WithLabelValues(label),
	}
}

// scheduledCounter counts a response's scheduled timers by runs of one
// namespace (a batch usually has one), so the metric is looked up and
// added to once per run, not once per timer.
type scheduledCounter struct {
	m  *metrics
	ns string
	n  int
}

func (c *scheduledCounter) add(namespace string) {
	if namespace != c.ns {
		c.flush()
		c.ns = namespace
	}
	c.n++
}

func (c *scheduledCounter) flush() {
	if c.n > 0 {
		c.m.ns(c.ns).scheduled.Add(float64(c.n))
		c.n = 0
	}
}

// ignoredAcks counts acks a stream was not allowed to make.
func (m *metrics) ignoredAcks(notHeld, notSent int) {
	if notHeld > 0 {
		m.acksNotHeld.Add(float64(notHeld))
	}
	if notSent > 0 {
		m.acksNotSent.Add(float64(notSent))
	}
}

// dispatched counts a delivery sent to a subscriber. The lateness of a
// first attempt goes to one of two histograms: the time it waited for a
// subscriber is the consumers' doing, and would hide how late the node
// fires.
func (m *metrics) dispatched(d *shard.Delivery) {
	n := m.ns(d.Namespace)
	if d.Attempt > 1 {
		n.redelivered.Inc()
		return
	}
	n.fired.Inc()
	late := d.Fired.Sub(d.Due).Seconds()
	if d.Waited {
		n.wait.Observe(late)
		return
	}
	n.lateness.Observe(late)
}

// Acked implements shard.Events.
func (m *metrics) Acked(namespace string) { m.ns(namespace).acked.Inc() }

// DeadLettered implements shard.Events.
func (m *metrics) DeadLettered(namespace string) { m.ns(namespace).dead.Inc() }

// Acquired implements node.Observer.
func (m *metrics) Acquired(_ uint32, _ uint64, loaded, waited time.Duration) {
	m.shardsAcquired.Inc()
	m.shardLoad.Observe(loaded.Seconds())
	m.shardTakeover.Observe(waited.Seconds())
}

// Released implements node.Observer.
func (m *metrics) Released(_ uint32, _ uint64, took time.Duration) {
	m.shardsReleased.Inc()
	m.shardRelease.Observe(took.Seconds())
}

// Lost implements node.Observer.
func (m *metrics) Lost(uint32, error) { m.shardsLost.Inc() }

// commit records a group commit cycle (store.CommitterConfig.OnCommit).
func (m *metrics) commit(cs store.CommitStats) {
	if cs.Err != nil {
		m.commitGivenUp.Inc()
		m.commitRetries.Add(float64(cs.Retries))
		return
	}
	m.commitSeconds.Observe(cs.Latency.Seconds())
	m.commitOps.Observe(float64(cs.Ops))
	m.commitBatches.Observe(float64(cs.Batches))
	m.commitRetries.Add(float64(cs.Retries))
}

// commitQueue reads the group commit's queue, or nothing before Start has
// made it. Scrapes come through the HTTP server, which Start begins after
// making the group commit.
func (s *Server) commitQueue() store.QueueStats {
	if com := s.node.Committer(); com != nil {
		return com.Queue()
	}
	return store.QueueStats{}
}

// shardStats is one loaded shard's counts, read at scrape time.
type shardStats struct {
	id    uint32
	stats shard.Stats
}

// shardStats reads the counts of every shard this node holds.
func (s *Server) shardStats() []shardStats {
	var out []shardStats
	for i := range s.node.Shards() {
		if sh := s.node.Shard(i); sh != nil {
			out = append(out, shardStats{i, sh.Stats()})
		}
	}
	return out
}

// shardCollector reports the timers of each loaded shard by state, their
// sums over the node, and how many shards are loaded, when scraped.
type shardCollector struct{ stats func() []shardStats }

var (
	shardTimersDesc = prometheus.NewDesc("timerd_shard_timers",
		"Timers held by a loaded shard, by state.", []string{"shard", "state"}, nil)
	timersDesc = prometheus.NewDesc("timerd_timers",
		"Timers held by this node's loaded shards, by state: the sums of timerd_shard_timers.", []string{"state"}, nil)
	shardsLoadedDesc = prometheus.NewDesc("timerd_shards_loaded",
		"Shards this node holds and has loaded.", nil, nil)
)

func (c shardCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- shardTimersDesc
	ch <- timersDesc
	ch <- shardsLoadedDesc
}

func (c shardCollector) Collect(ch chan<- prometheus.Metric) {
	all := c.stats()
	var pending, inFlight, dead float64
	for _, st := range all {
		id := strconv.FormatUint(uint64(st.id), 10)
		p := float64(st.stats.Timers - st.stats.InFlight - st.stats.Dead)
		f, d := float64(st.stats.InFlight), float64(st.stats.Dead)
		ch <- prometheus.MustNewConstMetric(shardTimersDesc, prometheus.GaugeValue, p, id, "pending")
		ch <- prometheus.MustNewConstMetric(shardTimersDesc, prometheus.GaugeValue, f, id, "in_flight")
		ch <- prometheus.MustNewConstMetric(shardTimersDesc, prometheus.GaugeValue, d, id, "dead")
		pending, inFlight, dead = pending+p, inFlight+f, dead+d
	}
	ch <- prometheus.MustNewConstMetric(timersDesc, prometheus.GaugeValue, pending, "pending")
	ch <- prometheus.MustNewConstMetric(timersDesc, prometheus.GaugeValue, inFlight, "in_flight")
	ch <- prometheus.MustNewConstMetric(timersDesc, prometheus.GaugeValue, dead, "dead")
	ch <- prometheus.MustNewConstMetric(shardsLoadedDesc, prometheus.GaugeValue, float64(len(all)))
}
