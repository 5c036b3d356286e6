package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/timerd/timerd/client"
)

// errorText describes err for stderr. A failed call names its gRPC code
// and gives the server's message, e.g. "NotFound: timer not found: ...".
func errorText(err error) string {
	var ce *client.Error
	if errors.As(err, &ce) {
		msg := ce.Message
		if msg == "" {
			if kind := client.KindOf(ce.Op, ce.Code); kind != nil {
				msg = kind.Error()
			}
		}
		text := fmt.Sprintf("%s: %s", ce.Code, msg)
		if err == error(ce) {
			return text
		}
		// Keep what wraps the call's error, such as "connect to ADDR: ".
		if prefix, ok := strings.CutSuffix(err.Error(), ce.Error()); ok {
			return prefix + text
		}
		return text
	}
	if se, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		st := se.GRPCStatus()
		return fmt.Sprintf("%s: %s", st.Code(), st.Message())
	}
	return err.Error()
}

// errorView is the JSON object that --json prints on stdout when a
// command fails as a whole (the items of a batch have resultView):
//
//	{"command":"get","code":"NotFound","error":"NotFound: timer not found: ..."}
//
// Command is the command's name ("" for a mistake before one); Code the
// gRPC code name of the failed call ("NotFound", "Unavailable", ...),
// "Usage" for a mistake on the command line (exit code 2), or "Unknown"
// for a failure of timerctl's own, such as a payload file it cannot read;
// Error the message that goes to stderr too.
type errorView struct {
	Command string `json:"command"`
	Code    string `json:"code"`
	Error   string `json:"error"`
}

// codeUsage is errorView's code for a mistake on the command line.
const codeUsage = "Usage"

// errorCode is the gRPC code name of err, "Unknown" when it is not a
// call's.
func errorCode(err error) string {
	return status.Code(err).String()
}

// errorText describes err of a command run against a.addr: as errorText
// does, except that an address where nothing answers is said in so many
// words, with the cause after it.
func (a *app) errorText(err error) string {
	if status.Code(err) != codes.Unavailable {
		return errorText(err)
	}
	msg := err.Error()
	if _, dial, ok := strings.Cut(msg, "Error while dialing: "); ok {
		// dial tcp 127.0.0.1:7070: connect: connection refused"
		dial = strings.TrimRight(dial, `"`)
		cause := dial[strings.LastIndex(dial, ": ")+2:]
		return fmt.Sprintf("nothing answers at %s: is timerd running there? (%s)", a.addr, cause)
	}
	if strings.Contains(msg, "name resolver error") || strings.Contains(msg, "no such host") {
		return fmt.Sprintf("nothing answers at %s: its host name does not resolve (%s)", a.addr, errorText(err))
	}
	return errorText(err)
}

// writeJSON writes v as one line of JSON.
func writeJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// jsonTime formats t for JSON: RFC 3339 in UTC with as many fractional
// digits as needed; "" for the zero time.
func jsonTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// humanTime formats t for people: RFC 3339 in UTC, to the millisecond.
func humanTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// relative says how far t is from now: "in 30s", "1.5s ago" or "now".
func relative(t, now time.Time) string {
	d := t.Sub(now)
	abs := d.Abs()
	if abs < time.Minute {
		abs = abs.Round(time.Millisecond)
	} else {
		abs = abs.Round(time.Second)
	}
	switch {
	case abs == 0:
		return "now"
	case d > 0:
		return "in " + abs.String()
	}
	return abs.String() + " ago"
}

// humanDue is a due time with how far it is from now.
func humanDue(t, now time.Time) string {
	return fmt.Sprintf("%s (%s)", humanTime(t), relative(t, now))
}

// payloadView holds a payload in JSON: always, whatever its bytes, in
// standard base64 (RFC 4648, with padding) in "payload_base64"; "" for an
// empty payload. A payload is bytes to timerd, and one field with one
// encoding is what a script can decode without looking at it first.
type payloadView struct {
	PayloadBase64 string `json:"payload_base64"`
}

func payloadViewOf(p []byte) payloadView {
	return payloadView{PayloadBase64: base64.StdEncoding.EncodeToString(p)}
}

// humanPayload returns a payload for a table: as text when it is
// printable UTF-8, otherwise in base64, with the label saying which.
func humanPayload(p []byte) (label, value string) {
	switch {
	case len(p) == 0:
		return "payload", "(empty)"
	case printable(p):
		return "payload", string(p)
	}
	return "payload (base64)", base64.StdEncoding.EncodeToString(p)
}

