package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
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

// statusFixture is a cluster of two members, n2 leaving, and a third node,
// n3, that owns a shard but is not among the members, with a shard in
// each state.
func statusFixture() ([]client.Member, client.ShardMap) {
	members := []client.Member{
		{Name: "n1", GRPCAddr: "10.0.0.1:7070", GossipAddr: "10.0.0.1:7946", State: client.MemberAlive, ShardsOwned: 2,
			Incarnation: "00c0ffee", NodeState: client.NodeActive},
		{Name: "n2", GRPCAddr: "10.0.0.2:7070", State: client.MemberSuspect, ShardsOwned: 1, NodeState: client.NodeLeaving},
	}
	sm := client.ShardMap{ShardCount: 7, Version: 12, Shards: []client.ShardOwner{
		{Shard: 0, Owner: "n1", OwnerGRPCAddr: "10.0.0.1:7070", Epoch: 3, State: client.ShardServing, Assigned: "n1", Timers: 13, InFlight: 2, Dead: 1},
		{Shard: 1, Owner: "n2", OwnerGRPCAddr: "10.0.0.2:7070", Epoch: 1, Assigned: "n1"},
		{Shard: 2, Owner: "n1", OwnerGRPCAddr: "10.0.0.1:7070", Epoch: 2, State: client.ShardReleasing, Assigned: "n2", Timers: 5},
		{Shard: 3, Epoch: 5, State: client.ShardUnowned, Assigned: "n2"},
		{Shard: 4, Owner: "n1", OwnerGRPCAddr: "10.0.0.1:7070", Epoch: 6, State: client.ShardLoading, Assigned: "n1"},
		{Shard: 5, Owner: "n3", OwnerGRPCAddr: "10.0.0.3:7070", Epoch: 2, State: client.ShardServing, Assigned: "n2", Timers: 4},
		{Shard: 6, Owner: "n2", OwnerGRPCAddr: "10.0.0.2:7070", Epoch: 9, State: client.ShardServing, Assigned: "n2", Timers: 1, Dead: 1},
	}}
	return members, sm
}

func TestStatusOutput(t *testing.T) {
	const members = `MEMBER  GRPC ADDRESS   STATE    NODE STATE  ASSIGNED  OWNED  SERVING  TIMERS  IN FLIGHT  DEAD
n1      10.0.0.1:7070  alive    active      3         3      1        18      2          1
n2      10.0.0.2:7070  suspect  leaving     4         2      1        1       0          1
n3      10.0.0.3:7070  -        -           0         1      1        4       0          0

shards: 7 (map version 12): 2 served where assigned, 4 moving, 1 without an owner
`
	const moving = `
moving:
SHARD  ASSIGNED  OWNER  STATE      EPOCH
1      n1        n2     unknown    1
2      n2        n1     releasing  2
4      n1        n1     loading    6
5      n2        n3     serving    2
`
	const movingFirst = `
moving:
SHARD  ASSIGNED  OWNER  STATE    EPOCH
1      n1        n2     unknown  1
... and 3 more (--limit 0 lists them all)
`
	const unowned = `
without an owner:
SHARD  ASSIGNED  LAST EPOCH
3      n2        5
`
	const shards = `
SHARD  ASSIGNED  OWNER  EPOCH  STATE      TIMERS  IN FLIGHT  DEAD
0      n1        n1     3      serving    13      2          1
1      n1        n2     1      unknown    -       -          -
2      n2        n1     2      releasing  5       0          0
3      n2        -      5      unowned    -       -          -
4      n1        n1     6      loading    -       -          -
5      n2        n3     2      serving    4       0          0
6      n2        n2     9      serving    1       0          1
total                                     23      2          2
`
	tests := []struct {
		name  string
		limit int
		all   bool
		want  string
	}{
		{"all", 0, true, members + moving + unowned + shards},
		{"limit 1", 1, false, members + movingFirst + unowned},
		{"limit above the count", 4, false, members + moving + unowned},
	}
	v := statusViewOf(statusFixture())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeStatus(&b, v, tt.limit, tt.all); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", b.String(), tt.want)
			}
		})
	}
}

// TestStatusJSON checks the documented shape of status --json: its
// fields, and that it decodes to what was encoded.
func TestStatusJSON(t *testing.T) {
	v := statusViewOf(statusFixture())
	var b bytes.Buffer
	if err := writeJSON(&b, v); err != nil {
		t.Fatal(err)
	}
	shard := func(n int, owner, addr string, epoch int, state, assigned string, timers, inFlight, dead int) string {
		if addr != "" {
			addr = fmt.Sprintf(`"owner_grpc_addr":%q,`, addr)
		}
		return fmt.Sprintf(`{"shard":%d,"owner":%q,%s"epoch":%d,"state":%q,"assigned":%q,"timers":%d,"in_flight":%d,"dead":%d}`,
			n, owner, addr, epoch, state, assigned, timers, inFlight, dead)
	}
	s := []string{
		shard(0, "n1", "10.0.0.1:7070", 3, "serving", "n1", 13, 2, 1),
		shard(1, "n2", "10.0.0.2:7070", 1, "unknown", "n1", 0, 0, 0),
		shard(2, "n1", "10.0.0.1:7070", 2, "releasing", "n2", 5, 0, 0),
		shard(3, "", "", 5, "unowned", "n2", 0, 0, 0),
		shard(4, "n1", "10.0.0.1:7070", 6, "loading", "n1", 0, 0, 0),
		shard(5, "n3", "10.0.0.3:7070", 2, "serving", "n2", 4, 0, 0),
		shard(6, "n2", "10.0.0.2:7070", 9, "serving", "n2", 1, 0, 1),
	}
	want := `{"shard_count":7,"version":12,"members":[` +
		`{"name":"n1","grpc_addr":"10.0.0.1:7070","gossip_addr":"10.0.0.1:7946","state":"alive","node_state":"active","incarnation":"00c0ffee",` +
		`"assigned":3,"owned":3,"serving":1,"timers":18,"in_flight":2,"dead":1},` +
		`{"name":"n2","grpc_addr":"10.0.0.2:7070","state":"suspect","node_state":"leaving","assigned":4,"owned":2,"serving":1,"timers":1,"in_flight":0,"dead":1},` +
		`{"name":"n3","grpc_addr":"10.0.0.3:7070","state":"","node_state":"","assigned":0,"owned":1,"serving":1,"timers":4,"in_flight":0,"dead":0}],` +
		`"settled":2,"moving":[` + strings.Join([]string{s[1], s[2], s[4], s[5]}, ",") + `],"unowned":[` + s[3] + `],` +
		`"shards":[` + strings.Join(s, ",") + `]}` + "\n"
	if b.String() != want {
		t.Errorf("JSON, got:\n%s\nwant:\n%s", b.String(), want)
	}
	var back statusView
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, v) {
		t.Errorf("decoded:\n%+v\nencoded:\n%+v", back, v)
	}

	// A settled cluster lists no shard as moving or unowned: [], not null.
	b.Reset()
	if err := writeJSON(&b, statusViewOf(nil, client.ShardMap{})); err != nil {
		t.Fatal(err)
	}
	if want := `{"shard_count":0,"version":0,"members":[],"settled":0,"moving":[],"unowned":[],"shards":[]}` + "\n"; b.String() != want {
		t.Errorf("empty JSON = %s, want %s", b.String(), want)
	}
}
