package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/shard"
)

// LimitsReloadInterval is how often, at most, the node looks at the
// namespace limits file's modification time (1s).
const LimitsReloadInterval = time.Second

// maxLimitsFileSize bounds the namespace limits file: 16 MiB is far more
// than any real file, and keeps a wrong path from exhausting memory.
const maxLimitsFileSize = 16 << 20

// nsLimit is the namespace limits in force for one namespace across the
// cluster. 0 is no limit.
type nsLimit struct {
	maxPending int
	// schedule bounds the timers scheduled, and deliver the deliveries
	// of the namespace's due timers (see pacer).
	schedule, deliver rateLimit
}

// rateLimit is a token bucket's rate and burst across the cluster.
// Invariant: burst >= 1 when rate > 0, and 0 when rate is 0 (no limit).
type rateLimit struct {
	rate  float64 // timers per second
	burst float64 // timers
}

// Default bursts of a rate given none, in seconds' worth of the rate:
// Schedule calls come in batches, so one second's worth; deliveries are
// paced to spare the node's processors for other namespaces, which a
// burst of a second's worth at once would not, so a hundredth.
const (
	scheduleBurstSeconds = 1
	deliverBurstSeconds  = 0.01
)

// newRateLimit resolves a rate's burst: 0 stands for seconds' worth of
// the rate, at least 1.
func newRateLimit(rate float64, burst int, seconds float64) rateLimit {
	if rate <= 0 {
		return rateLimit{}
	}
	r := rateLimit{rate: rate, burst: float64(burst)}
	if burst == 0 {
		r.burst = max(1, math.Ceil(rate*seconds))
	}
	return r
}

// share returns a node's share of r, for a node that serves frac of the
// cluster's shards: the rate and burst of its bucket (0: no limit).
func (r rateLimit) share(frac float64) (rate, burst float64) {
	if r.rate > 0 {
		rate, burst = r.rate*frac, max(1, r.burst*frac)
	}
	return rate, burst
}

// admitsAll reports whether l limits nothing at Schedule.
func (l nsLimit) admitsAll() bool { return l.maxPending == 0 && l.schedule.rate == 0 }

// nsLimitEntry is one namespace's entry in the file, as written: a nil
// field was omitted.
type nsLimitEntry struct {
	MaxPending    *int     `json:"max_pending"`
	ScheduleRate  *float64 `json:"schedule_rate"`
	ScheduleBurst *int     `json:"schedule_burst"`
	DeliverRate   *float64 `json:"deliver_rate"`
	DeliverBurst  *int     `json:"deliver_burst"`
}

// The namespace limits file (Config.NamespaceLimitsFile, --ns-limits-file)
// gives chosen namespaces limits of their own in place of those of
// Limits:
//
//	{"namespaces": {
//	  "orders":  {"max_pending": 5000000, "schedule_rate": 20000, "schedule_burst": 40000},
//	  "reports": {"max_pending": 0, "deliver_rate": 50000},
//	  "noisy":   {"max_pending": 1000, "schedule_rate": 5}
//	}}
//
// Each field means what its flag means (--ns-max-pending,
// --ns-schedule-rate, --ns-schedule-burst, --ns-deliver-rate,
// --ns-deliver-burst), for that namespace alone, across the cluster:
//
//   - A namespace absent from the file has the flags' limits.
//   - max_pending omitted: the flag's; 0: no limit; N: N timers.
//   - schedule_rate omitted: the flags' rate and burst, both; 0: no limit;
//     R: R timers per second.
//   - schedule_burst goes with the schedule_rate of its entry and needs
//     it: omitted or 0, one second's worth of that rate; B: B timers.
//   - deliver_rate and deliver_burst are the same for deliveries, but a
//     deliver_burst omitted or 0 is a hundredth of a second's worth.
//
// Unknown fields, a namespace named twice, an invalid namespace name,
// negative numbers and a burst without a rate are errors that name the
// namespace and the field. The file is read again when it changes
// (looked at at most once per LimitsReloadInterval, on a Schedule, a
// scrape or a delivery) and on Server.Reload; a version that fails keeps
// the previous one, and the error is logged.
//
// An nsLimits is such a file parsed: the entries it gives, by namespace.
// It is immutable once parsed.
type nsLimits map[string]nsLimitEntry

