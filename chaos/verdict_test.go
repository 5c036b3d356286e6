package chaos

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// maxExamples bounds the failures a verdict names.
const maxExamples = 10

// verdict is the outcome of one scenario run, as printed and as JSON.
//
// The checks, each of which must be 0: an acknowledged timer never
// delivered is lost; a delivery of a timer whose every Schedule certainly
// failed, or that was never sent, is unexpected; a delivery received
// before its due time (the test's clock) is early; a timer whose Cancel
// was acknowledged before its due time and that was delivered after that
// acknowledgement is cancelled-fired; a delivery whose payload or due
// time is none the client sent is corrupt. Problems are the scenario's
// own checks that failed; any makes the run fail too.
type verdict struct {
	Pass     bool   `json:"pass"`
	Scenario string `json:"scenario"`
	Seed     uint64 `json:"seed"`
	// Scheduled counts the timers sent in at least one Schedule:
	// Acknowledged of them answered OK at least once, Failed certainly
	// never written, Indeterminate neither (a timeout, a cut call).
	Scheduled     int `json:"scheduled"`
	Acknowledged  int `json:"acknowledged"`
	Failed        int `json:"failed"`
	Indeterminate int `json:"indeterminate"`
	// Rescheduled and Cancelled count the timers with a Reschedule, a
	// Cancel answered OK; Expected the timers that must fire.
	Rescheduled int `json:"rescheduled"`
	Cancelled   int `json:"cancelled"`
	Expected    int `json:"expected"`
	// Deliveries counts every delivery received.
	Deliveries int `json:"deliveries"`

	Lost           int `json:"lost"`
	Unexpected     int `json:"unexpected"`
	Early          int `json:"early"`
	CancelledFired int `json:"cancelled_fired"`
	Corrupt        int `json:"corrupt"`

	// Duplicates are the deliveries of a timer after its first, which at
	// least once allows; Redelivered the deliveries with attempt > 1;
	// IndeterminateDelivered the indeterminate timers delivered all the
	// same.
	Duplicates             int `json:"duplicates"`
	Redelivered            int `json:"redelivered"`
	IndeterminateDelivered int `json:"indeterminate_delivered"`
	// Lateness of the first delivery of each expected timer after the
	// due time it carried, in milliseconds.
	LatenessP50MS int64 `json:"lateness_p50_ms"`
	LatenessP99MS int64 `json:"lateness_p99_ms"`
	LatenessMaxMS int64 `json:"lateness_max_ms"`

	// Figures are what the fault cost, in the order the scenario added
	// them; Problems its own checks that failed; Examples a few of the
	// failures of the checks above.
	Figures  []figure `json:"figures,omitempty"`
	Problems []string `json:"problems,omitempty"`
	Examples []string `json:"examples,omitempty"`
}

// figure is one measured figure of a scenario run.
type figure struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// figure adds a figure: a time.Duration is printed in seconds, an int
// with thousands separators.
func (v *verdict) figure(name string, value any) {
	var s string
	switch x := value.(type) {
	case time.Duration:
		s = ms(x.Milliseconds())
	case int:
		s = itoa(x)
	default:
		s = fmt.Sprint(x)
	}
	v.Figures = append(v.Figures, figure{name, s})
}

// problem adds a failed check of the scenario's own.
func (v *verdict) problem(format string, args ...any) {
	v.Problems = append(v.Problems, fmt.Sprintf(format, args...))
}

// note names one failure, up to maxExamples.
func (v *verdict) note(format string, args ...any) {
	if len(v.Examples) < maxExamples {
		v.Examples = append(v.Examples, fmt.Sprintf(format, args...))
	}
}

// seal sets Pass from the checks and the problems.
func (v *verdict) seal() {
	v.Pass = v.Lost == 0 && v.Unexpected == 0 && v.Early == 0 && v.CancelledFired == 0 && v.Corrupt == 0 && len(v.Problems) == 0
}

// history is what the ledger holds of one timer.
type history struct {
	ops        []op
	deliveries []delivery
}

