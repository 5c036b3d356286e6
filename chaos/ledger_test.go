package chaos

import (
	"maps"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
)

// opKind is the kind of a write the workload sends.
type opKind int

const (
	opSchedule opKind = iota
	opReschedule
	opCancel
)

func (k opKind) String() string {
	switch k {
	case opSchedule:
		return "schedule"
	case opReschedule:
		return "reschedule"
	case opCancel:
		return "cancel"
	}
	return "op?"
}

// outcome is what the client knows of one item of a write once its call
// returned.
type outcome int

const (
	// outcomeOK: the item was answered OK; the write happened.
	outcomeOK outcome = iota
	// outcomeFailed: a definite error that says nothing was written
	// (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
	// RESOURCE_EXHAUSTED before the write, ...).
	outcomeFailed
	// outcomeIndeterminate: the call timed out, was cut or answered
	// UNAVAILABLE: the write may or may not have happened.
	outcomeIndeterminate
)

func (o outcome) String() string {
	switch o {
	case outcomeOK:
		return "ok"
	case outcomeFailed:
		return "failed"
	case outcomeIndeterminate:
		return "indeterminate"
	}
	return "outcome?"
}

// op is one item of one Schedule, Reschedule or Cancel call, with its
// outcome. due is the due time sent (Schedule, Reschedule; zero for a
// Cancel); sent and answered are the test's clock around the call.
type op struct {
	kind     opKind
	id       string
	due      time.Time
	sent     time.Time
	answered time.Time
	outcome  outcome
	code     codes.Code
}

// itemOutcome classifies an item's result code. A whole call's error is
// classified by callOutcome.
func itemOutcome(c codes.Code) outcome {
	switch c {
	case codes.OK:
		return outcomeOK
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Unknown, codes.Internal, codes.Aborted:
		return outcomeIndeterminate
	}
	return outcomeFailed
}

// callOutcome classifies the error of a whole call: the codes a server
// gives before it writes anything are failures; a timeout, a cut
// connection or an UNAVAILABLE may come after the write.
func callOutcome(c codes.Code) outcome {
	switch c {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.ResourceExhausted, codes.PermissionDenied,
		codes.Unauthenticated, codes.Unimplemented, codes.OutOfRange, codes.NotFound, codes.AlreadyExists:
		return outcomeFailed
	}
	return outcomeIndeterminate
}

// ledger records every write the workload sent, with its outcome, and
// every delivery the subscribers received: what judge checks. It is safe
// for concurrent use.
type ledger struct {
	mu sync.Mutex
	// ops holds every item of every write, in the order recorded.
	ops []op
	// exp is expectedOf(ops), kept up to date op by op.
	exp map[string]expectation
	// got holds every delivery, in the order received; delivered the ids
	// with at least one.
	got       []delivery
	delivered map[string]bool
}

func newLedger() *ledger {
	return &ledger{exp: make(map[string]expectation), delivered: make(map[string]bool)}
}

// record adds one item of a write.
func (l *ledger) record(o op) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recordLocked(o)
}

// recordAll adds the items of one call.
func (l *ledger) recordAll(ops []op) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, o := range ops {
		l.recordLocked(o)
	}
}

func (l *ledger) recordLocked(o op) {
	l.ops = append(l.ops, o)
	expect(l.exp, o)
}

// deliver adds one delivery.
func (l *ledger) deliver(d delivery) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, d)
	l.delivered[d.id] = true
}

// deliveries returns a copy of the deliveries received so far.
func (l *ledger) deliveries() []delivery {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]delivery(nil), l.got...)
}

// snapshot returns a copy of the ops and the deliveries.
func (l *ledger) snapshot() ([]op, []delivery) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]op(nil), l.ops...), append([]delivery(nil), l.got...)
}

// expectation is what the ledger says of one timer that must fire: the
// due time its last acknowledged Schedule or Reschedule set, and when
// that write was acknowledged.
type expectation struct {
	due     time.Time
	ackedAt time.Time
	sent    time.Time // when that Schedule was sent
}

// expected returns the timers that must fire: those with an acknowledged
// Schedule and no Cancel that may have applied after it.
func (l *ledger) expected() map[string]expectation {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.exp)
}

// missing returns how many of the timers that must fire have not been
// delivered yet.
func (l *ledger) missing() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for id := range l.exp {
		if !l.delivered[id] {
			n++
		}
	}
	return n
}

// expectedOf is expected over ops, in the order recorded.
//
// A timer must fire when a Schedule of it was answered OK and no Cancel
// answered OK or left indeterminate may have applied after that
// Schedule: none answered after the Schedule was sent. Its due time is
// that of the last Schedule or Reschedule answered OK; a Reschedule left
// indeterminate makes either due time possible, which the early check
// allows for.
func expectedOf(ops []op) map[string]expectation {
	exp := make(map[string]expectation)
	for _, o := range ops {
		expect(exp, o)
	}
	return exp
}

// expect applies one op, the next in the order recorded, to exp.
func expect(exp map[string]expectation, o op) {
	switch {
	case o.kind == opSchedule && o.outcome == outcomeOK:
		exp[o.id] = expectation{due: o.due, ackedAt: o.answered, sent: o.sent}
	case o.kind == opReschedule && o.outcome == outcomeOK:
		if e, ok := exp[o.id]; ok {
			e.due = o.due
			exp[o.id] = e
		}
	case o.kind == opCancel && o.outcome != outcomeFailed:
		if e, ok := exp[o.id]; ok && o.answered.After(e.sent) {
			delete(exp, o.id)
		}
	}
}