// printable reports whether p is valid UTF-8 made of printable characters
// (spaces included, other control characters such as newlines not).
func printable(p []byte) bool {
	if !utf8.Valid(p) {
		return false
	}
	for _, r := range string(p) {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// timerView is a timer in JSON.
type timerView struct {
	Namespace string `json:"namespace"`
	ID        string `json:"id"`
	Topic     string `json:"topic"`
	payloadView
	State       string `json:"state"`
	Attempts    uint32 `json:"attempts"`
	DueTime     string `json:"due_time"`
	Interval    string `json:"interval,omitempty"`
	Shard       uint32 `json:"shard"`
	CreatedTime string `json:"created_time"`
}

func timerViewOf(t client.TimerInfo) timerView {
	v := timerView{
		Namespace:   t.Namespace,
		ID:          t.ID,
		Topic:       t.Topic,
		payloadView: payloadViewOf(t.Payload),
		State:       t.State.String(),
		Attempts:    t.Attempts,
		DueTime:     jsonTime(t.Due),
		Shard:       t.Shard,
		CreatedTime: jsonTime(t.Created),
	}
	if t.Interval > 0 {
		v.Interval = t.Interval.String()
	}
	return v
}

// writeTimer writes a timer as a two-column table.
func writeTimer(w io.Writer, t client.TimerInfo, now time.Time) error {
	tw := newTable(w)
	interval := "none (one-shot)"
	if t.Interval > 0 {
		interval = t.Interval.String()
	}
	label, payload := humanPayload(t.Payload)
	rows := [][2]string{
		{"namespace", t.Namespace},
		{"id", t.ID},
		{"topic", t.Topic},
		{"state", t.State.String()},
		{"attempts", fmt.Sprint(t.Attempts)},
		{"due", humanDue(t.Due, now)},
		{"interval", interval},
		{"shard", fmt.Sprint(t.Shard)},
		{"created", humanDue(t.Created, now)},
		{label, payload},
	}
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

// deliveryView is a delivery in JSON, as subscribe prints it.
type deliveryView struct {
	DeliveryID string `json:"delivery_id"`
	Namespace  string `json:"namespace"`
	ID         string `json:"id"`
	Topic      string `json:"topic"`
	payloadView
	DueTime   string `json:"due_time"`
	FiredTime string `json:"fired_time"`
	Attempt   uint32 `json:"attempt"`
	Shard     uint32 `json:"shard"`
	Epoch     uint64 `json:"epoch"`
}

func deliveryViewOf(d *client.Delivery) deliveryView {
	return deliveryView{
		DeliveryID:  d.DeliveryID,
		Namespace:   d.Namespace,
		ID:          d.ID,
		Topic:       d.Topic,
		payloadView: payloadViewOf(d.Payload),
		DueTime:     jsonTime(d.Due),
		FiredTime:   jsonTime(d.Fired),
		Attempt:     d.Attempt,
		Shard:       d.Shard,
		Epoch:       d.Epoch,
	}
}

// dueView is the answer of schedule and reschedule in JSON.
type dueView struct {
	ID      string `json:"id"`
	DueTime string `json:"due_time"`
}

// resultView is one item of a batch in JSON. Code is the gRPC code name
// ("OK", "NotFound", ...).
type resultView struct {
	ID      string `json:"id"`
	Code    string `json:"code"`
	DueTime string `json:"due_time,omitempty"`
	Error   string `json:"error,omitempty"`
}

type resultsView struct {
	Results []resultView `json:"results"`
}

type replayView struct {
	Replayed uint64       `json:"replayed"`
	Results  []resultView `json:"results"`
}

func resultViews(res []client.Result) []resultView {
	out := make([]resultView, len(res))
	for i, r := range res {
		out[i] = resultView{ID: r.ID, Code: status.Code(r.Err).String(), DueTime: jsonTime(r.Due)}
		if r.Err != nil {
			out[i].Error = errorText(r.Err)
		}
	}
	return out
}

// writeResults writes the successful items of a batch, one per line:
// "cancelled ID", or "replayed ID: due TIME (in D)" when the item has a
// due time.
func writeResults(w io.Writer, verb string, res []client.Result, now time.Time) error {
	for _, r := range res {
		if r.Err != nil {
			continue
		}
		var err error
		if r.Due.IsZero() {
			_, err = fmt.Fprintf(w, "%s %s\n", verb, r.ID)
		} else {
			_, err = fmt.Fprintf(w, "%s %s: due %s\n", verb, r.ID, humanDue(r.Due, now))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// deadLetterView is a dead letter in JSON.
type deadLetterView struct {
	timerView
	LastAttemptTime string `json:"last_attempt_time"`
	Reason          string `json:"reason"`
}

type deadLettersView struct {
	DeadLetters []deadLetterView `json:"dead_letters"`
	// More is set when there are more dead letters than were listed.
	More bool `json:"more"`
}

func deadLetterViewOf(dl client.DeadLetter) deadLetterView {
	return deadLetterView{timerViewOf(dl.TimerInfo), jsonTime(dl.LastAttempt), dl.Reason}
}

// writeDeadLetters writes dead letters as a table.
func writeDeadLetters(w io.Writer, list []client.DeadLetter, now time.Time) error {
	if len(list) == 0 {
		_, err := fmt.Fprintln(w, "no dead letters")
		return err
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tTOPIC\tATTEMPTS\tDUE\tLAST ATTEMPT\tREASON")
	for _, dl := range list {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", dl.ID, dl.Topic, dl.Attempts,
			humanTime(dl.Due), humanDue(dl.LastAttempt, now), dl.Reason)
	}
	return tw.Flush()
}

// memberView is a cluster member in status's JSON. Name, the addresses,
// State, NodeState and Incarnation are the member's as the node at
// --addr lists it; the counts are of the shard map: Assigned the shards
// the ring gives it, Owned the shards it holds (whatever their state),
// Serving those of them it serves, and Timers, InFlight and Dead the
// counts it reported for the shards it holds loaded.
type memberView struct {
	Name        string `json:"name"`
	GRPCAddr    string `json:"grpc_addr"`
	GossipAddr  string `json:"gossip_addr,omitempty"`
	State       string `json:"state"`
	NodeState   string `json:"node_state"`
	Incarnation string `json:"incarnation,omitempty"`
	Assigned    int    `json:"assigned"`
	Owned       int    `json:"owned"`
	Serving     int    `json:"serving"`
	Timers      uint64 `json:"timers"`
	InFlight    uint64 `json:"in_flight"`
	Dead        uint64 `json:"dead"`
}

// shardView is one shard of the shard map in JSON, with the counts its
// owner reported in the shard map (zero when it reported none).
type shardView struct {
	Shard         uint32 `json:"shard"`
	Owner         string `json:"owner"`
	OwnerGRPCAddr string `json:"owner_grpc_addr,omitempty"`
	Epoch         uint64 `json:"epoch"`
	State         string `json:"state"`
	Assigned      string `json:"assigned,omitempty"`
	Timers        uint64 `json:"timers"`
	InFlight      uint64 `json:"in_flight"`
	Dead          uint64 `json:"dead"`
}

// counted tells whether the owner of the shard has its timers loaded, so
// that its counts mean what they say.
func (s shardView) counted() bool {
	return s.State == client.ShardServing.String() || s.State == client.ShardReleasing.String()
}

// settled tells whether the shard is where the ring puts it: served by
// the node it is assigned to. A shard with an owner that is not settled
// is moving; one without an owner is neither.
func (s shardView) settled() bool {
	return s.Owner != "" && s.Owner == s.Assigned && s.State == client.ShardServing.String()
}

// statusView is the answer of status, and its JSON, one object:
//
//	{"shard_count":1024,"version":3135,
//	 "members":[{"name","grpc_addr","gossip_addr","state","node_state",
//	   "incarnation","assigned","owned","serving","timers","in_flight","dead"}],
//	 "settled":1020,
//	 "moving":[SHARD...],"unowned":[SHARD...],"shards":[SHARD...]}
//
// where each SHARD is {"shard","owner","owner_grpc_addr","epoch","state",
// "assigned","timers","in_flight","dead"}. Settled counts the shards served
// by the node the ring assigns them to; Moving lists the shards that have
// an owner but are not settled (held by another node than the assigned
// one, or loading, releasing, or of an owner that did not answer,
// "unknown"); Unowned the shards nobody holds; Shards every shard. The
// lists are in shard order and never null. Fields are only ever added.
type statusView struct {
	ShardCount uint32       `json:"shard_count"`
	Version    uint64       `json:"version"`
	Members    []memberView `json:"members"`
	Settled    int          `json:"settled"`
	Moving     []shardView  `json:"moving"`
	Unowned    []shardView  `json:"unowned"`
	Shards     []shardView  `json:"shards"`
}

// statusViewOf makes the status of the members and shard map the node at
// --addr returned. A node the shard map names as owner or assignee but
// the member list lacks is listed too, with an empty state.
func statusViewOf(members []client.Member, sm client.ShardMap) statusView {
	v := statusView{
		ShardCount: sm.ShardCount,
		Version:    sm.Version,
		Members:    make([]memberView, 0, len(members)),
		Moving:     []shardView{},
		Unowned:    []shardView{},
		Shards:     make([]shardView, len(sm.Shards)),
	}
	index := make(map[string]int) // member name -> index in v.Members
	member := func(name string) *memberView {
		i, ok := index[name]
		if !ok {
			i = len(v.Members)
			index[name] = i
			v.Members = append(v.Members, memberView{Name: name})
		}
		return &v.Members[i]
	}
	for _, m := range members {
		*member(m.Name) = memberView{
			Name:        m.Name,
			GRPCAddr:    m.GRPCAddr,
			GossipAddr:  m.GossipAddr,
			State:       m.State.String(),
			NodeState:   m.NodeState.String(),
			Incarnation: m.Incarnation,
		}
	}
	for i, s := range sm.Shards {
		sv := shardView{
			Shard:         s.Shard,
			Owner:         s.Owner,
			OwnerGRPCAddr: s.OwnerGRPCAddr,
			Epoch:         s.Epoch,
			State:         s.State.String(),
			Assigned:      s.Assigned,
			Timers:        s.Timers,
			InFlight:      s.InFlight,
			Dead:          s.Dead,
		}
		v.Shards[i] = sv
		if sv.Assigned != "" {
			member(sv.Assigned).Assigned++
		}
		switch {
		case sv.Owner == "":
			v.Unowned = append(v.Unowned, sv)
			continue
		case sv.settled():
			v.Settled++
		default:
			v.Moving = append(v.Moving, sv)
		}
		m := member(sv.Owner)
		if m.GRPCAddr == "" {
			m.GRPCAddr = sv.OwnerGRPCAddr
		}
		m.Owned++
		if sv.State == client.ShardServing.String() {
			m.Serving++
		}
		if sv.counted() {
			m.Timers, m.InFlight, m.Dead = m.Timers+sv.Timers, m.InFlight+sv.InFlight, m.Dead+sv.Dead
		}
	}
	return v
}

// writeStatus writes the members with their shards and timers, a summary
// of the shard map, and the shards that are moving and those without an
// owner, at most limit of each (0: all). With all it writes every shard
// too, with its timer counts.
func writeStatus(w io.Writer, v statusView, limit int, all bool) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "MEMBER\tGRPC ADDRESS\tSTATE\tNODE STATE\tASSIGNED\tOWNED\tSERVING\tTIMERS\tIN FLIGHT\tDEAD")
	for _, m := range v.Members {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", m.Name, orDash(m.GRPCAddr), orDash(m.State), orDash(m.NodeState),
			m.Assigned, m.Owned, m.Serving, m.Timers, m.InFlight, m.Dead)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintf(w, "\nshards: %d (map version %d): %d served where assigned, %d moving, %d without an owner\n",
		v.ShardCount, v.Version, v.Settled, len(v.Moving), len(v.Unowned))
	if len(v.Moving) > 0 {
		fmt.Fprintln(w, "\nmoving:")
		fmt.Fprintln(tw, "SHARD\tASSIGNED\tOWNER\tSTATE\tEPOCH")
		for _, s := range upTo(v.Moving, limit) {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\n", s.Shard, orDash(s.Assigned), s.Owner, s.State, s.Epoch)
		}
		if err := flushMore(w, tw, len(v.Moving), limit); err != nil {
			return err
		}
	}
	if len(v.Unowned) > 0 {
		fmt.Fprintln(w, "\nwithout an owner:")
		fmt.Fprintln(tw, "SHARD\tASSIGNED\tLAST EPOCH")
		for _, s := range upTo(v.Unowned, limit) {
			fmt.Fprintf(tw, "%d\t%s\t%d\n", s.Shard, orDash(s.Assigned), s.Epoch)
		}
		if err := flushMore(w, tw, len(v.Unowned), limit); err != nil {
			return err
		}
	}
	if !all {
		return nil
	}

	fmt.Fprintln(w)
	var timers, inFlight, dead uint64
	fmt.Fprintln(tw, "SHARD\tASSIGNED\tOWNER\tEPOCH\tSTATE\tTIMERS\tIN FLIGHT\tDEAD")
	for _, s := range v.Shards {
		if !s.counted() {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t-\t-\t-\n", s.Shard, orDash(s.Assigned), orDash(s.Owner), s.Epoch, s.State)
			continue
		}
		timers, inFlight, dead = timers+s.Timers, inFlight+s.InFlight, dead+s.Dead
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%d\t%d\t%d\n", s.Shard, orDash(s.Assigned), orDash(s.Owner), s.Epoch, s.State, s.Timers, s.InFlight, s.Dead)
	}
	fmt.Fprintf(tw, "total\t\t\t\t\t%d\t%d\t%d\n", timers, inFlight, dead)
	return tw.Flush()
}

// upTo returns the first limit entries of list, all of them when limit
// is 0.
func upTo[T any](list []T, limit int) []T {
	if limit > 0 && len(list) > limit {
		return list[:limit]
	}
	return list
}

// flushMore flushes the table and says how many of n rows it left out
// for limit.
func flushMore(w io.Writer, tw *tabwriter.Writer, n, limit int) error {
	if err := tw.Flush(); err != nil {
		return err
	}
	if limit > 0 && n > limit {
		_, err := fmt.Fprintf(w, "... and %d more (--limit 0 lists them all)\n", n-limit)
		return err
	}
	return nil
}

// orDash returns s, or "-" when s is empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
}
