package timerdv1_test

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	timerdv1 "github.com/timerd/timerd/api/timerd/v1"
)

func TestScheduleRequestRoundTrip(t *testing.T) {
	due := timestamppb.New(time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC))

	tests := []struct {
		name string
		spec *timerdv1.TimerSpec
		// wantDue and wantDelay say which variant of the `when` oneof must
		// survive the round trip.
		wantDue   bool
		wantDelay bool
	}{
		{
			name: "due_time",
			spec: &timerdv1.TimerSpec{
				Namespace: "billing",
				Id:        "invoice-42",
				Topic:     "invoices.due",
				When:      &timerdv1.TimerSpec_DueTime{DueTime: due},
				Payload:   []byte{0x00, 0x01, 0xfe, 0xff},
			},
			wantDue: true,
		},
		{
			name: "delay with interval",
			spec: &timerdv1.TimerSpec{
				Id:       "heartbeat",
				Topic:    "hb",
				When:     &timerdv1.TimerSpec_Delay{Delay: durationpb.New(90 * time.Second)},
				Interval: durationpb.New(time.Minute),
			},
			wantDelay: true,
		},
		{
			name: "zero delay",
			spec: &timerdv1.TimerSpec{
				Id:    "now",
				Topic: "t",
				When:  &timerdv1.TimerSpec_Delay{Delay: durationpb.New(0)},
			},
			wantDelay: true,
		},
		{
			name: "when unset",
			spec: &timerdv1.TimerSpec{Id: "no-when", Topic: "t"},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := &timerdv1.ScheduleRequest{Timers: []*timerdv1.TimerSpec{tt.spec}}
			b, err := proto.Marshal(in)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			out := new(timerdv1.ScheduleRequest)
			if err := proto.Unmarshal(b, out); err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if !proto.Equal(in, out) {
				t.Fatalf("round trip changed the message:\n in: %v\nout: %v", in, out)
			}
			if len(out.GetTimers()) != 1 {
				t.Fatalf("got %d timers, want 1", len(out.GetTimers()))
			}
			got := out.GetTimers()[0]
			if gotDue := got.GetDueTime() != nil; gotDue != tt.wantDue {
				t.Errorf("due_time set = %v, want %v", gotDue, tt.wantDue)
			}
			if gotDelay := got.GetDelay() != nil; gotDelay != tt.wantDelay {
				t.Errorf("delay set = %v, want %v", gotDelay, tt.wantDelay)
			}
			if tt.wantDue && !got.GetDueTime().AsTime().Equal(due.AsTime()) {
				t.Errorf("due_time = %v, want %v", got.GetDueTime().AsTime(), due.AsTime())
			}
		})
	}
}

