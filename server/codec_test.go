package server

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// rawCodec sends a rawMsg as it is, so a test can put on the wire what
// no Go message would encode; everything else is protobuf.
type rawCodec struct{}

type rawMsg []byte

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	if b, ok := v.(rawMsg); ok {
		return b, nil
	}
	return proto.Marshal(v.(proto.Message))
}

func (rawCodec) Unmarshal(b []byte, v any) error { return proto.Unmarshal(b, v.(proto.Message)) }

// invokeRaw calls method with the bytes b as its request.
func (e *env) invokeRaw(method string, b []byte, resp proto.Message) error {
	return e.conn.Invoke(e.ctx(), method, rawMsg(b), resp, grpc.ForceCodec(rawCodec{}))
}

// withWhen appends to the encoding of m the fields of when, in order:
// a Timestamp as field dueField, a Duration as field delayField.
func withWhen(t *testing.T, m proto.Message, dueField, delayField protowire.Number, when ...proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range when {
		f := delayField
		if _, ok := w.(*timestamppb.Timestamp); ok {
			f = dueField
		}
		v, err := proto.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		b = protowire.AppendTag(b, f, protowire.BytesType)
		b = protowire.AppendBytes(b, v)
	}
	return b
}

// appendItem appends item to b as an occurrence of the message field f.
func appendItem(b []byte, f protowire.Number, item []byte) []byte {
	b = protowire.AppendTag(b, f, protowire.BytesType)
	return protowire.AppendBytes(b, item)
}

// TestBothDueTimeAndDelay sends, over gRPC, requests whose when oneof
// carries both due_time and delay, in either order (a JavaScript client
// encodes in field-number order, delay last): the item, or the replay,
// is refused with INVALID_ARGUMENT instead of taking the last one.
func TestBothDueTimeAndDelay(t *testing.T) {
	e := start(t, "")
	due := timestamppb.New(time.Now().Add(time.Hour))
	delay := durationpb.New(2 * time.Hour)
	e.schedule(spec("kept", "t", time.Hour))
	before, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "kept"})
	if err != nil {
		t.Fatal(err)
	}
	const both = "due_time and delay are both set"

	t.Run("Schedule", func(t *testing.T) {
		items := []struct {
			id   string
			when []proto.Message
			code codes.Code
		}{
			{"due", []proto.Message{due}, codes.OK},
			{"due-then-delay", []proto.Message{due, delay}, codes.InvalidArgument},
			{"delay-then-due", []proto.Message{delay, due}, codes.InvalidArgument},
			{"delay", []proto.Message{delay}, codes.OK},
			{"due-twice", []proto.Message{due, due}, codes.OK}, // one field, repeated: merged, as protobuf does
		}
		var req []byte
		for _, it := range items {
			req = appendItem(req, scheduleTimers, withWhen(t, &pb.TimerSpec{Id: it.id, Topic: "t"}, specDueTime, specDelay, it.when...))
		}
		resp := new(pb.ScheduleResponse)
		if err := e.invokeRaw(pb.TimerService_Schedule_FullMethodName, req, resp); err != nil {
			t.Fatal(err)
		}
		if len(resp.Results) != len(items) {
			t.Fatalf("%d results for %d items", len(resp.Results), len(items))
		}
		for i, it := range items {
			r := resp.Results[i]
			if codes.Code(r.Code) != it.code || r.Id != it.id || it.code != codes.OK && !strings.Contains(r.Message, both) {
				t.Errorf("%s: %v %q, want %v", it.id, codes.Code(r.Code), r.Message, it.code)
			}
			_, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: it.id})
			if created := err == nil; created != (it.code == codes.OK) {
				t.Errorf("%s: created %v after %v", it.id, created, codes.Code(r.Code))
			}
		}
	})

	t.Run("Reschedule", func(t *testing.T) {
		req, err := proto.Marshal(&pb.RescheduleRequest{})
		if err != nil {
			t.Fatal(err)
		}
		req = appendItem(req, rescheduleItems, withWhen(t, &pb.RescheduleItem{Id: "kept"}, itemDueTime, itemDelay, due, delay))
		req = appendItem(req, rescheduleItems, withWhen(t, &pb.RescheduleItem{Id: "kept"}, itemDueTime, itemDelay, delay, due))
		resp := new(pb.RescheduleResponse)
		if err := e.invokeRaw(pb.TimerService_Reschedule_FullMethodName, req, resp); err != nil {
			t.Fatal(err)
		}
		for i, r := range resp.Results {
			if codes.Code(r.Code) != codes.InvalidArgument || !strings.Contains(r.Message, both) {
				t.Errorf("item %d: %v %q, want INVALID_ARGUMENT", i, codes.Code(r.Code), r.Message)
			}
		}
		after, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "kept"})
		if err != nil || !proto.Equal(after, before) {
			t.Fatalf("the refused moves changed the timer: %v, %v", after, err)
		}
	})

	t.Run("ReplayDeadLetters", func(t *testing.T) {
		for _, when := range [][]proto.Message{{due, delay}, {delay, due}} {
			req := withWhen(t, &pb.ReplayDeadLettersRequest{}, replayDueTime, replayDelay, when...)
			err := e.invokeRaw(pb.TimerService_ReplayDeadLetters_FullMethodName, req, new(pb.ReplayDeadLettersResponse))
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), both) {
				t.Errorf("ReplayDeadLetters with both: %v, want INVALID_ARGUMENT", err)
			}
		}
		// One of them is fine.
		req := withWhen(t, &pb.ReplayDeadLettersRequest{}, replayDueTime, replayDelay, delay)
		if err := e.invokeRaw(pb.TimerService_ReplayDeadLetters_FullMethodName, req, new(pb.ReplayDeadLettersResponse)); err != nil {
			t.Errorf("ReplayDeadLetters with a delay: %v", err)
		}
	})
}

// BenchmarkWireCodec decodes a ScheduleRequest of 10,000 timers with
// gRPC's codec and with the server's, which also walks the bytes for a
// when oneof given twice, and times that walk alone.
func BenchmarkWireCodec(b *testing.B) {
	req := &pb.ScheduleRequest{RequestId: "0123456789abcdef0123456789abcdef"}
	for i := range 10_000 {
		req.Timers = append(req.Timers, &pb.TimerSpec{Namespace: "orders", Id: fmt.Sprintf("order-%08d", i), Topic: "orders.timeout",
			When: &pb.TimerSpec_Delay{Delay: durationpb.New(time.Hour)}, Payload: []byte("cancel unpaid order 0123456789")})
	}
	raw, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	data := mem.BufferSlice{mem.SliceBuffer(raw)}
	wc := newWireCodec()
	for _, c := range []struct {
		name  string
		codec interface {
			Unmarshal(mem.BufferSlice, any) error
		}
	}{{"grpc", wc.base}, {"wire", wc}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if err := c.codec.Unmarshal(data, new(pb.ScheduleRequest)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// The walk alone, what the server's codec adds.
	b.Run("walk", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		for b.Loop() {
			markBothWhen(raw, req)
		}
	})
}
