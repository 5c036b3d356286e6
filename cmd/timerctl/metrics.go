package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// shardCounts is how many timers of one shard are in each state, as a
// node's metrics (timerd_shard_timers{shard,state}) report them.
type shardCounts struct {
	Pending, InFlight, Dead int64
}

// shardTimersMetric is the gauge of timers per shard and state.
const shardTimersMetric = "timerd_shard_timers"

// fetchShardCounts reads the timer counts of the shards a node holds from
// its metrics at addr (host:port, or a URL with a scheme).
func fetchShardCounts(ctx context.Context, addr string) (map[uint32]shardCounts, error) {
	url := addr
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	url = strings.TrimSuffix(url, "/")
	if !strings.HasSuffix(url, "/metrics") {
		url += "/metrics"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	counts, err := parseShardCounts(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return counts, nil
}

// parseShardCounts reads the timerd_shard_timers samples of a Prometheus
// text exposition and ignores everything else.
func parseShardCounts(r io.Reader) (map[uint32]shardCounts, error) {
	counts := make(map[uint32]shardCounts)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, shardTimersMetric+"{")
		if !ok {
			continue
		}
		labels, value, err := parseSample(rest)
		if err != nil {
			return nil, fmt.Errorf("%w in %q", err, line)
		}
		id, err := strconv.ParseUint(labels["shard"], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("bad shard label in %q", line)
		}
		c := counts[uint32(id)]
		switch labels["state"] {
		case "pending":
			c.Pending = value
		case "in_flight":
			c.InFlight = value
		case "dead":
			c.Dead = value
		default:
			continue
		}
		counts[uint32(id)] = c
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(counts) == 0 {
		return nil, errors.New("no " + shardTimersMetric + " samples (not a timerd metrics address?)")
	}
	return counts, nil
}

// parseSample parses the rest of a sample line after the opening brace:
// label="value" pairs, the closing brace and the value (a timestamp after
// it is ignored).
func parseSample(s string) (map[string]string, int64, error) {
	labels := make(map[string]string)
	for {
		s = strings.TrimLeft(s, " ,")
		if strings.HasPrefix(s, "}") {
			s = s[1:]
			break
		}
		name, rest, ok := strings.Cut(s, "=\"")
		if !ok || name == "" {
			return nil, 0, errors.New("malformed labels")
		}
		var val strings.Builder
		i := 0
		for ; i < len(rest) && rest[i] != '"'; i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				if rest[i] == 'n' {
					val.WriteByte('\n')
					continue
				}
			}
			val.WriteByte(rest[i])
		}
		if i == len(rest) {
			return nil, 0, errors.New("unterminated label value")
		}
		labels[strings.TrimSpace(name)] = val.String()
		s = rest[i+1:]
	}
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return nil, 0, errors.New("missing value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return nil, 0, fmt.Errorf("bad value %q", fields[0])
	}
	return labels, int64(v), nil
}