// TestOneofLastWins checks the documented wire behaviour of the `when` oneof:
// when both variants are present on the wire, the last one wins, so a decoded
// TimerSpec never holds both.
func TestOneofLastWins(t *testing.T) {
	withDue, err := proto.Marshal(&timerdv1.TimerSpec{
		When: &timerdv1.TimerSpec_DueTime{DueTime: timestamppb.New(time.Unix(1, 0))},
	})
	if err != nil {
		t.Fatal(err)
	}
	withDelay, err := proto.Marshal(&timerdv1.TimerSpec{
		When: &timerdv1.TimerSpec_Delay{Delay: durationpb.New(time.Second)},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := new(timerdv1.TimerSpec)
	if err := proto.Unmarshal(append(withDue, withDelay...), got); err != nil {
		t.Fatal(err)
	}
	if got.GetDueTime() != nil || got.GetDelay().AsDuration() != time.Second {
		t.Fatalf("got when = %v, want only delay 1s", got.GetWhen())
	}
}

func TestServiceContract(t *testing.T) {
	type method struct {
		name                           string
		input, output                  protoreflect.FullName
		clientStreaming, serverStreams bool
	}
	tests := []struct {
		service protoreflect.FullName
		methods []method
	}{
		{
			service: "timerd.v1.TimerService",
			methods: []method{
				{name: "Schedule", input: "timerd.v1.ScheduleRequest", output: "timerd.v1.ScheduleResponse"},
				{name: "Reschedule", input: "timerd.v1.RescheduleRequest", output: "timerd.v1.RescheduleResponse"},
				{name: "Cancel", input: "timerd.v1.CancelRequest", output: "timerd.v1.CancelResponse"},
				{name: "Get", input: "timerd.v1.GetRequest", output: "timerd.v1.GetResponse"},
				{name: "Subscribe", input: "timerd.v1.SubscribeRequest", output: "timerd.v1.SubscribeResponse", clientStreaming: true, serverStreams: true},
				{name: "ListDeadLetters", input: "timerd.v1.ListDeadLettersRequest", output: "timerd.v1.ListDeadLettersResponse"},
				{name: "ReplayDeadLetters", input: "timerd.v1.ReplayDeadLettersRequest", output: "timerd.v1.ReplayDeadLettersResponse"},
			},
		},
		{
			service: "timerd.v1.ClusterService",
			methods: []method{
				{name: "Members", input: "timerd.v1.MembersRequest", output: "timerd.v1.MembersResponse"},
				{name: "ShardMap", input: "timerd.v1.ShardMapRequest", output: "timerd.v1.ShardMapResponse"},
			},
		},
	}

	for _, tt := range tests {
		t.Run(string(tt.service), func(t *testing.T) {
			d, err := protoregistry.GlobalFiles.FindDescriptorByName(tt.service)
			if err != nil {
				t.Fatalf("service not registered: %v", err)
			}
			sd, ok := d.(protoreflect.ServiceDescriptor)
			if !ok {
				t.Fatalf("%s is a %T, want a service", tt.service, d)
			}

			var got, want []string
			for i := range sd.Methods().Len() {
				got = append(got, string(sd.Methods().Get(i).Name()))
			}
			for _, m := range tt.methods {
				want = append(want, m.name)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("methods = %v, want %v", got, want)
			}

			for _, m := range tt.methods {
				md := sd.Methods().ByName(protoreflect.Name(m.name))
				if md.Input().FullName() != m.input || md.Output().FullName() != m.output {
					t.Errorf("%s: %s -> %s, want %s -> %s", m.name,
						md.Input().FullName(), md.Output().FullName(), m.input, m.output)
				}
				if md.IsStreamingClient() != m.clientStreaming || md.IsStreamingServer() != m.serverStreams {
					t.Errorf("%s: client streaming %v, server streaming %v; want %v, %v", m.name,
						md.IsStreamingClient(), md.IsStreamingServer(), m.clientStreaming, m.serverStreams)
				}
			}
		})
	}
}

// TestOneofNames checks that the oneofs that are part of the contract have
// the documented names and members.
func TestOneofNames(t *testing.T) {
	tests := []struct {
		message protoreflect.FullName
		oneof   protoreflect.Name
		fields  []string
	}{
		{"timerd.v1.TimerSpec", "when", []string{"due_time", "delay"}},
		{"timerd.v1.RescheduleItem", "when", []string{"due_time", "delay"}},
		{"timerd.v1.ReplayDeadLettersRequest", "when", []string{"due_time", "delay"}},
		{"timerd.v1.SubscribeRequest", "kind", []string{"subscription", "ack", "release"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.message), func(t *testing.T) {
			mt, err := protoregistry.GlobalTypes.FindMessageByName(tt.message)
			if err != nil {
				t.Fatalf("message not registered: %v", err)
			}
			od := mt.Descriptor().Oneofs().ByName(tt.oneof)
			if od == nil {
				t.Fatalf("no oneof %q", tt.oneof)
			}
			var got []string
			for i := range od.Fields().Len() {
				got = append(got, string(od.Fields().Get(i).Name()))
			}
			if !slices.Equal(got, tt.fields) {
				t.Errorf("oneof %s fields = %v, want %v", tt.oneof, got, tt.fields)
			}
		})
	}
}
