package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/shard"
	"github.com/timerd/timerd/store"
)

// defaultNamespace is the namespace of a request that gives none.
const defaultNamespace = "default"

func namespaceOr(ns string) string {
	if ns == "" {
		return defaultNamespace
	}
	return ns
}

// epoch is the earliest due time stored: a due time before 1970 is due
// at once either way, and the store keeps unix milliseconds.
var epoch = time.Unix(0, 0)

// toSpec translates a TimerSpec of a request whose namespace is ns (the
// spec's own when it gives one). Its errors wrap shard's ErrInvalid…
// errors and name the field.
func toSpec(p *pb.TimerSpec, ns string) (shard.Spec, error) {
	if p.GetNamespace() != "" {
		ns = p.GetNamespace()
	}
	sp := shard.Spec{
		Namespace: ns,
		ID:        p.GetId(),
		Topic:     p.GetTopic(),
		Payload:   p.GetPayload(),
	}
	var err error
	if sp.Due, sp.Delay, err = toWhen(p.GetDueTime(), p.GetDelay(), p.GetWhen() != nil); err != nil {
		return sp, err
	}
	if iv := p.GetInterval(); iv != nil {
		if err := iv.CheckValid(); err != nil {
			return sp, fmt.Errorf("interval: %w: %v", shard.ErrInvalidInterval, err)
		}
		if sp.Interval = iv.AsDuration(); sp.Interval < 0 {
			return sp, fmt.Errorf("interval: %w: negative interval %v", shard.ErrInvalidInterval, sp.Interval)
		}
	}
	return sp, nil
}

// toWhen translates the when oneof of a TimerSpec, RescheduleItem or
// ReplayDeadLettersRequest: exactly one of due and delay is set (set
// says whether either is), and delay is not bothWhen (the request carried
// both, see wireCodec). A zero due time means "use delay". Errors wrap
// shard.ErrInvalidDue and name the field.
func toWhen(due *timestamppb.Timestamp, delay *durationpb.Duration, set bool) (time.Time, time.Duration, error) {
	switch {
	case delay == bothWhen:
		return time.Time{}, 0, fmt.Errorf("when: %w: due_time and delay are both set; set one", shard.ErrInvalidDue)
	case due != nil:
		if err := due.CheckValid(); err != nil {
			return time.Time{}, 0, fmt.Errorf("due_time: %w: %v", shard.ErrInvalidDue, err)
		}
		t := due.AsTime()
		if t.Before(epoch) {
			t = epoch
		}
		return t, 0, nil
	case delay != nil:
		if err := delay.CheckValid(); err != nil {
			return time.Time{}, 0, fmt.Errorf("delay: %w: %v", shard.ErrInvalidDue, err)
		}
		d := delay.AsDuration()
		if d < 0 {
			return time.Time{}, 0, fmt.Errorf("delay: %w: negative delay %v", shard.ErrInvalidDue, d)
		}
		return time.Time{}, d, nil
	case set:
		return time.Time{}, 0, fmt.Errorf("when: %w: due_time or delay is set but empty", shard.ErrInvalidDue)
	}
	return time.Time{}, 0, fmt.Errorf("when: %w: exactly one of due_time and delay must be set", shard.ErrInvalidDue)
}

// code maps an error of package shard (or of a context) to its gRPC code.
func code(err error) codes.Code {
	if st, ok := status.FromError(err); ok && err != nil {
		return st.Code() // a peer's answer, forwarded
	}
	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, shard.ErrInvalidNamespace), errors.Is(err, shard.ErrInvalidID),
		errors.Is(err, shard.ErrInvalidTopic), errors.Is(err, shard.ErrInvalidPayload),
		errors.Is(err, shard.ErrInvalidDue), errors.Is(err, shard.ErrInvalidInterval),
		errors.Is(err, shard.ErrInvalidDeliveryID):
		return codes.InvalidArgument
	case errors.Is(err, shard.ErrExists):
		return codes.AlreadyExists
	case errors.Is(err, shard.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, shard.ErrDead), errors.Is(err, shard.ErrNotDead):
		return codes.FailedPrecondition
	case errors.Is(err, shard.ErrNotOwner), errors.Is(err, shard.ErrFenced), errors.Is(err, errUnavailable),
		errors.Is(err, store.ErrUnavailable):
		// store.ErrUnavailable: the store kept failing and the shard
		// stopped to reload; a retry finds it reopened.
		return codes.Unavailable
	case errors.Is(err, store.ErrOverloaded):
		// The group commit's queue is full (the store is slow or down):
		// nothing was applied; retry after a backoff.
		return codes.ResourceExhausted
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	return codes.Internal
}

