package server

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/ring"
	"github.com/timerd/timerd/shard"
)

// timerService implements pb.TimerServiceServer over the node's shards.
type timerService struct {
	pb.UnimplementedTimerServiceServer
	s *Server
}

// part is the items of one batch that belong to one shard, by index.
type part struct {
	shard uint32
	items []int
}

// split groups the n items of a batch by shard. shardOf returns an
// item's shard, or false for an item that already failed and goes
// nowhere. Items keep their request order within a part, so items that
// share an id are applied in request order.
func (s *Server) split(n int, shardOf func(i int) (uint32, bool)) []part {
	where := make(map[uint32]int) // shard -> index in parts
	var parts []part
	for i := range n {
		id, ok := shardOf(i)
		if !ok {
			continue
		}
		k, seen := where[id]
		if !seen {
			k = len(parts)
			where[id] = k
			parts = append(parts, part{shard: id})
		}
		parts[k].items = append(parts[k].items, i)
	}
	return parts
}

// splitIDs groups the ids of a batch of namespace by shard; an invalid
// id fails its item in out at once and goes nowhere.
func (s *Server) splitIDs(namespace string, ids []string, out []*pb.ItemResult) []part {
	return s.split(len(ids), func(i int) (uint32, bool) {
		if err := shard.ValidID(ids[i]); err != nil {
			out[i] = itemResult(ids[i], shard.Result{Err: err})
			return 0, false
		}
		return s.shardOf(namespace, ids[i]), true
	})
}

// fanout runs fn for every element, concurrently, and returns when all
// are done: a shard call waits for its group commit, and the parts'
// commits should share cycles rather than follow one another.
func fanout[T any](all []T, fn func(T)) {
	if len(all) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, p := range all[1:] {
		wg.Go(func() { fn(p) })
	}
	fn(all[0])
	wg.Wait()
}

// spread places the parts of a batch: it fails the items of the parts no
// node serves now, starts sending the items that peers serve to them
// (send, one call per peer; each answer goes to set, or fail when the
// call failed whole), and returns the parts this node serves, with a
// wait for the peers' answers.
func (s *Server) spread(ctx context.Context, method string, parts []part,
	send func(ctx context.Context, c pb.TimerServiceClient, items []int) ([]*pb.ItemResult, error),
	set func(i int, r *pb.ItemResult), fail func(i int, err error)) (local []localPart, wait func()) {
	pl := s.place(ctx, parts)
	for _, p := range pl.down {
		err := notServed(ctx, p.shard)
		for _, i := range p.items {
			fail(i, err)
		}
	}
	var wg sync.WaitGroup
	if len(pl.remote) > 0 {
		wg.Go(func() { s.forward(ctx, method, pl.remote, send, set, fail) })
	}
	return pl.local, wg.Wait
}

// onShards runs call for every part whose shard this node serves,
// concurrently (see fanout), and spreads the other parts (see spread).
func (s *Server) onShards(ctx context.Context, method string, parts []part, call func(sh *shard.Shard, p part),
	send func(ctx context.Context, c pb.TimerServiceClient, items []int) ([]*pb.ItemResult, error),
	set func(i int, r *pb.ItemResult), fail func(i int, err error)) {
	local, wait := s.spread(ctx, method, parts, send, set, fail)
	fanout(local, func(lp localPart) { call(lp.sh, lp.part) })
	wait()
}

// requestNamespace returns the namespace of a request ("" means the
// default), or the INVALID_ARGUMENT that fails it.
func requestNamespace(ns string) (string, error) {
	ns = namespaceOr(ns)
	if err := shard.ValidNamespace(ns); err != nil {
		return "", invalid("namespace", "%v", err)
	}
	return ns, nil
}

// topicFilter checks an optional topic filter ("" matches every topic).
func topicFilter(topic string) error {
	if topic == "" {
		return nil
	}
	if err := shard.ValidTopic(topic); err != nil {
		return invalid("topic", "%v", err)
	}
	return nil
}

