package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/shard"
	"github.com/timerd/timerd/store"
)

// limitsFile writes body as a namespace limits file in dir and returns
// its path; writing again replaces it.
func limitsFile(t testing.TB, dir, body string) string {
	t.Helper()
	path := filepath.Join(dir, "ns-limits.json")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// admitted schedules n timers of ns due in an hour and returns how many
// were admitted; every other item must be RESOURCE_EXHAUSTED with a
// retry delay.
func (e *env) admitted(ns, prefix string, n int) int {
	e.t.Helper()
	got, res := e.scheduleCodes(batch(ns, prefix, n, time.Hour)...)
	ok := 0
	for i, c := range got {
		switch {
		case c == codes.OK:
			ok++
		case c != codes.ResourceExhausted || res[i].RetryDelay.AsDuration() <= 0 || !strings.Contains(res[i].Message, fmt.Sprintf("namespace %q", ns)):
			e.t.Fatalf("%s/%s: %v %q, retry delay %v; want OK or RESOURCE_EXHAUSTED naming the namespace, with a retry delay",
				ns, res[i].Id, c, res[i].Message, res[i].RetryDelay.AsDuration())
		}
	}
	return ok
}

// TestNamespaceLimitsFile: the namespaces the file names get their own
// limits, each field it omits and every namespace it does not name get
// the flags', and the effective limits are in /metrics.
func TestNamespaceLimitsFile(t *testing.T) {
	path := limitsFile(t, t.TempDir(), `{"namespaces": {
		"big":   {"max_pending": 8},
		"small": {"max_pending": 2},
		"free":  {"max_pending": 0},
		"rated": {"schedule_rate": 10, "schedule_burst": 3},
		"rated.default-burst": {"schedule_rate": 4},
		"rate-free": {"max_pending": 0, "schedule_rate": 0},
		"empty": {}
	}}`)
	e := start(t, "", func(c *Config) {
		c.Limits.MaxPending = 5
		c.Limits.ScheduleRate, c.Limits.ScheduleBurst = 100, 7
		c.NamespaceLimitsFile = path
	})
	e.setLimitsNow(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) // no refill while the test runs
	for _, tc := range []struct {
		ns   string
		want int // of 12 sent at once
	}{
		{"big", 7},                 // its own max_pending; the flags' burst of 7
		{"small", 2},               // its own max_pending
		{"free", 7},                // no pending limit; the flags' burst
		{"rated", 3},               // its own burst; the flags' max_pending of 5
		{"rated.default-burst", 4}, // one second of its own rate
		{"rate-free", 12},          // no limit at all
		{"empty", 5},               // an empty entry: the flags'
		{"absent", 5},              // not in the file: the flags'
	} {
		t.Run(tc.ns, func(t *testing.T) {
			if got := e.admitted(tc.ns, "x", 12); got != tc.want {
				t.Fatalf("%d of 12 admitted, want %d", got, tc.want)
			}
		})
	}
	body := e.metricsText()
	for _, want := range []string{
		`timerd_namespace_limit{kind="max_pending",namespace="(default)"} 5`,
		`timerd_namespace_limit{kind="schedule_rate",namespace="(default)"} 100`,
		`timerd_namespace_limit{kind="schedule_burst",namespace="(default)"} 7`,
		`timerd_namespace_limit{kind="max_pending",namespace="big"} 8`,
		`timerd_namespace_limit{kind="schedule_burst",namespace="big"} 7`,
		`timerd_namespace_limit{kind="max_pending",namespace="free"} 0`,
		`timerd_namespace_limit{kind="schedule_rate",namespace="rated"} 10`,
		`timerd_namespace_limit{kind="schedule_burst",namespace="rated"} 3`,
		`timerd_namespace_limit{kind="schedule_burst",namespace="rated.default-burst"} 4`,
		`timerd_namespace_limit{kind="schedule_rate",namespace="rate-free"} 0`,
		`timerd_limit_rejections_total{limit="pending",namespace="small"} 10`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, grepLines(body, "namespace_limit"))
		}
	}
	if strings.Contains(body, `namespace_limit{kind="max_pending",namespace="absent"}`) {
		t.Errorf("/metrics has limits of a namespace absent from the file:\n%s", grepLines(body, "namespace_limit"))
	}
}

