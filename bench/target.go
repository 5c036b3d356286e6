package bench

import (
	"context"
	"time"
)

// Target is a system a run drives: timerd through its Go client, or a
// peer measured the same way. Its methods may be called concurrently.
type Target interface {
	// Name names the target in reports: "timerd", "redis-raw", "asynq".
	Name() string
	// Addr is the address the target is reached at, for reports.
	Addr() string
	// Schedule stores timers durably and returns once every one is
	// stored, or with the first error.
	Schedule(ctx context.Context, timers []Timer) error
	// Cleanup removes the timers of a run that are still stored, given
	// the ids it scheduled; it is not timed.
	Cleanup(ctx context.Context, topic string, ids []string) error
	// Close releases the target's connections. It is safe to call twice.
	Close() error
}

// Firer is a Target that delivers timers when they come due.
type Firer interface {
	Target
	// Subscribe calls fn for every delivery of topic until ctx ends, then
	// returns nil (or an error when it cannot go on). fn may be called
	// concurrently; a delivery is acknowledged when fn returns.
	Subscribe(ctx context.Context, topic string, fn func(Delivery)) error
}

// Mutator is a Target that can cancel and move timers.
type Mutator interface {
	Target
	// Cancel cancels the timers ids and sets ok[i] when ids[i] was
	// cancelled (it is false for a timer that had already fired and been
	// acknowledged). An error means the call as a whole failed.
	Cancel(ctx context.Context, ids []string, ok []bool) error
	// Reschedule moves each timer ids[i] to due[i] and sets ok[i] when it
	// was moved.
	Reschedule(ctx context.Context, ids []string, due []time.Time, ok []bool) error
}

// Timer is one timer a run schedules.
type Timer struct {
	// ID is unique within the run: the run's id, "-", then a sequence
	// number (see SeqOf).
	ID    string
	Topic string
	// Due is when the timer must fire, on the bench's clock (whole ms).
	Due     time.Time
	Payload []byte
}

// Delivery is one delivery of a timer, as a Firer reports it.
type Delivery struct {
	ID string
	// Due is the due time the target says it fired for.
	Due time.Time
	// Fired is when the target says it sent the delivery, on its own
	// clock; zero when it does not say. Fired - Due is the target's own
	// share of the lateness, before transit and the subscriber.
	Fired time.Time
	// Attempt is 1 for a first delivery, more for a redelivery.
	Attempt uint32
	// Shard is the timer's shard and Epoch the fencing epoch of the node
	// that fired it, when the target has shards (a Cluster); a higher
	// epoch than the shard had before a node died means another node
	// fired it. Both are 0 otherwise.
	Shard uint32
	Epoch uint64
}
