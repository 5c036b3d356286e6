package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is the failure of one call, or of one item of a batch call. It
// wraps the sentinel error for its gRPC code (see KindOf) and, when the
// caller's context had ended, the context's error; GRPCStatus makes its
// status reachable through status.FromError and status.Code. An Error is
// not changed once returned, so it may be shared between goroutines; its
// fields must not be changed.
type Error struct {
	// Op names the call: "schedule", "reschedule", "cancel", "get",
	// "list dead letters", "replay dead letters", "members", "shard map"
	// or "subscribe".
	Op string
	// Namespace and ID name the timer the failure concerns, when there is
	// one.
	Namespace, ID string
	// Code is the gRPC status code of the call or item.
	Code codes.Code
	// Message is the server's explanation, for people and logs.
	Message string

	kind   error          // the sentinel for Code
	ctxErr error          // the caller's context error, if it had ended
	st     *status.Status // the call's status; nil for items
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("timerd ")
	b.WriteString(e.Op)
	if e.ID != "" {
		fmt.Fprintf(&b, " %s/%q", e.Namespace, e.ID)
	}
	b.WriteString(": ")
	b.WriteString(e.sentinel().Error())
	if e.ctxErr != nil {
		b.WriteString(" (")
		b.WriteString(e.ctxErr.Error())
		b.WriteString(")")
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

// Unwrap returns the sentinel for the code and, when the caller's context
// had ended, its error.
func (e *Error) Unwrap() []error {
	if e.ctxErr != nil {
		return []error{e.sentinel(), e.ctxErr}
	}
	return []error{e.sentinel()}
}

// sentinel is the sentinel for e.Code, also for an Error built outside
// this package.
func (e *Error) sentinel() error {
	if e.kind != nil {
		return e.kind
	}
	return KindOf(e.Op, e.Code)
}

// GRPCStatus returns the status of the call as the server (or gRPC) sent
// it or, for an item, a status made of the item's code and message.
func (e *Error) GRPCStatus() *status.Status {
	if e.st != nil {
		return e.st
	}
	return status.New(e.Code, e.Message)
}

// KindOf returns the sentinel error the package uses for a gRPC code, as
// an item of op: nil for OK; ErrInvalid, ErrNotFound, ErrExists,
// ErrUnavailable, ErrDenied, ErrResourceExhausted or ErrInternal; and, for
// FAILED_PRECONDITION, ErrDead for a "reschedule", ErrNotDead for a
// "replay dead letters" and ErrFailedPrecondition otherwise.
func KindOf(op string, code codes.Code) error {
	switch code {
	case codes.OK:
		return nil
	case codes.InvalidArgument, codes.OutOfRange:
		return ErrInvalid
	case codes.NotFound:
		return ErrNotFound
	case codes.AlreadyExists:
		return ErrExists
	case codes.FailedPrecondition:
		switch op {
		case opReschedule:
			return ErrDead
		case opReplay:
			return ErrNotDead
		}
		return ErrFailedPrecondition
	case codes.Unavailable, codes.DeadlineExceeded:
		return ErrUnavailable
	case codes.PermissionDenied, codes.Unauthenticated:
		return ErrDenied
	case codes.ResourceExhausted:
		return ErrResourceExhausted
	}
	return ErrInternal
}

// Names of the calls, as Error.Op.
const (
	opSchedule   = "schedule"
	opReschedule = "reschedule"
	opCancel     = "cancel"
	opGet        = "get"
	opList       = "list dead letters"
	opReplay     = "replay dead letters"
	opMembers    = "members"
	opShardMap   = "shard map"
	opSubscribe  = "subscribe"
)

// itemError returns the error of an item that failed with code.
func itemError(op, namespace, id string, code codes.Code, msg string) *Error {
	return &Error{Op: op, Namespace: namespace, ID: id, Code: code, Message: msg, kind: KindOf(op, code)}
}

// invalidItem returns the error of an item the client refuses to send.
func invalidItem(op, namespace, id, msg string) *Error {
	return itemError(op, namespace, id, codes.InvalidArgument, msg)
}

// rpcError maps the error of a failed RPC (not nil). A client that has
// been closed gives ErrClosed.
func (c *Client) rpcError(ctx context.Context, op, namespace, id string, err error) error {
	if c.closed.Load() {
		return closedErr(op)
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	st := status.Convert(err)
	code := st.Code()
	out := &Error{Op: op, Namespace: namespace, ID: id, Code: code, Message: st.Message(), st: st, kind: KindOf(op, code)}
	if cerr := ctx.Err(); cerr != nil {
		switch code {
		case codes.Canceled, codes.DeadlineExceeded:
			// The caller gave up: that, not the server, is the cause.
			out.kind = cerr
		case codes.Unavailable:
			// A retry was cut short by the caller.
			out.ctxErr = cerr
		}
	}
	return out
}

// closedErr returns the error of op on a closed client.
func closedErr(op string) error { return fmt.Errorf("timerd %s: %w", op, ErrClosed) }

// transient reports whether an item code, or the code of a failed RPC
// while ctx is live, says the same request may succeed later.
func transient(code codes.Code) bool {
	return code == codes.Unavailable || code == codes.DeadlineExceeded
}

// retryableRPC reports whether the failed RPC may be sent again.
func (c *Client) retryableRPC(ctx context.Context, err error) bool {
	if ctx.Err() != nil || c.closed.Load() {
		return false
	}
	return transient(status.Code(err))
}

// backoff returns the wait before retry n (n >= 1) under p: uniform in
// [d/2, d] with d = MinBackoff * 2^(n-1), capped at MaxBackoff.
func (p RetryPolicy) backoff(n int) time.Duration {
	d := p.MinBackoff
	for i := 1; i < n && d < p.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, p.MaxBackoff)
	half := d / 2
	return half + rand.N(d-half+1)
}

// sleep waits for d or until ctx ends, and reports whether ctx is still
// live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