// checkBatch fails a request whose batch field holds n items.
func (s *Server) checkBatch(field string, n int) error {
	switch {
	case n == 0:
		return invalid(field, "must hold at least one item")
	case n > s.cfg.MaxBatch:
		return invalid(field, "holds %d items; the limit is %d", n, s.cfg.MaxBatch)
	}
	return nil
}

// checkSpec checks a spec as its shard will, so that a bad item fails
// with INVALID_ARGUMENT even while its shard is not loaded here (and
// would otherwise get UNAVAILABLE, which clients retry).
func (s *Server) checkSpec(sp *shard.Spec, now time.Time) error {
	if err := s.cfg.Shard.ValidateSpec(sp); err != nil {
		return err
	}
	_, err := s.cfg.Shard.ResolveDue(sp.Due, sp.Delay, now)
	return err
}

// maxRequestID is the longest request_id accepted, in bytes.
const maxRequestID = 128

// requestID returns the hash of a Schedule's or Reschedule's request_id
// that shards keep with the timers it touches (0 for none), or the
// INVALID_ARGUMENT that fails the request. A shard compares it only with
// the hash kept for the same timer, so a false match needs two request
// ids of one timer to collide in 64 bits.
func requestID(id string) (uint64, error) {
	switch {
	case id == "":
		return 0, nil
	case len(id) > maxRequestID:
		return 0, invalid("request_id", "is %d bytes long; the limit is %d", len(id), maxRequestID)
	}
	return max(xxhash.Sum64String(id), 1), nil // 0 means none
}

func (s *Server) shardOf(namespace, id string) uint32 {
	return ring.Shard(namespace, id, s.cfg.Shards)
}

// Schedule implements pb.TimerServiceServer.
func (t *timerService) Schedule(ctx context.Context, req *pb.ScheduleRequest) (*pb.ScheduleResponse, error) {
	s := t.s
	ns, err := requestNamespace(req.GetNamespace())
	if err != nil {
		return nil, err
	}
	in := req.GetTimers()
	if err := s.checkBatch("timers", len(in)); err != nil {
		return nil, err
	}
	rid, err := requestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	out := make([]*pb.ItemResult, len(in))
	specs := make([]shard.Spec, len(in))
	now := time.Now()
	parts := s.split(len(in), func(i int) (uint32, bool) {
		sp, err := toSpec(in[i], ns)
		if err == nil {
			err = s.checkSpec(&sp, now)
		}
		if err != nil {
			out[i] = itemResult(in[i].GetId(), shard.Result{Err: err})
			return 0, false
		}
		sp.Req = rid
		specs[i] = sp
		return s.shardOf(sp.Namespace, sp.ID), true
	})
	// Submit to every shard first, then wait: the shards' writes then
	// share group commit cycles, with no goroutine per shard. The items
	// that peers serve go to them meanwhile.
	local, forwarded := s.spread(ctx, "Schedule", parts,
		func(ctx context.Context, c pb.TimerServiceClient, items []int) ([]*pb.ItemResult, error) {
			resp, err := c.Schedule(ctx, &pb.ScheduleRequest{Namespace: req.GetNamespace(), Timers: pick(in, items), RequestId: req.GetRequestId()})
			return resp.GetResults(), err
		},
		func(i int, r *pb.ItemResult) { out[i] = r },
		func(i int, err error) { out[i] = itemResult(specs[i].ID, shard.Result{Err: err}) })
	local, release := s.limits.admit(local, specs, out)
	pending := make([]*shard.Submitted, len(local))
	for k, lp := range local {
		pending[k] = lp.sh.Submit(pick(specs, lp.items))
	}
	release() // the shards count what they took
	count := scheduledCounter{m: s.metrics}
	slab := make([]pb.ItemResult, len(in))
	times := make([]timestamppb.Timestamp, len(in))
	for k, p := range local {
		res := pending[k].Wait(ctx)
		for j, i := range p.items {
			out[i] = fillResult(&slab[i], &times[i], specs[i].ID, res[j])
			if res[j].Err == nil {
				count.add(specs[i].Namespace)
			}
		}
	}
	count.flush()
	forwarded()
	return &pb.ScheduleResponse{Results: out}, nil
}