// judge checks the deliveries in l against its writes.
func judge(l *ledger) verdict {
	ops, got := l.snapshot()
	var v verdict
	v.Deliveries = len(got)
	hist := make(map[string]*history)
	at := func(id string) *history {
		h := hist[id]
		if h == nil {
			h = &history{}
			hist[id] = h
		}
		return h
	}
	for _, o := range ops {
		at(o.id).ops = append(at(o.id).ops, o)
	}
	for _, d := range got {
		at(d.id).deliveries = append(at(d.id).deliveries, d)
	}
	exp := expectedOf(ops)
	v.Expected = len(exp)
	var lateness []time.Duration
	for _, id := range sortedKeys(hist) {
		h := hist[id]
		var scheduled, acked, indeterminate, rescheduled, cancelled bool
		var dues []time.Time // every due time that may be in effect
		for _, o := range h.ops {
			switch o.kind {
			case opSchedule:
				scheduled = true
				acked = acked || o.outcome == outcomeOK
				indeterminate = indeterminate || o.outcome == outcomeIndeterminate
			case opReschedule:
				rescheduled = true
			case opCancel:
				cancelled = cancelled || o.outcome == outcomeOK
			}
			if o.kind != opCancel && o.outcome != outcomeFailed {
				dues = append(dues, o.due)
			}
		}
		if scheduled {
			v.Scheduled++
			switch {
			case acked:
				v.Acknowledged++
			case indeterminate:
				v.Indeterminate++
				if len(h.deliveries) > 0 {
					v.IndeterminateDelivered++
				}
			default:
				v.Failed++
			}
		}
		if rescheduled {
			v.Rescheduled++
		}
		if cancelled {
			v.Cancelled++
		}
		ds := h.deliveries
		if e, ok := exp[id]; ok {
			if len(ds) == 0 {
				v.Lost++
				v.note("lost: %s (due %s, acknowledged %s) never delivered", id, e.due.Format(time.StampMilli), e.ackedAt.Format(time.StampMilli))
			} else {
				first := slices.MinFunc(ds, func(a, b delivery) int { return a.received.Compare(b.received) })
				lateness = append(lateness, first.received.Sub(first.due))
			}
		}
		if len(ds) == 0 {
			continue
		}
		if !acked && !indeterminate {
			v.Unexpected += len(ds)
			v.note("unexpected: %s delivered %d times, its every Schedule failed or none was sent", id, len(ds))
			continue
		}
		v.Duplicates += len(ds) - 1
		earliest := slices.MinFunc(dues, time.Time.Compare)
		for _, d := range ds {
			if d.attempt > 1 {
				v.Redelivered++
			}
			if d.received.Before(d.due) || d.received.Before(earliest) {
				v.Early++
				v.note("early: %s (due %s) received at %s, attempt %d, shard %d epoch %d, on node %d",
					id, d.due.Format(time.StampMilli), d.received.Format(time.StampMilli), d.attempt, d.shard, d.epoch, d.node)
			}
			if !d.payloadOK || !slices.ContainsFunc(dues, d.due.Equal) {
				v.Corrupt++
				v.note("corrupt: %s delivered with due %s, payload as sent: %v", id, d.due.Format(time.StampMilli), d.payloadOK)
			}
		}
		if c, ok := cancelledBeforeDue(h.ops, earliest); ok {
			for _, d := range ds {
				if d.received.After(c.answered) {
					v.CancelledFired++
					v.note("cancelled-fired: %s cancelled at %s (due %s), delivered at %s by node %d",
						id, c.answered.Format(time.StampMilli), earliest.Format(time.StampMilli), d.received.Format(time.StampMilli), d.node)
					break
				}
			}
		}
	}
	if len(lateness) > 0 {
		slices.Sort(lateness)
		v.LatenessP50MS = percentile(lateness, 50).Milliseconds()
		v.LatenessP99MS = percentile(lateness, 99).Milliseconds()
		v.LatenessMaxMS = lateness[len(lateness)-1].Milliseconds()
	}
	v.seal()
	return v
}

// percentile is the p-th percentile of sorted, by nearest rank: the
// smallest value at least p% of them are no greater than.
func percentile(sorted []time.Duration, p int) time.Duration {
	rank := (len(sorted)*p + 99) / 100 // ceil(n*p/100)
	return sorted[max(rank, 1)-1]
}

// cancelledBeforeDue returns the last Cancel of ops answered OK before
// due, when no Schedule that may have applied was sent after its answer
// (which would bring the timer back).
func cancelledBeforeDue(ops []op, due time.Time) (op, bool) {
	var c op
	found := false
	for _, o := range ops {
		if o.kind == opCancel && o.outcome == outcomeOK && o.answered.Before(due) {
			c, found = o, true
		}
	}
	if !found {
		return op{}, false
	}
	for _, o := range ops {
		if o.kind == opSchedule && o.outcome != outcomeFailed && o.sent.After(c.answered) {
			return op{}, false
		}
	}
	return c, true
}

// line is the one-line verdict.
func (v verdict) line() string {
	result := "PASS"
	if !v.Pass {
		result = "FAIL"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "chaos verdict: %s %s seed=%d: %s scheduled (%s acknowledged, %s failed, %s indeterminate, %s of them delivered), "+
		"%s rescheduled, %s cancelled; %s deliveries: lost %d, unexpected %d, early %d, cancelled-fired %d, corrupt %d; "+
		"duplicates %s (%s redeliveries); lateness p50 %s, p99 %s, max %s",
		result, v.Scenario, v.Seed, itoa(v.Scheduled), itoa(v.Acknowledged), itoa(v.Failed), itoa(v.Indeterminate),
		itoa(v.IndeterminateDelivered), itoa(v.Rescheduled), itoa(v.Cancelled), itoa(v.Deliveries),
		v.Lost, v.Unexpected, v.Early, v.CancelledFired, v.Corrupt, itoa(v.Duplicates), itoa(v.Redelivered),
		ms(v.LatenessP50MS), ms(v.LatenessP99MS), ms(v.LatenessMaxMS))
	for i, f := range v.Figures {
		sep := ", "
		if i == 0 {
			sep = "; "
		}
		fmt.Fprintf(&b, "%s%s %s", sep, f.Name, f.Value)
	}
	fmt.Fprintf(&b, "; problems %d", len(v.Problems))
	return b.String()
}

// json is the verdict as one line of JSON.
func (v verdict) json() string {
	js, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf(`{"error":%q}`, err.Error())
	}
	return string(js)
}

// ms formats milliseconds as seconds.
func ms(n int64) string { return fmt.Sprintf("%.2fs", float64(n)/1000) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func sortedTimes[K comparable](m map[K]time.Time) []time.Time {
	ts := make([]time.Time, 0, len(m))
	for _, t := range m {
		ts = append(ts, t)
	}
	slices.SortFunc(ts, time.Time.Compare)
	return ts
}
