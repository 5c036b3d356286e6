package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/logline"
)

// A holding is when one process may dispatch one shard under one epoch,
// as its own log says at debug level: from its "shard firing" line
// (written once the lease is held and the shard loaded, before the
// firing loop starts) until the earlier of its "shard stopped firing" line (the firing loop,
// which alone dispatches, has ended) and that line's valid_until (the
// lease the shard last confirmed: past it the shard fires nothing, even
// if, paused, it learns only later that it lost the lease). A process
// that died without the stop line held until it died; one still running
// at the end of the run holds on.
//
// Invariant (docs/ARCHITECTURE.md): the holdings of one shard under
// different epochs never overlap, and a later holding has a higher epoch.
// A lease is granted only once the previous one was released (after its
// loop stopped) or lapsed in Redis (after its valid_until, by at least
// the clock-drift allowance), and all the processes of a run read one
// clock, so any overlap beyond the log's millisecond resolution is two
// processes that could dispatch the same shard at once.
type holding struct {
	node  string
	shard uint32
	epoch uint64
	from  time.Time
	// until is zero while the process holds the shard at the end of the
	// run.
	until time.Time
	// stopped says the log had the stop line; cause is its err.
	stopped bool
	cause   string
}

// holdResolution is how far two holdings may seem to overlap because the
// log's times are truncated to the millisecond.
const holdResolution = time.Millisecond

// readHoldings reads the holdings in the log of node (a timerd started
// with --log-level debug) at path. died is when the process ended
// without a chance to log (kill -9), or zero: its open holdings end
// then.
func readHoldings(node, path string, died time.Time) ([]holding, error) {
	type key struct {
		shard uint32
		epoch uint64
	}
	open := make(map[key]int) // index in out
	var out []holding
	var bad error
	err := eachLogLine(path, func(l map[string]string) bool {
		msg := l["msg"]
		if msg != "shard firing" && msg != "shard stopped firing" {
			return true
		}
		at, err1 := logline.Time(l["time"])
		valid, err2 := logline.Time(l["valid_until"])
		shard, err3 := strconv.ParseUint(l["shard"], 10, 32)
		epoch, err4 := strconv.ParseUint(l["epoch"], 10, 64)
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			bad = fmt.Errorf("%s: %q line: %w", path, msg, err)
			return false
		}
		k := key{uint32(shard), epoch}
		if msg == "shard firing" {
			open[k] = len(out)
			out = append(out, holding{node: node, shard: k.shard, epoch: epoch, from: at})
			return true
		}
		i, ok := open[k]
		if !ok {
			bad = fmt.Errorf("%s: shard %d stopped firing under epoch %d, which it never began firing", path, shard, epoch)
			return false
		}
		delete(open, k)
		out[i].until, out[i].stopped, out[i].cause = minTime(at, valid), true, l["err"]
		return true
	})
	if err = errors.Join(err, bad); err != nil {
		return nil, err
	}
	if !died.IsZero() {
		for _, i := range open {
			out[i].until = died
		}
	}
	return out, nil
}