// Reschedule implements pb.TimerServiceServer.
func (t *timerService) Reschedule(ctx context.Context, req *pb.RescheduleRequest) (*pb.RescheduleResponse, error) {
	s := t.s
	ns, err := requestNamespace(req.GetNamespace())
	if err != nil {
		return nil, err
	}
	in := req.GetItems()
	if err := s.checkBatch("items", len(in)); err != nil {
		return nil, err
	}
	rid, err := requestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	out := make([]*pb.ItemResult, len(in))
	moves := make([]shard.Move, len(in))
	now := time.Now()
	parts := s.split(len(in), func(i int) (uint32, bool) {
		it := in[i]
		due, delay, err := toWhen(it.GetDueTime(), it.GetDelay(), it.GetWhen() != nil)
		if err == nil {
			_, err = s.cfg.Shard.ResolveDue(due, delay, now)
		}
		if err == nil {
			err = shard.ValidID(it.GetId())
		}
		if err != nil {
			out[i] = itemResult(it.GetId(), shard.Result{Err: err})
			return 0, false
		}
		moves[i] = shard.Move{ID: it.GetId(), Due: due, Delay: delay, Req: rid}
		return s.shardOf(ns, it.GetId()), true
	})
	s.onShards(ctx, "Reschedule", parts, func(sh *shard.Shard, p part) {
		res := sh.Reschedule(ctx, ns, pick(moves, p.items))
		for j, i := range p.items {
			out[i] = itemResult(moves[i].ID, res[j])
		}
	}, func(ctx context.Context, c pb.TimerServiceClient, items []int) ([]*pb.ItemResult, error) {
		resp, err := c.Reschedule(ctx, &pb.RescheduleRequest{Namespace: ns, Items: pick(in, items), RequestId: req.GetRequestId()})
		return resp.GetResults(), err
	}, func(i int, r *pb.ItemResult) { out[i] = r },
		func(i int, err error) { out[i] = itemResult(moves[i].ID, shard.Result{Err: err}) })
	return &pb.RescheduleResponse{Results: out}, nil
}

// Cancel implements pb.TimerServiceServer.
func (t *timerService) Cancel(ctx context.Context, req *pb.CancelRequest) (*pb.CancelResponse, error) {
	s := t.s
	ns, err := requestNamespace(req.GetNamespace())
	if err != nil {
		return nil, err
	}
	ids := req.GetIds()
	if err := s.checkBatch("ids", len(ids)); err != nil {
		return nil, err
	}
	out := make([]*pb.ItemResult, len(ids))
	parts := s.splitIDs(ns, ids, out)
	s.onShards(ctx, "Cancel", parts, func(sh *shard.Shard, p part) {
		errs := sh.Cancel(ctx, ns, pick(ids, p.items))
		for j, i := range p.items {
			out[i] = itemResult(ids[i], shard.Result{Err: errs[j]})
		}
	}, func(ctx context.Context, c pb.TimerServiceClient, items []int) ([]*pb.ItemResult, error) {
		resp, err := c.Cancel(ctx, &pb.CancelRequest{Namespace: ns, Ids: pick(ids, items)})
		return resp.GetResults(), err
	}, func(i int, r *pb.ItemResult) { out[i] = r },
		func(i int, err error) { out[i] = itemResult(ids[i], shard.Result{Err: err}) })
	return &pb.CancelResponse{Results: out}, nil
}

