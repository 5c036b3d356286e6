package store

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		rec  Record
		want *Record // nil: rec itself
	}{
		{"minimal pending", Record{Namespace: "default", ID: "a", Topic: "t", State: Pending}, nil},
		{"every field", Record{
			Namespace: "orders", ID: "o-1", Topic: "orders.timeout", Payload: []byte("{}"),
			Due: 1_700_000_000_000, Next: 1_700_000_005_000, SpecDue: 1_700_000_000_000, Delay: -1,
			Interval: 86_400_000, Created: 1_699_000_000_000, State: Dead, Attempts: 9,
			LastAttempt: 1_700_000_004_000, Reason: "exhausted", OccEpoch: 12, OccSeq: 99,
			Req: 0xfeedface, ReqAt: 1_699_000_000_001,
		}, nil},
		{"empty payload loads as nil", Record{ID: "x", Payload: []byte{}, State: Pending}, &Record{ID: "x", State: Pending}},
		{"binary strings", Record{Namespace: "\xff", ID: "\x00\x01", Topic: "ü", Payload: []byte{0}, State: Pending}, nil},
		{"extremes", Record{
			Due: math.MinInt64, Next: math.MinInt64, SpecDue: math.MaxInt64, Delay: math.MinInt64,
			Interval: math.MaxInt64, Created: math.MinInt64, State: Pending, Attempts: math.MaxUint32,
			LastAttempt: math.MaxInt64, OccEpoch: math.MaxUint64, OccSeq: math.MaxUint64,
			Req: math.MaxUint64, ReqAt: math.MinInt64,
		}, nil},
		{"next far after due", Record{Due: -1 << 61, Next: 1 << 62, State: Pending}, nil},
	}
	for _, tt := range tests {
		want := tt.rec
		if tt.want != nil {
			want = *tt.want
		}
		enc := tt.rec.AppendBinary([]byte("prefix"))
		if !bytes.HasPrefix(enc, []byte("prefix")) {
			t.Fatalf("%s: AppendBinary did not append", tt.name)
		}
		var got Record
		if err := got.UnmarshalBinary(enc[len("prefix"):]); err != nil {
			t.Fatalf("%s: UnmarshalBinary: %v", tt.name, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: decoded\n%#v\nwant\n%#v", tt.name, got, want)
		}
	}
}

func TestRecordCorrupt(t *testing.T) {
	good := Record{Namespace: "n", ID: "i", Topic: "t", Payload: []byte("p"), Due: 5, Next: 6, State: Pending}
	enc := good.AppendBinary(nil)
	dead := good
	dead.State = 4
	tests := map[string][]byte{
		"empty":           nil,
		"unknown version": append([]byte{3}, enc[1:]...),
		"trailing byte":   append(append([]byte(nil), enc...), 0),
		"unknown state":   dead.AppendBinary(nil),
		"next before due": (&Record{Due: 5, Next: 4, State: Pending}).AppendBinary(nil),
	}
	for i := 1; i < len(enc); i++ {
		tests[fmt.Sprintf("truncated to %d bytes", i)] = enc[:i]
	}
	for name, data := range tests {
		var r Record
		if err := r.UnmarshalBinary(data); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: UnmarshalBinary(%q) = %v, want ErrCorrupt", name, data, err)
		}
	}
}

// FuzzRecord checks that decoding arbitrary bytes never panics, that every
// error wraps ErrCorrupt, and that whatever decodes encodes to bytes that
// decode to the same record.
func FuzzRecord(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{recordVersion})
	for _, r := range []Record{
		{Namespace: "n", ID: "i", Topic: "t", Payload: []byte("p"), Due: 5, Next: 6, State: Pending},
		{Due: math.MinInt64, Next: math.MinInt64, State: Dead, Attempts: math.MaxUint32, Reason: "r", OccEpoch: math.MaxUint64},
	} {
		f.Add(r.AppendBinary(nil))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Record
		if err := r.UnmarshalBinary(data); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		enc := r.AppendBinary(nil)
		var again Record
		if err := again.UnmarshalBinary(enc); err != nil {
			t.Fatalf("re-encoding of %#v does not decode: %v", r, err)
		}
		if !reflect.DeepEqual(r, again) {
			t.Fatalf("round trip changed the record:\n%#v\n%#v", r, again)
		}
	})
}

// TestRecordVersion1 checks that records written before Req and ReqAt
// existed still load, with both zero.
func TestRecordVersion1(t *testing.T) {
	rec := Record{Namespace: "n", ID: "i", Topic: "t", Payload: []byte("p"), Due: 5, Next: 6, Delay: -1, State: Pending, OccEpoch: 3, OccSeq: 4}
	enc := rec.AppendBinary(nil)
	// Version 2 appends Req and ReqAt, one byte each when zero.
	v1 := append([]byte{1}, enc[1:len(enc)-2]...)
	var got Record
	if err := got.UnmarshalBinary(v1); err != nil {
		t.Fatalf("UnmarshalBinary(version 1): %v", err)
	}
	if !reflect.DeepEqual(got, rec) {
		t.Errorf("decoded\n%#v\nwant\n%#v", got, rec)
	}
}