// limit returns the limits of namespace: its entry's, with what the entry
// omits taken from def (the flags').
func (f nsLimits) limit(namespace string, def Limits) nsLimit {
	e, ok := f[namespace]
	if !ok {
		return def.nsLimit()
	}
	l := def.nsLimit()
	if e.MaxPending != nil {
		l.maxPending = *e.MaxPending
	}
	if e.ScheduleRate != nil {
		l.schedule = newRateLimit(*e.ScheduleRate, deref(e.ScheduleBurst), scheduleBurstSeconds)
	}
	if e.DeliverRate != nil {
		l.deliver = newRateLimit(*e.DeliverRate, deref(e.DeliverBurst), deliverBurstSeconds)
	}
	return l
}

// deref returns *p, or 0 for a nil p (a field omitted).
func deref[T int | float64](p *T) T {
	if p == nil {
		return 0
	}
	return *p
}

// validate reports the first invalid field of the entry of namespace.
func (e nsLimitEntry) validate(namespace string) error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: namespaces[%q].%s %s", ErrInvalidLimitsFile, namespace, field, fmt.Sprintf(format, args...))
	}
	if err := shard.ValidNamespace(namespace); err != nil {
		return fmt.Errorf("%w: namespaces[%q]: %w", ErrInvalidLimitsFile, namespace, err)
	}
	if e.ScheduleBurst != nil && e.ScheduleRate == nil {
		return bad("schedule_burst", "needs schedule_rate in the same entry")
	}
	if e.DeliverBurst != nil && e.DeliverRate == nil {
		return bad("deliver_burst", "needs deliver_rate in the same entry")
	}
	written := Limits{
		MaxPending:   deref(e.MaxPending),
		ScheduleRate: deref(e.ScheduleRate), ScheduleBurst: deref(e.ScheduleBurst),
		DeliverRate: deref(e.DeliverRate), DeliverBurst: deref(e.DeliverBurst),
	}
	return written.checkNS(fileLimitFields, bad)
}

// rateFields names a rate's fields where they are checked.
type rateFields struct{ rate, burst string }

// limitFields names the namespace limits' fields where they are checked.
type limitFields struct {
	maxPending        string
	schedule, deliver rateFields
}

var (
	configLimitFields = limitFields{
		"Limits.MaxPending",
		rateFields{"Limits.ScheduleRate", "Limits.ScheduleBurst"},
		rateFields{"Limits.DeliverRate", "Limits.DeliverBurst"},
	}
	fileLimitFields = limitFields{
		"max_pending",
		rateFields{"schedule_rate", "schedule_burst"},
		rateFields{"deliver_rate", "deliver_burst"},
	}
)

// checkNS reports the first invalid namespace limit of l through bad,
// naming it as names says: the flags' limits and a limits file's entry
// are checked alike.
func (l Limits) checkNS(names limitFields, bad func(field, format string, args ...any) error) error {
	if l.MaxPending < 0 {
		return bad(names.maxPending, "must be >= 0 (0: no limit), got %d", l.MaxPending)
	}
	if err := checkRate(l.ScheduleRate, l.ScheduleBurst, names.schedule, bad); err != nil {
		return err
	}
	return checkRate(l.DeliverRate, l.DeliverBurst, names.deliver, bad)
}

// checkRate reports an invalid rate or burst through bad, naming it as
// names says.
func checkRate(rate float64, burst int, names rateFields, bad func(field, format string, args ...any) error) error {
	switch {
	case rate < 0 || math.IsNaN(rate) || math.IsInf(rate, 0):
		return bad(names.rate, "must be a finite number >= 0 (0: no limit), got %v", rate)
	case burst < 0:
		return bad(names.burst, "must be >= 0 (0: %s), got %d", names.rate, burst)
	case burst > 0 && rate == 0:
		return bad(names.burst, "needs %s", names.rate)
	}
	return nil
}