// Get implements pb.TimerServiceServer.
func (t *timerService) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, error) {
	ns, err := requestNamespace(req.GetNamespace())
	if err != nil {
		return nil, err
	}
	if err := shard.ValidID(req.GetId()); err != nil {
		return nil, invalid("id", "%v", err)
	}
	s := t.s
	id := s.shardOf(ns, req.GetId())
	r := s.router.route(id)
	if r.sh == nil {
		if r.peer == "" || isForwarded(ctx) {
			return nil, rpcError(notServed(ctx, id))
		}
		return forwardOne(ctx, s, "Get", r.peer, func(ctx context.Context, c pb.TimerServiceClient) (*pb.GetResponse, error) {
			return c.Get(ctx, req)
		})
	}
	tm, err := r.sh.Get(ns, req.GetId())
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.GetResponse{Timer: toTimer(&tm)}, nil
}

// Limits of ListDeadLetters pages.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
	// maxPageBytes bounds a page's payloads, so that a page of big dead
	// letters stays under the clients' default 4 MiB receive limit.
	maxPageBytes = 3 << 20
)

// ListDeadLetters implements pb.TimerServiceServer. Pages walk the
// shards in order and each shard's dead letters in id order; the page
// token says where the last page stopped.
func (t *timerService) ListDeadLetters(ctx context.Context, req *pb.ListDeadLettersRequest) (*pb.ListDeadLettersResponse, error) {
	s := t.s
	ns, err := requestNamespace(req.GetNamespace())
	if err != nil {
		return nil, err
	}
	topic := req.GetTopic()
	if err := topicFilter(topic); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, invalid("page_size", "must not be negative, got %d", size)
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	at, after := uint32(0), ""
	if tok := req.GetPageToken(); tok != "" {
		var err error
		if at, after, err = parsePageToken(tok, ns, topic, s.cfg.Shards); err != nil {
			return nil, invalid("page_token", "%v", err)
		}
	}
	resp := &pb.ListDeadLettersResponse{}
	bytes := 0
	first := at // a forwarded walk serves from here while this node has the shards
	for at < s.cfg.Shards {
		if err := ctx.Err(); err != nil {
			return nil, rpcError(err)
		}
		r := s.router.route(at)
		if r.sh == nil {
			switch {
			case isForwarded(ctx) && at > first:
				// The caller asks the next shard's owner itself.
				resp.NextPageToken = pageToken(at, after, ns, topic)
				return resp, nil
			case r.peer == "" || isForwarded(ctx):
				return nil, rpcError(notServed(ctx, at))
			}
			next, err := s.listRemote(ctx, r.peer, req, at, after, size-len(resp.DeadLetters), resp)
			if err != nil {
				return nil, err
			}
			if next == "" {
				return resp, nil // the peer walked to the last shard
			}
			nat, nafter, err := parsePageToken(next, ns, topic, s.cfg.Shards)
			if err != nil || nat < at || nat == at && len(resp.DeadLetters) == 0 {
				return nil, status.Errorf(codes.Unavailable, "dead letters of shard %d: its owner %s did not walk on (token %q): retry", at, r.peer, next)
			}
			if len(resp.DeadLetters) >= size {
				resp.NextPageToken = next
				return resp, nil
			}
			at, after = nat, nafter
			continue
		}
		sh := r.sh
		dead, more, err := sh.DeadLetters(ns, topic, after, size-len(resp.DeadLetters))
		if err != nil {
			return nil, rpcError(err)
		}
		for i := range dead {
			resp.DeadLetters = append(resp.DeadLetters, &pb.DeadLetter{
				Timer:           toTimer(&dead[i]),
				LastAttemptTime: optionalTime(dead[i].LastAttempt),
				Reason:          dead[i].Reason,
			})
			bytes += len(dead[i].Payload) + len(dead[i].ID)
			if bytes >= maxPageBytes && (i < len(dead)-1 || more) {
				resp.NextPageToken = pageToken(at, dead[i].ID, ns, topic)
				return resp, nil
			}
		}
		if more {
			resp.NextPageToken = pageToken(at, dead[len(dead)-1].ID, ns, topic)
			return resp, nil
		}
		if len(resp.DeadLetters) == size && at+1 < s.cfg.Shards {
			resp.NextPageToken = pageToken(at+1, "", ns, topic)
			return resp, nil
		}
		at, after = at+1, ""
	}
	return resp, nil
}

