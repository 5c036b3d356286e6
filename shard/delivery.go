package shard

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math/bits"
	"strings"
	"time"
	"unsafe"
)

// Delivery is one attempt to deliver one occurrence of a due timer.
type Delivery struct {
	// ID names the occurrence: the same for every attempt of it, new for
	// every occurrence (a repeat, a reschedule, a replay).
	ID        string
	Namespace string
	TimerID   string
	Topic     string
	// Payload is shared with the shard and must not be modified.
	Payload []byte
	Due     time.Time
	Fired   time.Time
	// Attempt counts from 1.
	Attempt uint32
	Shard   uint32
	Epoch   uint64
	// Waited is set when this attempt was due earlier and waited in the
	// shard for a subscriber of its topic (none was connected, or none
	// had credit): Fired - Due then measures that wait, not how late the
	// shard fired.
	Waited bool
}

// Dispatcher hands due timers to subscribers; the server implements it
// over subscriber streams.
//
// Dispatch is called from the shard's goroutine with the shard's lock
// held, so it must not block and must not call back into the Shard; and
// the implementation must not hold a lock that Dispatch takes while it
// calls the Shard (Ack, Return, Ready, Schedule, ...), or the two can
// deadlock. Calls from different shards may be concurrent.
type Dispatcher interface {
	// Dispatch offers d to a subscriber of its namespace and topic. It
	// returns false when no subscriber can take it now (none connected,
	// or none with credit), or when the dispatcher holds it back (the
	// server's delivery rates): the timer then waits, without using up an
	// attempt, until Shard.Ready is called for its topic. On true,
	// ackTimeout is how long the subscriber has to acknowledge (zero
	// means the shard's default).
	Dispatch(d Delivery) (ackTimeout time.Duration, ok bool)
}

// Events hears of what a shard did with its timers, for metrics. Its
// methods are called with the shard's lock held, concurrently from
// different shards: they must be cheap, must not block and must not call
// back into a Shard.
type Events interface {
	// Acked reports an ack that ended an occurrence of a timer of
	// namespace (repeated or unknown acks are not reported).
	Acked(namespace string)
	// DeadLettered reports a timer of namespace that became a dead
	// letter.
	DeadLettered(namespace string)
}

// DeliveryID is the decoded form of Delivery.ID: the shard that owns the
// timer, the timer's key and its occurrence.
type DeliveryID struct {
	Shard     uint32
	Namespace string
	TimerID   string
	OccEpoch  uint64
	OccSeq    uint64
}

// String encodes the id: URL-safe base64 of the shard, the occurrence
// and the timer's key, so any node can route an ack to the owning shard.
func (d DeliveryID) String() string {
	// Encoded in a buffer on the stack, for every id a shard sends out
	// within limits: one allocation, the string itself.
	var enc [maxDeliveryIDLen]byte
	return string(d.appendEncoded(enc[:0]))
}

// appendEncoded appends the encoded id, encodedLen bytes, to dst.
func (d DeliveryID) appendEncoded(dst []byte) []byte {
	var raw [rawDeliveryIDLen]byte
	b := binary.AppendUvarint(raw[:0], uint64(d.Shard))
	b = binary.AppendUvarint(b, d.OccEpoch)
	b = binary.AppendUvarint(b, d.OccSeq)
	b = append(b, d.Namespace...)
	b = append(b, 0)
	b = append(b, d.TimerID...)
	return base64.RawURLEncoding.AppendEncode(dst, b)
}

// encodedLen is the length of the encoded id.
func (d DeliveryID) encodedLen() int {
	n := uvarintLen(uint64(d.Shard)) + uvarintLen(d.OccEpoch) + uvarintLen(d.OccSeq) + len(d.Namespace) + 1 + len(d.TimerID)
	return base64.RawURLEncoding.EncodedLen(n)
}

// uvarintLen is the length of v as a uvarint.
func uvarintLen(v uint64) int {
	return (bits.Len64(v|1) + 6) / 7
}

// idBlockSize is the size of the blocks idArena carves ids from, in
// bytes: about forty ids of a typical timer key.
const idBlockSize = 2048

// idArena makes delivery ids for a shard's deliveries, carved out of
// shared blocks: a herd of deliveries allocates a block per idBlockSize
// bytes of ids rather than a string each. The shard's loop makes them
// with its lock held, and the fewer allocations it makes, the less the
// garbage collector has it assist while another namespace's timers wait
// for it. A block lives as long as the longest-lived id in it (ids are
// kept until their delivery is acked or lapses), which is why blocks are
// small. An idArena is not safe for concurrent use.
type idArena struct {
	// Invariant: the bytes of block before len(block) are never
	// written again: the strings handed out alias them.
	block []byte
}

// id returns d encoded, as DeliveryID.String does.
func (a *idArena) id(d DeliveryID) string {
	n := d.encodedLen()
	if cap(a.block)-len(a.block) < n {
		a.block = make([]byte, 0, max(idBlockSize, n))
	}
	start := len(a.block)
	a.block = d.appendEncoded(a.block)
	return unsafe.String(&a.block[start], n)
}

// ParseDeliveryID decodes s, an id made by DeliveryID.String. Errors wrap
// ErrInvalidDeliveryID.
func ParseDeliveryID(s string) (DeliveryID, error) {
	var d DeliveryID
	if len(s) > maxDeliveryIDLen {
		return d, fmt.Errorf("%w: %d bytes long", ErrInvalidDeliveryID, len(s))
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return d, fmt.Errorf("%w: %w", ErrInvalidDeliveryID, err)
	}
	var vals [3]uint64
	for i := range vals {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return d, fmt.Errorf("%w: truncated", ErrInvalidDeliveryID)
		}
		vals[i], b = v, b[n:]
	}
	if vals[0] > 1<<32-1 {
		return d, fmt.Errorf("%w: shard %d out of range", ErrInvalidDeliveryID, vals[0])
	}
	ns, id, ok := strings.Cut(string(b), "\x00")
	if !ok || ValidNamespace(ns) != nil || ValidID(id) != nil {
		return d, fmt.Errorf("%w: bad timer key", ErrInvalidDeliveryID)
	}
	d.Shard, d.OccEpoch, d.OccSeq = uint32(vals[0]), vals[1], vals[2]
	d.Namespace, d.TimerID = ns, id
	return d, nil
}

// rawDeliveryIDLen bounds a decoded id, in bytes: three varints, the
// longest namespace and id and a separator.
const rawDeliveryIDLen = 3*binary.MaxVarintLen64 + MaxNamespaceLen + 1 + MaxIDLen

// maxDeliveryIDLen bounds an encoded id: rawDeliveryIDLen bytes in
// base64.
const maxDeliveryIDLen = (rawDeliveryIDLen + 2) / 3 * 4