// eachLogLine calls fn with the fields of each line of the log at path,
// until fn returns false.
func eachLogLine(path string, fn func(map[string]string) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if !fn(logline.Parse(sc.Text())) {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// overlappingHoldings returns, one line each, the holdings of a shard
// that overlap one of another epoch by more than holdResolution, and
// those that begin after a holding of a higher epoch.
func overlappingHoldings(hs []holding) []string {
	byShard := make(map[uint32][]holding)
	for _, h := range hs {
		byShard[h.shard] = append(byShard[h.shard], h)
	}
	var out []string
	for _, s := range slices.Sorted(maps.Keys(byShard)) {
		list := byShard[s]
		slices.SortFunc(list, func(a, b holding) int { return a.from.Compare(b.from) })
		// last is the holding, of those begun so far, that ends last.
		var last *holding
		for i := range list {
			h := &list[i]
			switch {
			case last == nil:
			case last.until.IsZero() || h.from.Sub(last.until) < -holdResolution:
				out = append(out, fmt.Sprintf("shard %d: %s held it under epoch %d %s, and %s began firing it under epoch %d at %s",
					s, last.node, last.epoch, spanString(*last), h.node, h.epoch, h.from.Format(logline.TimeLayout)))
			case h.epoch <= last.epoch:
				out = append(out, fmt.Sprintf("shard %d: %s began firing it under epoch %d at %s, after %s held epoch %d",
					s, h.node, h.epoch, h.from.Format(logline.TimeLayout), last.node, last.epoch))
			}
			if last == nil || endsAfter(*h, *last) {
				last = h
			}
		}
	}
	return out
}

// endsAfter reports whether a ends after b; a holding that has not
// ended ends after every one that has.
func endsAfter(a, b holding) bool {
	if a.until.IsZero() || b.until.IsZero() {
		return a.until.IsZero() && !b.until.IsZero()
	}
	return a.until.After(b.until)
}

func spanString(h holding) string {
	if h.until.IsZero() {
		return "from " + h.from.Format(logline.TimeLayout) + " on"
	}
	return "from " + h.from.Format(logline.TimeLayout) + " to " + h.until.Format(logline.TimeLayout)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// TestHoldings: the holdings read from logs as timerd writes them, and
// the overlaps found in them. It runs without TIMERD_CHAOS: it is the
// arithmetic of the single-holder check.
func TestHoldings(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 18, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// A line of a node's log: firing (stop false) or stopped firing.
	type line struct {
		ms           int
		stop         bool
		shard        uint32
		epoch        uint64
		validMS      int
		err          string
		unrelatedMsg string
	}
	type proc struct {
		name   string
		lines  []line
		diedMS int // 0: still running
	}
	tests := []struct {
		name  string
		procs []proc
		want  []string // substrings of the problems, in order
		held  int
	}{
		{"handover", []proc{
			{"a", []line{{ms: 0, shard: 1, epoch: 1, validMS: 2000}, {ms: 5000, stop: true, shard: 1, epoch: 1, validMS: 6000, err: "closed"}}, 0},
			{"b", []line{{ms: 5001, shard: 1, epoch: 2, validMS: 7000}, {unrelatedMsg: "shard acquired", ms: 5002}}, 0},
		}, nil, 2},
		{"lapse: the paused owner's valid_until ends it", []proc{
			{"a", []line{{ms: 0, shard: 1, epoch: 1, validMS: 2000}, {ms: 9000, stop: true, shard: 1, epoch: 1, validMS: 2000, err: "fenced"}}, 0},
			{"b", []line{{ms: 2100, shard: 1, epoch: 2, validMS: 4000}}, 0},
		}, nil, 2},
		{"within the log's resolution", []proc{
			{"a", []line{{ms: 0, shard: 1, epoch: 1, validMS: 2000}, {ms: 500, stop: true, shard: 1, epoch: 1, validMS: 2000}}, 0},
			{"b", []line{{ms: 499, shard: 1, epoch: 2, validMS: 2499}}, 0},
		}, nil, 2},
		{"killed: held until it died", []proc{
			{"a", []line{{ms: 0, shard: 1, epoch: 1, validMS: 2000}}, 1000},
			{"b", []line{{ms: 3000, shard: 1, epoch: 2, validMS: 5000}}, 0},
		}, nil, 2},
		{"overlap", []proc{
			{"a", []line{{ms: 0, shard: 1, epoch: 1, validMS: 2000}, {ms: 1500, stop: true, shard: 1, epoch: 1, validMS: 2000}}, 0},
			{"b", []line{{ms: 1000, shard: 1, epoch: 2, validMS: 3000}}, 0},
		}, []string{"shard 1: a held it under epoch 1 from 2026-12-05T18:00:00.000Z to 2026-12-05T18:00:01.500Z, and b began firing it under epoch 2"}, 2},
		{"still holding at the end", []proc{
			{"a", []line{{ms: 0, shard: 4, epoch: 1, validMS: 2000}}, 0},
			{"b", []line{{ms: 9000, shard: 4, epoch: 2, validMS: 11000}}, 0},
		}, []string{"shard 4: a held it under epoch 1 from 2026-12-05T18:00:00.000Z on"}, 2},
		{"epoch going back", []proc{
			{"a", []line{{ms: 0, shard: 2, epoch: 5, validMS: 2000}, {ms: 100, stop: true, shard: 2, epoch: 5, validMS: 2000}}, 0},
			{"b", []line{{ms: 200, shard: 2, epoch: 4, validMS: 2200}}, 0},
		}, []string{"shard 2: b began firing it under epoch 4"}, 2},
		{"a long holding spans a later short one", []proc{
			{"a", []line{{ms: 0, shard: 3, epoch: 1, validMS: 2000}, {ms: 9000, stop: true, shard: 3, epoch: 1, validMS: 9500}}, 0},
			{"b", []line{{ms: 100, shard: 3, epoch: 2, validMS: 2000}, {ms: 200, stop: true, shard: 3, epoch: 2, validMS: 2000}}, 0},
			{"c", []line{{ms: 300, shard: 3, epoch: 3, validMS: 2000}}, 0},
		}, []string{"and b began firing it under epoch 2", "and c began firing it under epoch 3"}, 3},
		{"shards apart", []proc{
			{"a", []line{{ms: 0, shard: 1, epoch: 1, validMS: 2000}}, 0},
			{"b", []line{{ms: 0, shard: 2, epoch: 1, validMS: 2000}}, 0},
		}, nil, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			var hs []holding
			for _, p := range tt.procs {
				path := filepath.Join(dir, p.name+".log")
				f, err := os.Create(path)
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range p.lines {
					msg := "shard firing"
					if l.stop {
						msg = "shard stopped firing"
					}
					var attrs []slog.Attr
					if l.unrelatedMsg != "" {
						msg = l.unrelatedMsg
					} else {
						attrs = append(attrs, slog.Any("shard", l.shard), slog.Any("epoch", l.epoch), slog.Time("valid_until", at(l.validMS)))
						if l.stop {
							attrs = append(attrs, slog.String("err", l.err))
						}
					}
					r := slog.NewRecord(at(l.ms), slog.LevelDebug, msg, 0)
					r.AddAttrs(attrs...)
					if err := slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}).Handle(context.Background(), r); err != nil {
						t.Fatal(err)
					}
				}
				f.Close()
				var died time.Time
				if p.diedMS > 0 {
					died = at(p.diedMS)
				}
				got, err := readHoldings(p.name, path, died)
				if err != nil {
					t.Fatal(err)
				}
				hs = append(hs, got...)
			}
			if len(hs) != tt.held {
				t.Fatalf("read %d holdings, want %d: %+v", len(hs), tt.held, hs)
			}
			problems := overlappingHoldings(hs)
			if len(problems) != len(tt.want) {
				t.Fatalf("problems %q, want %d like %q", problems, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(problems[i], w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, problems[i], w)
				}
			}
		})
	}
}