// TestNamespaceLimitsFileReload: a rewritten file applies from the next
// Schedule on, after Reload (SIGHUP) or on its own once the change is
// seen; a limit lowered below what a namespace holds touches none of its
// timers and refuses new ones; a broken rewrite keeps the previous
// limits; a namespace that scheduled freely and is given a rate starts
// from a full burst.
func TestNamespaceLimitsFileReload(t *testing.T) {
	dir := t.TempDir()
	path := limitsFile(t, dir, `{"namespaces": {"a": {"max_pending": 3}}}`)
	e := start(t, "", func(c *Config) { c.NamespaceLimitsFile = path })
	e.setLimitsNow(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	steps := []struct {
		name, file string
		reload     bool // call Reload; otherwise wait for the change to be seen
		ns         string
		send, want int
	}{
		{"initial limit", "", false, "a", 5, 3},
		{"raised", `{"namespaces": {"a": {"max_pending": 6}}}`, true, "a", 5, 3},
		{"lowered below what it holds", `{"namespaces": {"a": {"max_pending": 2}}}`, true, "a", 5, 0},
		{"broken rewrite keeps the lowered limit", `{"namespaces": {"a": {"max_pending": -1}}}`, true, "a", 5, 0},
		{"no rate yet", "", false, "r", 20, 20},
		{"rate given: a full burst", `{"namespaces": {"a": {"max_pending": 2}, "r": {"schedule_rate": 1, "schedule_burst": 4}}}`, true, "r", 10, 4},
		{"seen without Reload", `{"namespaces": {"a": {"max_pending": 10}, "r": {"schedule_rate": 1, "schedule_burst": 4}}}`, false, "a", 5, 4},
	}
	for i, s := range steps {
		if s.file != "" {
			limitsFile(t, dir, s.file)
			switch {
			case s.reload && strings.Contains(s.file, "-1"):
				err := e.srv.Reload()
				if !errors.Is(err, ErrInvalidLimitsFile) || !strings.Contains(err.Error(), `namespaces["a"].max_pending`) {
					t.Fatalf("%s: Reload = %v, want an error naming namespaces[\"a\"].max_pending", s.name, err)
				}
			case s.reload:
				if err := e.srv.Reload(); err != nil {
					t.Fatalf("%s: Reload: %v", s.name, err)
				}
			default:
				waitFor(t, "the rewritten file to be seen", func() bool {
					return e.srv.limits.overrides().limit("a", e.cfg.Limits).maxPending == 10
				})
			}
		}
		if got := e.admitted(s.ns, fmt.Sprintf("s%d-", i), s.send); got != s.want {
			t.Fatalf("%s: %d of %d admitted, want %d", s.name, got, s.send, s.want)
		}
	}
	// Lowering the limit touched nothing stored: a holds the 3 + 3 + 4
	// admitted, every one of them still there.
	if n := e.srv.limits.pending("a"); n != 10 {
		t.Fatalf("namespace a counts %d timers, want 10", n)
	}
	for _, id := range []string{"s0-0", "s0-2", "s1-0", "s1-2", "s6-0", "s6-3"} {
		if _, err := e.timers.Get(e.ctx(), &pb.GetRequest{Namespace: "a", Id: id}); err != nil {
			t.Fatalf("Get a/%s: %v", id, err)
		}
	}
}

// TestNamespaceLimitsFileValidate: every fault of a file is refused with
// an error naming the namespace and the field at fault, at start and on
// reload alike.
func TestNamespaceLimitsFileValidate(t *testing.T) {
	nan, inf, one := math.NaN(), math.Inf(1), 1.0
	neg := -1
	for _, tc := range []struct {
		name string
		body string        // the file, or
		set  *nsLimitEntry // an entry of namespace "a" as decoded
		want string        // "" for valid
	}{
		{"empty object", `{}`, nil, ""},
		{"no namespaces", `{"namespaces": {}}`, nil, ""},
		{"null namespaces", `{"namespaces": null}`, nil, ""},
		{"every field", `{"namespaces": {"a": {"max_pending": 10, "schedule_rate": 0.5, "schedule_burst": 3}}}`, nil, ""},
		{"empty entry", `{"namespaces": {"a": {}}}`, nil, ""},
		{"rate 0 and burst 0", `{"namespaces": {"a": {"schedule_rate": 0, "schedule_burst": 0}}}`, nil, ""},
		{"empty file", ``, nil, "EOF"},
		{"not JSON", `namespaces: {}`, nil, "invalid character"},
		{"data after", `{} {}`, nil, "data after"},
		{"unknown top-level field", `{"namespace": {}}`, nil, `unknown field "namespace"`},
		{"namespaces an array", `{"namespaces": [{"a": {}}]}`, nil, "namespaces must be an object"},
		{"invalid namespace", `{"namespaces": {"a b": {}}}`, nil, `namespaces["a b"]: invalid namespace`},
		{"empty namespace", `{"namespaces": {"": {}}}`, nil, `namespaces[""]: invalid namespace`},
		{"the default label", `{"namespaces": {"(default)": {}}}`, nil, `namespaces["(default)"]: invalid namespace`},
		{"namespace too long", `{"namespaces": {"` + strings.Repeat("n", 65) + `": {}}}`, nil, `invalid namespace`},
		{"namespace twice", `{"namespaces": {"a": {"max_pending": 1}, "a": {"max_pending": 100}}}`, nil, `namespaces["a"] is given twice`},
		{"entry not an object", `{"namespaces": {"a": 5}}`, nil, `namespaces["a"]: json: cannot unmarshal number`},
		{"unknown field", `{"namespaces": {"a": {"max_pendng": 5}}}`, nil, `namespaces["a"]: json: unknown field "max_pendng"`},
		{"negative max_pending", `{"namespaces": {"ok": {}, "a": {"max_pending": -1}}}`, nil, `namespaces["a"].max_pending must be >= 0`},
		{"fractional max_pending", `{"namespaces": {"a": {"max_pending": 1.5}}}`, nil, `namespaces["a"]: json: cannot unmarshal number 1.5 into Go struct field nsLimitEntry.max_pending`},
		{"max_pending too large", `{"namespaces": {"a": {"max_pending": 1e30}}}`, nil, `nsLimitEntry.max_pending`},
		{"negative schedule_rate", `{"namespaces": {"a": {"schedule_rate": -0.5}}}`, nil, `namespaces["a"].schedule_rate must be a finite number >= 0`},
		{"schedule_rate a string", `{"namespaces": {"a": {"schedule_rate": "10"}}}`, nil, `nsLimitEntry.schedule_rate`},
		{"schedule_rate out of range", `{"namespaces": {"a": {"schedule_rate": 1e999}}}`, nil, `nsLimitEntry.schedule_rate`},
		{"NaN schedule_rate", "", &nsLimitEntry{ScheduleRate: &nan}, `namespaces["a"].schedule_rate must be a finite number`},
		{"infinite schedule_rate", "", &nsLimitEntry{ScheduleRate: &inf}, `namespaces["a"].schedule_rate must be a finite number`},
		{"negative schedule_burst", `{"namespaces": {"a": {"schedule_rate": 1, "schedule_burst": -1}}}`, nil, `namespaces["a"].schedule_burst must be >= 0`},
		{"negative schedule_burst, decoded", "", &nsLimitEntry{ScheduleRate: &one, ScheduleBurst: &neg}, `namespaces["a"].schedule_burst must be >= 0`},
		{"schedule_burst without schedule_rate", `{"namespaces": {"a": {"schedule_burst": 5}}}`, nil, `namespaces["a"].schedule_burst needs schedule_rate in the same entry`},
		{"schedule_burst with no rate", `{"namespaces": {"a": {"schedule_rate": 0, "schedule_burst": 5}}}`, nil, `namespaces["a"].schedule_burst needs schedule_rate`},
		{"deliver fields", `{"namespaces": {"a": {"deliver_rate": 50000, "deliver_burst": 100}, "b": {"deliver_rate": 0.5}}}`, nil, ""},
		{"negative deliver_rate", `{"namespaces": {"a": {"deliver_rate": -1}}}`, nil, `namespaces["a"].deliver_rate must be a finite number >= 0`},
		{"NaN deliver_rate", "", &nsLimitEntry{DeliverRate: &nan}, `namespaces["a"].deliver_rate must be a finite number`},
		{"infinite deliver_rate", "", &nsLimitEntry{DeliverRate: &inf}, `namespaces["a"].deliver_rate must be a finite number`},
		{"deliver_rate a string", `{"namespaces": {"a": {"deliver_rate": "10"}}}`, nil, `nsLimitEntry.deliver_rate`},
		{"negative deliver_burst", `{"namespaces": {"a": {"deliver_rate": 1, "deliver_burst": -1}}}`, nil, `namespaces["a"].deliver_burst must be >= 0`},
		{"negative deliver_burst, decoded", "", &nsLimitEntry{DeliverRate: &one, DeliverBurst: &neg}, `namespaces["a"].deliver_burst must be >= 0`},
		{"deliver_burst without deliver_rate", `{"namespaces": {"a": {"deliver_burst": 5}}}`, nil, `namespaces["a"].deliver_burst needs deliver_rate in the same entry`},
		{"deliver_burst with no rate", `{"namespaces": {"a": {"deliver_rate": 0, "deliver_burst": 5}}}`, nil, `namespaces["a"].deliver_burst needs deliver_rate`},
		{"deliver_burst with the schedule_rate", `{"namespaces": {"a": {"schedule_rate": 1, "deliver_burst": 5}}}`, nil, `namespaces["a"].deliver_burst needs deliver_rate in the same entry`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.set != nil {
				err = tc.set.validate("a")
			} else {
				_, err = parseNSLimits([]byte(tc.body))
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("parse: %v", err)
			case tc.want != "" && (!errors.Is(err, ErrInvalidLimitsFile) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want an ErrInvalidLimitsFile containing %q", err, tc.want)
			}
		})
	}
	// At start, a bad file fails New with the same error, and its path.
	path := limitsFile(t, t.TempDir(), `{"namespaces": {"orders": {"schedule_burst": 5}}}`)
	cfg := LocalConfig(t.TempDir())
	cfg.NamespaceLimitsFile = path
	if _, err := New(cfg); !errors.Is(err, ErrInvalidLimitsFile) || !strings.Contains(err.Error(), `namespaces["orders"].schedule_burst`) || !strings.Contains(err.Error(), path) {
		t.Fatalf("New with a bad limits file: %v, want an error naming %s and the field", err, path)
	}
	cfg.NamespaceLimitsFile = filepath.Join(t.TempDir(), "missing.json")
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Fatalf("New with a missing limits file: %v, want an error naming it", err)
	}
}

