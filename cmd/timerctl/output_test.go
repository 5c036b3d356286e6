package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/timerd/timerd/client"
)

var (
	t0  = time.Date(2030, 1, 2, 15, 4, 5, 0, time.UTC)
	due = t0.Add(30 * time.Second)
)

func TestRelative(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "now"},
		{400 * time.Microsecond, "now"},
		{30 * time.Second, "in 30s"},
		{1500 * time.Millisecond, "in 1.5s"},
		{1234567 * time.Microsecond, "in 1.235s"},
		{-2 * time.Millisecond, "2ms ago"},
		{90*time.Minute + 400*time.Millisecond, "in 1h30m0s"},
		{-26 * time.Hour, "26h0m0s ago"},
	}
	for _, tt := range tests {
		if got := relative(t0.Add(tt.d), t0); got != tt.want {
			t.Errorf("relative(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestTimes(t *testing.T) {
	local := time.FixedZone("X", 3600)
	tm := time.Date(2030, 1, 2, 16, 4, 5, 123456789, local)
	if got, want := humanTime(tm), "2030-01-02T15:04:05.123Z"; got != want {
		t.Errorf("humanTime = %q, want %q", got, want)
	}
	if got, want := jsonTime(tm), "2030-01-02T15:04:05.123456789Z"; got != want {
		t.Errorf("jsonTime = %q, want %q", got, want)
	}
	if got := jsonTime(time.Time{}); got != "" {
		t.Errorf("jsonTime(zero) = %q, want empty", got)
	}
	if got := humanTime(time.Time{}); got != "-" {
		t.Errorf("humanTime(zero) = %q, want -", got)
	}
}

func TestPayloadViews(t *testing.T) {
	tests := []struct {
		name      string
		payload   []byte
		wantJSON  string
		wantLabel string
		wantHuman string
	}{
		{"empty", nil, `{"payload_base64":""}`, "payload", "(empty)"},
		{"text", []byte("hello world"), `{"payload_base64":"aGVsbG8gd29ybGQ="}`, "payload", "hello world"},
		{"unicode", []byte("héllo ✓"), `{"payload_base64":"aMOpbGxvIOKckw=="}`, "payload", "héllo ✓"},
		{"newline is UTF-8 but not printable", []byte("a\nb"), `{"payload_base64":"YQpi"}`, "payload (base64)", "YQpi"},
		{"binary", []byte{0, 1, 0xff}, `{"payload_base64":"AAH/"}`, "payload (base64)", "AAH/"},
		{"invalid UTF-8", []byte{'a', 0xc3}, `{"payload_base64":"YcM="}`, "payload (base64)", "YcM="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeJSON(&b, payloadViewOf(tt.payload)); err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(b.String()); got != tt.wantJSON {
				t.Errorf("JSON = %s, want %s", got, tt.wantJSON)
			}
			label, value := humanPayload(tt.payload)
			if label != tt.wantLabel || value != tt.wantHuman {
				t.Errorf("human = %q %q, want %q %q", label, value, tt.wantLabel, tt.wantHuman)
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"plain", errors.New("boom"), "boom"},
		{"status", status.Error(codes.NotFound, "no such timer"), "NotFound: no such timer"},
		{"client error", clientError(codes.NotFound, `timer not found: namespace "default" id "x"`),
			`NotFound: timer not found: namespace "default" id "x"`},
		{"client error without message", clientError(codes.NotFound, ""), "NotFound: timer not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := errorText(tt.err); got != tt.want {
				t.Errorf("errorText = %q, want %q", got, tt.want)
			}
		})
	}
}

// clientError returns the *client.Error the client makes of a status.
func clientError(code codes.Code, msg string) error {
	return &client.Error{Op: "get", Namespace: "default", ID: "x", Code: code, Message: msg}
}

func TestWriteTimer(t *testing.T) {
	info := client.TimerInfo{
		Namespace: "default", ID: "order-1", Topic: "orders",
		Payload: []byte("hello"), Due: due, State: client.StatePending,
		Shard: 7, Created: t0.Add(-2 * time.Second),
	}
	var b bytes.Buffer
	if err := writeTimer(&b, info, t0); err != nil {
		t.Fatal(err)
	}
	want := `namespace  default
id         order-1
topic      orders
state      pending
attempts   0
due        2030-01-02T15:04:35.000Z (in 30s)
interval   none (one-shot)
shard      7
created    2030-01-02T15:04:03.000Z (2s ago)
payload    hello
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}

	info.Payload = []byte{0xff}
	info.Interval = time.Minute
	info.State = client.StateDead
	info.Attempts = 3
	b.Reset()
	if err := writeJSON(&b, timerViewOf(info)); err != nil {
		t.Fatal(err)
	}
	wantJSON := `{"namespace":"default","id":"order-1","topic":"orders","payload_base64":"/w==","state":"dead","attempts":3,` +
		`"due_time":"2030-01-02T15:04:35Z","interval":"1m0s","shard":7,"created_time":"2030-01-02T15:04:03Z"}` + "\n"
	if b.String() != wantJSON {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), wantJSON)
	}
}

func TestDeliveryJSON(t *testing.T) {
	d := &client.Delivery{
		DeliveryID: "AgEB", Namespace: "default", ID: "a", Topic: "t",
		Payload: []byte("hi"), Due: due, Fired: due.Add(1500 * time.Microsecond),
		Attempt: 2, Shard: 3, Epoch: 9,
	}
	var b bytes.Buffer
	if err := writeJSON(&b, deliveryViewOf(d)); err != nil {
		t.Fatal(err)
	}
	want := `{"delivery_id":"AgEB","namespace":"default","id":"a","topic":"t","payload_base64":"aGk=",` +
		`"due_time":"2030-01-02T15:04:35Z","fired_time":"2030-01-02T15:04:35.0015Z","attempt":2,"shard":3,"epoch":9}` + "\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestResults(t *testing.T) {
	res := []client.Result{
		{ID: "a", Due: due},
		{ID: "b", Err: &client.Error{Op: "cancel", ID: "b", Code: codes.NotFound, Message: "timer not found"}},
		{ID: "c"},
	}
	var b bytes.Buffer
	if err := writeResults(&b, "done", res, t0); err != nil {
		t.Fatal(err)
	}
	want := "done a: due 2030-01-02T15:04:35.000Z (in 30s)\ndone c\n"
	if b.String() != want {
		t.Errorf("human:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	if err := writeJSON(&b, replayView{Replayed: 1, Results: resultViews(res)}); err != nil {
		t.Fatal(err)
	}
	wantJSON := `{"replayed":1,"results":[{"id":"a","code":"OK","due_time":"2030-01-02T15:04:35Z"},` +
		`{"id":"b","code":"NotFound","error":"NotFound: timer not found"},{"id":"c","code":"OK"}]}` + "\n"
	if b.String() != wantJSON {
		t.Errorf("JSON:\n%s\nwant:\n%s", b.String(), wantJSON)
	}
	b.Reset()
	if err := writeJSON(&b, replayView{Results: resultViews(nil)}); err != nil {
		t.Fatal(err)
	}
	if got, want := b.String(), `{"replayed":0,"results":[]}`+"\n"; got != want {
		t.Errorf("empty JSON = %s, want %s", got, want)
	}
}

func TestWriteDeadLetters(t *testing.T) {
	var b bytes.Buffer
	if err := writeDeadLetters(&b, nil, t0); err != nil {
		t.Fatal(err)
	}
	if b.String() != "no dead letters\n" {
		t.Errorf("empty list: %q", b.String())
	}
	b.Reset()
	list := []client.DeadLetter{{
		TimerInfo:   client.TimerInfo{ID: "x", Topic: "orders", Attempts: 3, Due: t0.Add(-time.Minute), State: client.StateDead},
		LastAttempt: t0.Add(-10 * time.Second),
		Reason:      "no ack after 3 attempts",
	}}
	if err := writeDeadLetters(&b, list, t0); err != nil {
		t.Fatal(err)
	}
	want := `ID  TOPIC   ATTEMPTS  DUE                       LAST ATTEMPT                        REASON
x   orders  3         2030-01-02T15:03:05.000Z  2030-01-02T15:03:55.000Z (10s ago)  no ack after 3 attempts
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestStatusOutput(t *testing.T) {
	members := []client.Member{
		{Name: "n1", GRPCAddr: "10.0.0.1:7070", GossipAddr: "10.0.0.1:7946", State: client.MemberAlive, ShardsOwned: 2,
			Incarnation: "00c0ffee", NodeState: client.NodeActive},
		{Name: "n2", GRPCAddr: "10.0.0.2:7070", State: client.MemberSuspect, ShardsOwned: 1, NodeState: client.NodeLeaving},
	}
	sm := client.ShardMap{ShardCount: 5, Version: 12, Shards: []client.ShardOwner{
		{Shard: 0, Owner: "n1", OwnerGRPCAddr: "10.0.0.1:7070", Epoch: 3, State: client.ShardServing, Assigned: "n1", Timers: 13, InFlight: 2, Dead: 1},
		{Shard: 1, Owner: "n2", OwnerGRPCAddr: "10.0.0.2:7070", Epoch: 1, Assigned: "n1"},
		{Shard: 2, Owner: "n1", OwnerGRPCAddr: "10.0.0.1:7070", Epoch: 2, State: client.ShardReleasing, Assigned: "n2", Timers: 5},
		{Shard: 3, Epoch: 5, State: client.ShardUnowned, Assigned: "n2"},
		{Shard: 4, Owner: "n1", OwnerGRPCAddr: "10.0.0.1:7070", Epoch: 6, State: client.ShardLoading, Assigned: "n1"},
	}}

	v := statusViewOf(members, sm)
	var b bytes.Buffer
	if err := writeStatus(&b, v); err != nil {
		t.Fatal(err)
	}
	want := `MEMBER  GRPC ADDRESS   GOSSIP ADDRESS  STATE    NODE STATE  SHARDS OWNED
n1      10.0.0.1:7070  10.0.0.1:7946   alive    active      2
n2      10.0.0.2:7070  -               suspect  leaving     1

shards: 5 (map version 12), without an owner: 1
OWNER  SHARDS
n1     3
n2     1

SHARD  OWNER  EPOCH  STATE      TIMERS  IN FLIGHT  DEAD
0      n1     3      serving    13      2          1
1      n2     1      unknown    -       -          -
2      n1     2      releasing  5       0          0
3      -      5      unowned    -       -          -
4      n1     6      loading    -       -          -
total                           18      2          1
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}

	b.Reset()
	if err := writeJSON(&b, v); err != nil {
		t.Fatal(err)
	}
	wantJSON := `{"members":[{"name":"n1","grpc_addr":"10.0.0.1:7070","gossip_addr":"10.0.0.1:7946","state":"alive","node_state":"active","incarnation":"00c0ffee","shards_owned":2},` +
		`{"name":"n2","grpc_addr":"10.0.0.2:7070","state":"suspect","node_state":"leaving","shards_owned":1}],"shard_count":5,"version":12,` +
		`"owned":{"n1":3,"n2":1},"unowned":1,"shards":[` +
		`{"shard":0,"owner":"n1","owner_grpc_addr":"10.0.0.1:7070","epoch":3,"state":"serving","assigned":"n1","timers":13,"in_flight":2,"dead":1},` +
		`{"shard":1,"owner":"n2","owner_grpc_addr":"10.0.0.2:7070","epoch":1,"state":"unknown","assigned":"n1","timers":0,"in_flight":0,"dead":0},` +
		`{"shard":2,"owner":"n1","owner_grpc_addr":"10.0.0.1:7070","epoch":2,"state":"releasing","assigned":"n2","timers":5,"in_flight":0,"dead":0},` +
		`{"shard":3,"owner":"","epoch":5,"state":"unowned","assigned":"n2","timers":0,"in_flight":0,"dead":0},` +
		`{"shard":4,"owner":"n1","owner_grpc_addr":"10.0.0.1:7070","epoch":6,"state":"loading","assigned":"n1","timers":0,"in_flight":0,"dead":0}]}` + "\n"
	if b.String() != wantJSON {
		t.Errorf("JSON, got:\n%s\nwant:\n%s", b.String(), wantJSON)
	}
}
