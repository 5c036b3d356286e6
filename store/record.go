package store

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
)

// State is the durable state of a record. A delivery in flight is not
// stored: it lives in its owner's memory, so a new owner after a crash
// finds the record Pending with its due time passed and delivers it again
// (at least once).
type State uint8

const (
	// Pending waits for Next.
	Pending State = 1
	// Dead is a dead letter: it exhausted its attempts and waits for a
	// replay or a cancel.
	Dead State = 2
)

// Record is one timer as stored. Times are unix milliseconds; durations
// are milliseconds.
type Record struct {
	Namespace string
	ID        string
	Topic     string
	Payload   []byte

	// Due is the due time of the current occurrence: what its deliveries
	// report, unchanged by redelivery.
	Due int64
	// Next is when the owner acts on the record next: Due, or a
	// redelivery time after a failed attempt.
	// Invariant: Next >= Due (a Dead record has Next == Due).
	Next int64
	// SpecDue is the due time the timer was created with, when Delay < 0.
	SpecDue int64
	// Delay is the delay the timer was created with, or -1 when it was
	// created with an absolute due time. Schedule's idempotency check
	// compares a delay, not the due time it resolved to.
	Delay int64
	// Interval repeats the timer; 0 means one shot.
	Interval int64
	// Created is when the timer was first scheduled.
	Created int64

	State State
	// Attempts counts delivery attempts of the current occurrence that
	// were recorded durably (the owner records an attempt when it times
	// out, so one in flight at a crash is not counted).
	Attempts uint32
	// LastAttempt is when the last recorded attempt was sent; 0 if none.
	LastAttempt int64
	// Reason says why a Dead record died.
	Reason string

	// OccEpoch and OccSeq identify the current occurrence: the epoch it
	// was created under and a sequence number unique within that epoch.
	// Deliveries of one occurrence share an id built from them.
	OccEpoch uint64
	OccSeq   uint64

	// Req is the hash of the request id of the last Schedule or
	// Reschedule that changed the timer (0: none was given), and ReqAt
	// when it was applied (unix ms): a retry of that request is then
	// answered without changing the timer again.
	Req   uint64
	ReqAt int64
}

// recordVersion is the first byte of every encoded record. Version 1,
// without Req and ReqAt, still decodes (with both zero).
const recordVersion = 2

// AppendBinary appends the encoding of r to b.
func (r *Record) AppendBinary(b []byte) []byte {
	// One allocation for the whole record, not one per field that
	// outgrows the buffer: the strings and payload, plus at most 18
	// varints.
	b = slices.Grow(b, len(r.Namespace)+len(r.ID)+len(r.Topic)+len(r.Payload)+len(r.Reason)+18*binary.MaxVarintLen64)
	b = append(b, recordVersion)
	b = appendString(b, r.Namespace)
	b = appendString(b, r.ID)
	b = appendString(b, r.Topic)
	b = binary.AppendUvarint(b, uint64(len(r.Payload)))
	b = append(b, r.Payload...)
	b = binary.AppendVarint(b, r.Due)
	// Next is stored as its distance from Due (usually 0: one byte); a
	// negative distance breaks the invariant and fails to decode.
	b = binary.AppendVarint(b, r.Next-r.Due)
	b = binary.AppendVarint(b, r.SpecDue)
	b = binary.AppendVarint(b, r.Delay)
	b = binary.AppendVarint(b, r.Interval)
	b = binary.AppendVarint(b, r.Created)
	b = append(b, byte(r.State))
	b = binary.AppendUvarint(b, uint64(r.Attempts))
	b = binary.AppendVarint(b, r.LastAttempt)
	b = appendString(b, r.Reason)
	b = binary.AppendUvarint(b, r.OccEpoch)
	b = binary.AppendUvarint(b, r.OccSeq)
	b = binary.AppendUvarint(b, r.Req)
	b = binary.AppendVarint(b, r.ReqAt)
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// UnmarshalBinary decodes data, which it does not retain, into r. Errors
// wrap ErrCorrupt.
func (r *Record) UnmarshalBinary(data []byte) error {
	d := decoder{b: data}
	v := d.byte()
	if v != recordVersion && v != 1 && d.err == nil {
		return fmt.Errorf("%w: unknown version %d", ErrCorrupt, v)
	}
	r.Namespace = d.string()
	r.ID = d.string()
	r.Topic = d.string()
	r.Payload = d.bytes()
	r.Due = d.varint()
	next := d.varint()
	r.SpecDue = d.varint()
	r.Delay = d.varint()
	r.Interval = d.varint()
	r.Created = d.varint()
	r.State = State(d.byte())
	attempts := d.uvarint()
	r.LastAttempt = d.varint()
	r.Reason = d.string()
	r.OccEpoch = d.uvarint()
	r.OccSeq = d.uvarint()
	r.Req, r.ReqAt = 0, 0
	if v >= 2 {
		r.Req = d.uvarint()
		r.ReqAt = d.varint()
	}
	if d.err != nil {
		return d.err
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(d.b))
	}
	if r.State != Pending && r.State != Dead {
		return fmt.Errorf("%w: unknown state %d", ErrCorrupt, r.State)
	}
	if attempts > math.MaxUint32 {
		return fmt.Errorf("%w: attempts %d out of range", ErrCorrupt, attempts)
	}
	r.Attempts = uint32(attempts)
	if next < 0 {
		return fmt.Errorf("%w: next before due", ErrCorrupt)
	}
	if r.Due > math.MaxInt64-next {
		return fmt.Errorf("%w: next out of range", ErrCorrupt)
	}
	r.Next = r.Due + next
	return nil
}

// decoder reads the encoding field by field; the first error sticks and
// later reads return zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated or malformed %s", ErrCorrupt, what)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail("byte")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) raw() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string { return string(d.raw()) }

func (d *decoder) bytes() []byte {
	v := d.raw()
	if len(v) == 0 {
		return nil
	}
	return append([]byte(nil), v...)
}