// FuzzNamespaceLimitsFile: the decoder never panics, and what it accepts
// is valid, resolves to usable limits, and reads back the same once
// encoded again.
func FuzzNamespaceLimitsFile(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"namespaces": {"a": {"max_pending": 10, "schedule_rate": 0.5, "schedule_burst": 3}}}`,
		`{"namespaces": {"a": {}, "b.c-d_e": {"max_pending": 0}, "x": {"schedule_rate": 1e9}}}`,
		`{"namespaces": {"a": {"schedule_burst": 5}}}`,
		`{"namespaces": {"a": {"deliver_rate": 2.5, "deliver_burst": 7}, "b": {"deliver_burst": 1}}}`,
		`{"namespaces": {"a": {"max_pending": 1}, "a": {"max_pending": 2}}}`,
		`{"namespaces": null}`,
		`{"namespaces": []}`,
		`{"namespaces": {"a": {"max_pending": 9223372036854775807, "schedule_rate": 1.7976931348623157e308}}}`,
	} {
		f.Add([]byte(s))
	}
	def := Limits{MaxPending: 7, ScheduleRate: 3, ScheduleBurst: 2, DeliverRate: 1000}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := parseNSLimits(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidLimitsFile) {
				t.Fatalf("error %v does not wrap ErrInvalidLimitsFile", err)
			}
			return
		}
		for ns, e := range got {
			if err := e.validate(ns); err != nil {
				t.Fatalf("accepted an invalid entry: %v", err)
			}
			l := got.limit(ns, def)
			for _, r := range []rateLimit{l.schedule, l.deliver} {
				if l.maxPending < 0 || r.rate < 0 || r.rate > 0 && r.burst < 1 || r.rate == 0 && r.burst != 0 {
					t.Fatalf("namespace %q resolves to %+v", ns, l)
				}
			}
			for _, frac := range []float64{1, 0.5, 1.0 / 1024} {
				if p, _, _ := l.share(frac); p < 0 {
					t.Fatalf("namespace %q: a share of %v holds %d pending timers", ns, frac, p)
				}
			}
		}
		b, err := json.Marshal(map[string]any{"namespaces": map[string]nsLimitEntry(got)})
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseNSLimits(b)
		if err != nil {
			t.Fatalf("%s does not read back: %v", b, err)
		}
		if !reflect.DeepEqual(again, got) {
			t.Fatalf("read back %+v, parsed %+v", again, got)
		}
	})
}

// BenchmarkLimiterAdmit measures the namespace limits' cost per Schedule
// item at the node that serves it, for batches of 100 items of one
// namespace: with no limit (the peer: admit returns at once), with the
// flags' limits, and with a limits file of 1,000 namespaces that names
// the batch's. Limits are high enough that every item is admitted.
func BenchmarkLimiterAdmit(b *testing.B) {
	const size = 100
	dir := b.TempDir()
	var body strings.Builder
	body.WriteString(`{"namespaces": {`)
	for i := range 1000 {
		fmt.Fprintf(&body, `"ns%d": {"max_pending": 1000000000, "schedule_rate": 1e12}, `, i)
	}
	body.WriteString(`"last": {}}}`)
	path := filepath.Join(dir, "ns-limits.json")
	if err := os.WriteFile(path, []byte(body.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	specs := make([]shard.Spec, size)
	items := make([]int, size)
	for i := range specs {
		specs[i] = shard.Spec{Namespace: "ns500", ID: strconv.Itoa(i)}
		items[i] = i
	}
	local := []localPart{{part: part{items: items}}}
	out := make([]*pb.ItemResult, size)
	for _, tc := range []struct {
		name   string
		limits Limits
		file   string
	}{
		{"limits=off", DefaultLimits(), ""},
		{"limits=flags", Limits{MaxPending: 1e9, ScheduleRate: 1e12, MaxSubscribeStreams: 1}, ""},
		{"limits=file", DefaultLimits(), path},
	} {
		b.Run(tc.name, func(b *testing.B) {
			m := newMetrics(prometheus.NewRegistry(), 10, func() []shardStats { return nil }, func() store.QueueStats { return store.QueueStats{} })
			l, err := newLimiter(tc.limits, tc.file, func() (uint32, uint32) { return 64, 64 }, m, nil)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				admitted, release := l.admit(local, specs, out)
				if len(admitted) != 1 || len(admitted[0].items) != size {
					b.Fatalf("admitted %v", admitted)
				}
				release()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*size), "ns/item")
		})
	}
}