// parseNSLimits parses a namespace limits file. Errors wrap
// ErrInvalidLimitsFile and name the namespace and field at fault; of
// several faults, that of the first namespace in the file.
func parseNSLimits(data []byte) (nsLimits, error) {
	if len(data) > maxLimitsFileSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalidLimitsFile, maxLimitsFileSize)
	}
	var top struct {
		Namespaces json.RawMessage `json:"namespaces"`
	}
	if err := decodeStrict(data, &top); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidLimitsFile, err)
	}
	f := nsLimits{}
	if len(top.Namespaces) == 0 || string(top.Namespaces) == "null" {
		return f, nil
	}
	// The object is walked key by key, since decoding it into a map
	// would keep the last of two entries of one namespace silently.
	dec := json.NewDecoder(bytes.NewReader(top.Namespaces))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("%w: namespaces must be an object of namespace: limits", ErrInvalidLimitsFile)
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: namespaces: %w", ErrInvalidLimitsFile, err)
		}
		ns := t.(string) // an object's keys are strings
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%w: namespaces[%q]: %w", ErrInvalidLimitsFile, ns, err)
		}
		if _, dup := f[ns]; dup {
			return nil, fmt.Errorf("%w: namespaces[%q] is given twice", ErrInvalidLimitsFile, ns)
		}
		var e nsLimitEntry
		if err := decodeStrict(raw, &e); err != nil {
			return nil, fmt.Errorf("%w: namespaces[%q]: %w", ErrInvalidLimitsFile, ns, err)
		}
		if err := e.validate(ns); err != nil {
			return nil, err
		}
		f[ns] = e
	}
	return f, nil
}

// decodeStrict decodes one JSON value into v, refusing unknown fields and
// anything after the value.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the top-level value")
	}
	return nil
}

// readNSLimits reads and parses the namespace limits file at path.
func readNSLimits(path string) (nsLimits, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("namespace limits: %w", err)
	}
	f, err := parseNSLimits(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// defaultLimitsLabel is the namespace label of the flags' limits in
// timerd_namespace_limit: what every namespace absent from the file has.
// No namespace can be named so.
const defaultLimitsLabel = "(default)"

var nsLimitDesc = prometheus.NewDesc("timerd_namespace_limit",
	"Namespace limits in force across the cluster, by namespace and kind (max_pending timers, schedule_rate and deliver_rate timers/s, schedule_burst and deliver_burst timers); 0 is no limit. Namespace \"(default)\" has the flags' limits, which every namespace absent from --ns-limits-file has.",
	[]string{"namespace", "kind"}, nil)

// limitsCollector reports the namespace limits in force when scraped:
// the flags' and those of each namespace in the limits file.
type limitsCollector struct{ l *limiter }

func (c limitsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- nsLimitDesc }

func (c limitsCollector) Collect(ch chan<- prometheus.Metric) {
	emit := func(ns string, l nsLimit) {
		ch <- prometheus.MustNewConstMetric(nsLimitDesc, prometheus.GaugeValue, float64(l.maxPending), ns, "max_pending")
		ch <- prometheus.MustNewConstMetric(nsLimitDesc, prometheus.GaugeValue, l.schedule.rate, ns, "schedule_rate")
		ch <- prometheus.MustNewConstMetric(nsLimitDesc, prometheus.GaugeValue, l.schedule.burst, ns, "schedule_burst")
		ch <- prometheus.MustNewConstMetric(nsLimitDesc, prometheus.GaugeValue, l.deliver.rate, ns, "deliver_rate")
		ch <- prometheus.MustNewConstMetric(nsLimitDesc, prometheus.GaugeValue, l.deliver.burst, ns, "deliver_burst")
	}
	emit(defaultLimitsLabel, c.l.cfg.nsLimit())
	f := c.l.overrides()
	names := make([]string, 0, len(f))
	for ns := range f {
		names = append(names, ns)
	}
	slices.Sort(names)
	for _, ns := range names {
		emit(ns, f.limit(ns, c.l.cfg))
	}
}

// shareOf returns ⌈n × frac⌉, a node's share of a limit of n, without
// overflowing for an n near the largest int.
func shareOf(n int, frac float64) int {
	s := math.Ceil(float64(n) * frac)
	if s >= math.MaxInt64/2 {
		return math.MaxInt64 / 2
	}
	return int(s)
}