var (
	// errUnavailable marks a shard this node does not hold right now.
	errUnavailable = errors.New("shard unavailable")
	// errInvalidToken and errTokenFilter reject a ListDeadLetters
	// page_token.
	errInvalidToken = errors.New("malformed page token")
	errTokenFilter  = errors.New("page token was made for another namespace or topic")
)

// rpcError turns an error into the status an RPC fails with.
func rpcError(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(code(err), err.Error())
}

// invalid is a request-level INVALID_ARGUMENT naming the field.
func invalid(field, format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "%s: %s", field, fmt.Sprintf(format, args...))
}

// unavailable is the error of an item whose shard this node does not
// hold right now.
func unavailable(id uint32) error {
	return fmt.Errorf("%w: shard %d is not loaded on this node; retry", errUnavailable, id)
}

func itemResult(id string, r shard.Result) *pb.ItemResult {
	return fillResult(new(pb.ItemResult), new(timestamppb.Timestamp), id, r)
}

// fillResult fills ir, and ts for its due time, from r. Batch calls pass
// elements of slabs allocated once per response, not two allocations per
// item.
func fillResult(ir *pb.ItemResult, ts *timestamppb.Timestamp, id string, r shard.Result) *pb.ItemResult {
	ir.Id, ir.Code = id, int32(code(r.Err))
	if r.Err != nil {
		ir.Message = r.Err.Error()
	} else if !r.Due.IsZero() {
		ts.Seconds, ts.Nanos = r.Due.Unix(), int32(r.Due.Nanosecond())
		ir.DueTime = ts
	}
	return ir
}

func toTimer(t *shard.Timer) *pb.Timer {
	spec := &pb.TimerSpec{
		Namespace: t.Namespace,
		Id:        t.ID,
		Topic:     t.Topic,
		When:      &pb.TimerSpec_DueTime{DueTime: timestamppb.New(t.Due)},
		Payload:   t.Payload,
	}
	if t.Interval != 0 {
		spec.Interval = durationpb.New(t.Interval)
	}
	return &pb.Timer{
		Spec:        spec,
		State:       toState(t.State),
		Attempts:    t.Attempts,
		Shard:       t.Shard,
		CreatedTime: timestamppb.New(t.Created),
	}
}

func toState(s shard.State) pb.TimerState {
	switch s {
	case shard.Pending:
		return pb.TimerState_TIMER_STATE_PENDING
	case shard.InFlight:
		return pb.TimerState_TIMER_STATE_IN_FLIGHT
	case shard.Dead:
		return pb.TimerState_TIMER_STATE_DEAD
	}
	return pb.TimerState_TIMER_STATE_UNSPECIFIED
}

// fillDelivery fills out, and due and fired for its times, from d. The
// stream handler reuses one of each for every message it sends: Send has
// encoded the message when it returns.
func fillDelivery(out *pb.Delivery, due, fired *timestamppb.Timestamp, d *shard.Delivery) {
	due.Seconds, due.Nanos = d.Due.Unix(), int32(d.Due.Nanosecond())
	fired.Seconds, fired.Nanos = d.Fired.Unix(), int32(d.Fired.Nanosecond())
	out.DeliveryId = d.ID
	out.Namespace = d.Namespace
	out.Id = d.TimerID
	out.Topic = d.Topic
	out.Payload = d.Payload
	out.DueTime = due
	out.FiredTime = fired
	out.Attempt = d.Attempt
	out.Shard = d.Shard
	out.Epoch = d.Epoch
}
