package cli

import (
	"bytes"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestFormatDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{30 * time.Second, "30s"},
		{time.Minute, "1m"},
		{90 * time.Minute, "1h30m"},
		{876000 * time.Hour, "100y"},
		{36 * time.Hour, "1d12h"},
		{15 * time.Minute, "15m"},
		{1500 * time.Millisecond, "1.5s"},
		{time.Minute + 500*time.Millisecond, "1m500ms"},
		{250 * time.Millisecond, "250ms"},
		{-5 * time.Minute, "-5m"},
		{400 * Day, "1y35d"},
	} {
		got := FormatDuration(tc.d)
		if got != tc.want {
			t.Errorf("FormatDuration(%v) = %q, want %q", tc.d, got, tc.want)
		}
		if back, err := ParseDuration(got); err != nil || back != tc.d {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v back", got, back, err, tc.d)
		}
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want time.Duration
	}{
		{"0", 0},
		{"30s", 30 * time.Second},
		{"1h30m", 90 * time.Minute},
		{"876000h0m0s", 876000 * time.Hour}, // Go's form still parses
		{"7d", 7 * 24 * time.Hour},
		{"1d12h", 36 * time.Hour},
		{"1.5d", 36 * time.Hour},
		{"100y", 876000 * time.Hour},
		{"-2d", -48 * time.Hour},
		{"1y1d1h1m1s", Year + Day + time.Hour + time.Minute + time.Second},
	} {
		got, err := ParseDuration(tc.s)
		if err != nil || got != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tc.s, got, err, tc.want)
		}
	}
	for _, s := range []string{"", "10q", "d", "1dd", "soon", "1..5d", "-", "300y"} {
		if d, err := ParseDuration(s); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", s, d)
		}
	}
}

// TestHumanDurations: a flag set's duration flags take d and y, say
// "duration" in help, and show their defaults as people write them.
func TestHumanDurations(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	horizon := fs.Duration("max-horizon", 876000*time.Hour, "how far ahead")
	in := fs.Duration("in", 0, "due this `span` from now")
	n := fs.Int("count", 3, "how many")
	HumanDurations(fs)
	if err := fs.Parse([]string{"--max-horizon", "2d", "--in", "90s"}); err != nil {
		t.Fatal(err)
	}
	if *horizon != 48*time.Hour || *in != 90*time.Second || *n != 3 {
		t.Fatalf("parsed %v %v %d", *horizon, *in, *n)
	}
	var out bytes.Buffer
	PrintFlags(&out, fs, nil)
	for _, want := range []string{"--max-horizon duration\n", "(default 100y)", "--in span\n", "--count int\n", "(default 3)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "876000h") {
		t.Errorf("help shows Go's form of a duration:\n%s", out.String())
	}
}

func TestFlagError(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Duration("in", 0, "")
	fs.Int("count", 0, "")
	fs.Uint("shards", 0, "")
	HumanDurations(fs)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--in", "10q"}, `--in "10q": want a duration such as 30s, 5m, 1h30m or 7d`},
		{[]string{"--count", "x"}, `--count "x": want a whole number`},
		{[]string{"--shards", "-1"}, `--shards "-1": want a whole number, 0 or more`},
		{[]string{"--nope"}, "flag provided but not defined: -nope"},
	} {
		err := FlagError(fs, fs.Parse(tc.args))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestReadBuild(t *testing.T) {
	b := ReadBuild()
	if b.Version == "" || !strings.HasPrefix(b.GoVersion, "go") {
		t.Fatalf("ReadBuild() = %+v", b)
	}
	old := Version
	defer func() { Version = old }()
	Version = "v9.9.9"
	b = ReadBuild()
	if b.Version != "v9.9.9" {
		t.Fatalf("Version set by -ldflags: got %q", b.Version)
	}
	line := Build{Version: "v1.0.0", Commit: "abc", Modified: true, GoVersion: "go1.26.0"}.Line("timerd")
	if !strings.HasPrefix(line, "timerd v1.0.0 (commit abc, modified) go1.26.0 ") {
		t.Errorf("Line = %q", line)
	}
	if l := (Build{Commit: "abc", Modified: true}).CommitLabel(); l != "abc+modified" {
		t.Errorf("CommitLabel = %q", l)
	}
}