// TestPastLeaseDeliveries: a delivery under a paused owner's old epoch is
// late only if it was fired after that lease's validity and received
// after the shard's first delivery under a higher epoch.
func TestPastLeaseDeliveries(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 18, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	old := map[uint32]uint64{1: 5, 2: 9}
	validity := map[uint32]time.Time{1: at(2000), 2: at(2000)}
	d := func(id string, shard uint32, epoch uint64, firedMS, receivedMS int) delivery {
		return delivery{id: id, shard: shard, epoch: epoch, fired: at(firedMS), received: at(receivedMS)}
	}
	tests := []struct {
		name      string
		got       []delivery
		wantLate  []string
		wantStale int
	}{
		{"before the takeover", []delivery{d("a", 1, 5, 1000, 1001), d("b", 1, 6, 4000, 4001)}, nil, 0},
		{"in time, received after the takeover", []delivery{d("b", 1, 6, 4000, 4001), d("a", 1, 5, 1999, 9000)}, nil, 1},
		{"fired past validity after the takeover", []delivery{d("b", 1, 6, 4000, 4001), d("a", 1, 5, 2001, 9000)}, []string{"a"}, 1},
		{"past validity but no takeover seen", []delivery{d("a", 1, 5, 2001, 9000)}, nil, 0},
		{"another shard's takeover does not count", []delivery{d("b", 2, 10, 4000, 4001), d("a", 1, 5, 2001, 9000)}, nil, 0},
		{"a shard not paused", []delivery{d("b", 3, 2, 4000, 4001), d("a", 3, 1, 9000, 9000)}, nil, 0},
		{"in order of receipt", []delivery{d("n", 2, 10, 3000, 3000), d("y", 2, 9, 5000, 7000), d("x", 2, 9, 4000, 6000)}, []string{"x", "y"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			late, stale := pastLeaseDeliveries(tt.got, old, validity)
			var ids []string
			for _, d := range late {
				ids = append(ids, d.id)
			}
			if !slices.Equal(ids, tt.wantLate) || stale != tt.wantStale {
				t.Errorf("late %v, stale %d; want %v, %d", ids, stale, tt.wantLate, tt.wantStale)
			}
		})
	}
}
