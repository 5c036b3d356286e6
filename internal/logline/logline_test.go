package logline

import (
	"bytes"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"
)

// TestParseWhatSlogWrites: Parse reads back every field TextHandler
// wrote, quoted or not.
func TestParseWhatSlogWrites(t *testing.T) {
	at := time.Date(2026, 12, 5, 18, 11, 31, 123_456_789, time.UTC)
	tests := []struct {
		name  string
		msg   string
		attrs []any
		want  map[string]string
	}{
		{"plain", "ready", []any{"shards", 64, "took", 1500 * time.Millisecond},
			map[string]string{"level": "INFO", "msg": "ready", "shards": "64", "took": "1.5s"}},
		{"spaces", "shard lease acquired", []any{"shard", 7, "epoch", uint64(12), "valid_until", at},
			map[string]string{"level": "INFO", "msg": "shard lease acquired", "shard": "7", "epoch": "12", "valid_until": "2026-12-05T18:11:31.123Z"}},
		{"quotes and equals", "shard lost", []any{"err", `store: fenced: "a=b" c`, "empty", ""},
			map[string]string{"level": "INFO", "msg": "shard lost", "err": `store: fenced: "a=b" c`, "empty": ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			slog.New(slog.NewTextHandler(&b, nil)).Info(tt.msg, tt.attrs...)
			got := Parse(strings.TrimSuffix(b.String(), "\n"))
			tm, err := Time(got["time"])
			if err != nil || time.Since(tm) > time.Minute {
				t.Errorf("time=%q: %v, %v", got["time"], tm, err)
			}
			delete(got, "time")
			if !maps.Equal(got, tt.want) {
				t.Errorf("Parse(%q) =\n %v, want\n %v", b.String(), got, tt.want)
			}
		})
	}
}

// TestParseOddLines: text that is not a field is skipped, and a quote
// that does not end keeps the rest of the line.
func TestParseOddLines(t *testing.T) {
	tests := []struct {
		line string
		want map[string]string
	}{
		{"", map[string]string{}},
		{"panic: oops k=v", map[string]string{"k": "v"}},
		{`a=1 b="open end`, map[string]string{"a": "1", "b": "open end"}},
		{"a=1  b=2 ", map[string]string{"a": "1", "b": "2"}},
	}
	for _, tt := range tests {
		if got := Parse(tt.line); !maps.Equal(got, tt.want) {
			t.Errorf("Parse(%q) = %v, want %v", tt.line, got, tt.want)
		}
	}
}