// listRemote asks the peer at addr for dead letters from shard at (after
// id after), at most size of them, and appends them to resp. It returns
// the peer's next page token: "" when the peer walked to the last shard.
func (s *Server) listRemote(ctx context.Context, addr string, req *pb.ListDeadLettersRequest, at uint32, after string, size int, resp *pb.ListDeadLettersResponse) (string, error) {
	fr := proto.CloneOf(req)
	fr.PageToken = pageToken(at, after, namespaceOr(req.GetNamespace()), req.GetTopic())
	fr.PageSize = int32(size)
	got, err := forwardOne(ctx, s, "ListDeadLetters", addr, func(ctx context.Context, c pb.TimerServiceClient) (*pb.ListDeadLettersResponse, error) {
		return c.ListDeadLetters(ctx, fr)
	})
	if err != nil {
		return "", err
	}
	resp.DeadLetters = append(resp.DeadLetters, got.GetDeadLetters()...)
	return got.GetNextPageToken(), nil
}

func optionalTime(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// pageTokenVersion is the first byte of every page token.
const pageTokenVersion = 1

// pageToken encodes where a ListDeadLetters page stopped: the shard to
// continue in, the last id returned there, and the filter the walk
// belongs to.
func pageToken(shardID uint32, after, ns, topic string) string {
	b := []byte{pageTokenVersion}
	b = binary.AppendUvarint(b, uint64(shardID))
	for _, f := range []string{ns, topic, after} {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// parsePageToken decodes a page token made for ns and topic.
func parsePageToken(tok, ns, topic string, shards uint32) (uint32, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) == 0 || b[0] != pageTokenVersion {
		return 0, "", errInvalidToken
	}
	b = b[1:]
	at, n := binary.Uvarint(b)
	if n <= 0 || at >= uint64(shards) {
		return 0, "", errInvalidToken
	}
	b = b[n:]
	var fields [3]string
	for i := range fields {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return 0, "", errInvalidToken
		}
		fields[i] = string(b[n : n+int(l)])
		b = b[n+int(l):]
	}
	if len(b) != 0 {
		return 0, "", errInvalidToken
	}
	if fields[0] != ns || fields[1] != topic {
		return 0, "", errTokenFilter
	}
	return uint32(at), fields[2], nil
}

// ReplayDeadLetters implements pb.TimerServiceServer.
func (t *timerService) ReplayDeadLetters(ctx context.Context, req *pb.ReplayDeadLettersRequest) (*pb.ReplayDeadLettersResponse, error) {
	s := t.s
	ns, err := requestNamespace(req.GetNamespace())
	if err != nil {
		return nil, err
	}
	topic := req.GetTopic()
	if err := topicFilter(topic); err != nil {
		return nil, err
	}
	ids := req.GetIds()
	if len(ids) > s.cfg.MaxBatch {
		return nil, invalid("ids", "holds %d items; the limit is %d", len(ids), s.cfg.MaxBatch)
	}
	var due time.Time
	var delay time.Duration
	if req.GetWhen() != nil {
		var err error
		if due, delay, err = toWhen(req.GetDueTime(), req.GetDelay(), true); err != nil {
			return nil, invalid("when", "%v", err)
		}
	}
	// Checked here, for the whole request, because a bad time would fail
	// every item alike (and, with no ids, silently).
	if _, err := s.cfg.Shard.ResolveDue(due, delay, time.Now()); err != nil {
		return nil, invalid("when", "%v", err)
	}

	resp := &pb.ReplayDeadLettersResponse{}
	var mu sync.Mutex // guards resp.Replayed
	if len(ids) == 0 {
		return s.replayAll(ctx, req, ns, topic, due, delay)
	}
	resp.Results = make([]*pb.ItemResult, len(ids))
	parts := s.splitIDs(ns, ids, resp.Results)
	s.onShards(ctx, "ReplayDeadLetters", parts, func(sh *shard.Shard, p part) {
		res, n, _ := sh.Replay(ctx, ns, pick(ids, p.items), topic, due, delay) // failures are in res
		for j, i := range p.items {
			resp.Results[i] = itemResult(ids[i], res[j])
		}
		mu.Lock()
		resp.Replayed += uint64(n)
		mu.Unlock()
	}, func(ctx context.Context, c pb.TimerServiceClient, items []int) ([]*pb.ItemResult, error) {
		fr := proto.CloneOf(req)
		fr.Ids = pick(ids, items)
		r, err := c.ReplayDeadLetters(ctx, fr)
		if err == nil {
			mu.Lock()
			resp.Replayed += r.GetReplayed()
			mu.Unlock()
		}
		return r.GetResults(), err
	}, func(i int, r *pb.ItemResult) { resp.Results[i] = r },
		func(i int, err error) { resp.Results[i] = itemResult(ids[i], shard.Result{Err: err}) })
	return resp, nil
}

// replayAll replays every dead letter of namespace (and topic, if set):
// on each shard this node serves, and through one forwarded call per
// peer for the shards the peers serve. A request a peer forwarded names
// the shards to replay here.
func (s *Server) replayAll(ctx context.Context, req *pb.ReplayDeadLettersRequest, ns, topic string, due time.Time, delay time.Duration) (*pb.ReplayDeadLettersResponse, error) {
	var shards []uint32
	if isForwarded(ctx) {
		md, _ := metadata.FromIncomingContext(ctx)
		for _, v := range md.Get(forwardShardsKey) {
			for f := range strings.SplitSeq(v, ",") {
				id, err := strconv.ParseUint(f, 10, 32)
				if err != nil || id >= uint64(s.cfg.Shards) {
					return nil, status.Errorf(codes.InvalidArgument, "%s: bad shard %q", forwardShardsKey, f)
				}
				shards = append(shards, uint32(id))
			}
		}
	} else {
		for i := range s.cfg.Shards {
			shards = append(shards, i)
		}
	}
	// A part per shard, whose one item is the shard's index in shards:
	// the placement's remote items are then the shards each peer serves.
	parts := make([]part, len(shards))
	for i, id := range shards {
		parts[i] = part{shard: id, items: []int{i}}
	}
	pl := s.place(ctx, parts)
	resp := &pb.ReplayDeadLettersResponse{}
	var mu sync.Mutex // guards resp.Replayed and failed
	var failed error  // the first shard's failure
	record := func(n uint64, err error) {
		mu.Lock()
		defer mu.Unlock()
		resp.Replayed += n
		if err != nil && failed == nil {
			failed = err
		}
	}
	for _, p := range pl.down {
		record(0, notServed(ctx, p.shard))
	}
	var wg sync.WaitGroup
	for addr, items := range pl.remote {
		list := make([]string, len(items))
		for j, i := range items {
			list[j] = strconv.FormatUint(uint64(shards[i]), 10)
		}
		wg.Go(func() {
			r, err := forwardOne(ctx, s, "ReplayDeadLetters", addr, func(ctx context.Context, c pb.TimerServiceClient) (*pb.ReplayDeadLettersResponse, error) {
				ctx = metadata.AppendToOutgoingContext(ctx, forwardShardsKey, strings.Join(list, ","))
				return c.ReplayDeadLetters(ctx, req)
			})
			record(r.GetReplayed(), err)
		})
	}
	fanout(pl.local, func(lp localPart) {
		_, n, err := lp.sh.Replay(ctx, ns, nil, topic, due, delay)
		record(uint64(n), err)
	})
	wg.Wait()
	if failed != nil {
		// Replaying again is safe: what was replayed is no longer a dead
		// letter.
		return nil, rpcError(fmt.Errorf("%d dead letters replayed, then: %w", resp.Replayed, failed))
	}
	return resp, nil
}

// pick returns the elements of all at the indexes idx.
func pick[T any](all []T, idx []int) []T {
	out := make([]T, len(idx))
	for j, i := range idx {
		out[j] = all[i]
	}
	return out
}
