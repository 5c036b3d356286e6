package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sampleReport is a full report, as a run of the schedule scenario would
// leave it.
func sampleReport() *Report {
	return &Report{
		Scenario: "schedule",
		Target:   "timerd",
		Addr:     "127.0.0.1:7070",
		Start:    time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC),
		Elapsed:  30.25,
		Host:     Host{Hostname: "bench1", OS: "linux", Arch: "amd64", CPUs: 16, GoVersion: "go1.26.0"},
		Params: []Param{
			{"batch", "100"}, {"concurrency", "16"}, {"duration", "30s"}, {"topic", "bench <a&b>"},
		},
		Metrics: []Metric{
			{"scheduled", 312400, "timers/s"},
			{"timers", 9372000, "timers"},
		},
		Dists: []Dist{
			{
				Name: "Schedule RPC, batch=100", Unit: "ms", Count: 93720,
				Min: 0.21, Mean: 1.9, P50: 1.52, P90: 3.1, P99: 7.75, P999: 14.2, Max: 31.5,
				Curve: []Point{{0, 0.21}, {50, 1.52}, {90, 3.1}, {99, 7.75}, {99.9, 14.2}, {100, 31.5}},
			},
			{
				Name: "lateness", Unit: "ms", Count: 9372000,
				P50: 2, P90: 4, P99: 9, P999: 20, Max: 40,
				Curve: []Point{{0, 0}, {50, 2}, {90, 4}, {99, 9}, {99.9, 20}, {99.99, 30}, {100, 40}},
			},
		},
		Series: []Series{
			{Name: "scheduled", Unit: "timers/s", Points: []Point{{1, 300000}, {2, 310000}, {3, 320500}}},
			{Name: "fired", Unit: "timers/s", Points: []Point{{1, 0}, {2, 150000}, {3, 298000}}},
		},
		Checks: []Check{
			{Name: "early", Got: 0, Want: 0, Note: "delivered before due"},
			{Name: "lost", Got: 3, Want: 0, Note: "never delivered"},
		},
	}
}

func TestHuman(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		want string
	}{
		{0, "0"},
		{math.Copysign(0, -1), "0"},
		{12, "12"},
		{12.345, "12.35"},
		{0.125, "0.125"},
		{999.96, "1k"},
		{312400, "312.4k"},
		{534000, "534k"},
		{1250000, "1.25M"},
		{-2500, "-2.5k"},
		{math.NaN(), "NaN"},
		{math.Inf(1), "+Inf"},
	} {
		if got := human(tc.v); got != tc.want {
			t.Errorf("human(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

func TestWriteTable(t *testing.T) {
	interrupted := sampleReport()
	interrupted.Interrupted = true
	interrupted.Error = "target unreachable"

	for _, tc := range []struct {
		name    string
		r       *Report
		want    []string
		notWant []string
	}{
		{
			name: "full",
			r:    sampleReport(),
			want: []string{
				"schedule on timerd at 127.0.0.1:7070", "30.25 s",
				"batch=100 concurrency=16", `topic="bench <a&b>"`,
				"scheduled", "312.4k", "timers/s", "9.372M",
				"p99.9", "Schedule RPC, batch=100", "7.75", "31.5",
				"early", "ok", "lost", "FAIL", "never delivered",
			},
			notWant: []string{"INTERRUPTED", "error:"},
		},
		{
			name: "interrupted",
			r:    interrupted,
			want: []string{"INTERRUPTED — partial results", "error: target unreachable"},
		},
		{
			name:    "empty",
			r:       &Report{},
			want:    []string{"bench: 0 s"},
			notWant: []string{"metric", "distribution", "check", "INTERRUPTED"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			if err := WriteTable(&b, tc.r); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			for _, s := range tc.want {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tc.notWant {
				if strings.Contains(out, s) {
					t.Errorf("output has %q:\n%s", s, out)
				}
			}
		})
	}
}

func TestWriteTableAligned(t *testing.T) {
	var b strings.Builder
	if err := WriteTable(&b, sampleReport()); err != nil {
		t.Fatal(err)
	}
	// The value column of the metrics table starts at the same place on
	// every line.
	var cols []int
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, "scheduled ") || strings.HasPrefix(l, "timers ") || strings.HasPrefix(l, "metric ") {
			cols = append(cols, strings.IndexFunc(l[len(strings.Fields(l)[0]):], func(r rune) bool { return r != ' ' })+len(strings.Fields(l)[0]))
		}
	}
	if len(cols) != 3 || cols[0] != cols[1] || cols[1] != cols[2] {
		t.Errorf("metric value columns at %v, want 3 equal:\n%s", cols, b.String())
	}
}

func TestWriteTableError(t *testing.T) {
	errBoom := errors.New("boom")
	if err := WriteTable(failWriter{errBoom}, sampleReport()); !errors.Is(err, errBoom) {
		t.Errorf("WriteTable to a failing writer = %v, want %v", err, errBoom)
	}
}

// failWriter fails every write.
type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

func TestJSONRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    *Report
	}{
		{"full", sampleReport()},
		{"empty", &Report{}},
		{"interrupted", &Report{Scenario: "fire", Interrupted: true, Error: "ctrl-c", Params: []Param{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteJSON(&b, tc.r); err != nil {
				t.Fatal(err)
			}
			got, err := ReadJSON(&b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.r) {
				t.Errorf("round trip changed the report:\ngot  %+v\nwant %+v", got, tc.r)
			}
		})
	}
}

func TestReadJSONError(t *testing.T) {
	if _, err := ReadJSON(strings.NewReader("{")); err == nil {
		t.Error("ReadJSON of truncated JSON succeeded")
	}
}

// nonFiniteReport holds NaN and infinities wherever a float can go.
func nonFiniteReport() *Report {
	nan, inf := math.NaN(), math.Inf(1)
	return &Report{
		Scenario: "burst",
		Elapsed:  nan,
		Metrics:  []Metric{{"rate", nan, "timers/s"}, {"ok", 5, "timers"}, {"top", inf, "timers"}},
		Dists: []Dist{{
			Name: "lateness", Unit: "ms", Count: 3, Mean: nan, P50: 1, P99: inf, Max: 2,
			Curve: []Point{{0, 1}, {50, nan}, {inf, 2}, {100, 2}},
		}},
		Series: []Series{{Name: "fired", Unit: "timers/s", Points: []Point{{1, 10}, {2, inf}, {nan, 3}, {3, 12}}}},
	}
}

func TestJSONNonFinite(t *testing.T) {
	r := nonFiniteReport()
	var b bytes.Buffer
	if err := WriteJSON(&b, r); err != nil {
		t.Fatal(err)
	}
	if s := b.String(); strings.Contains(s, "NaN") || strings.Contains(s, "Inf") {
		t.Errorf("JSON holds a non-finite value:\n%s", s)
	}
	got, err := ReadJSON(&b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Metrics) != 1 || got.Metrics[0].Name != "ok" {
		t.Errorf("metrics = %+v, want only the finite one", got.Metrics)
	}
	if n := len(got.Dists[0].Curve); n != 2 {
		t.Errorf("curve has %d points, want 2", n)
	}
	if n := len(got.Series[0].Points); n != 2 {
		t.Errorf("series has %d points, want 2", n)
	}
	// The report written from is left as it was.
	if !math.IsNaN(r.Metrics[0].Value) || len(r.Dists[0].Curve) != 4 {
		t.Error("WriteJSON modified its report")
	}
}

// svgInfo is what a test needs to know of an SVG document.
type svgInfo struct {
	root      string
	polylines int
	texts     []string
}

// parseSVG parses doc as XML and counts its lines.
func parseSVG(t *testing.T, doc []byte) svgInfo {
	t.Helper()
	var info svgInfo
	d := xml.NewDecoder(bytes.NewReader(doc))
	inText := false
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, doc)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if info.root == "" {
				info.root = tok.Name.Local
				if tok.Name.Space != "http://www.w3.org/2000/svg" {
					t.Errorf("root namespace %q, want the SVG one", tok.Name.Space)
				}
				attrs := map[string]bool{}
				for _, a := range tok.Attr {
					attrs[a.Name.Local] = true
				}
				for _, a := range []string{"width", "height", "viewBox"} {
					if !attrs[a] {
						t.Errorf("<svg> lacks %s", a)
					}
				}
			}
			switch tok.Name.Local {
			case "polyline", "path":
				info.polylines++
			case "text":
				inText = true
			}
		case xml.EndElement:
			if tok.Name.Local == "text" {
				inText = false
			}
		case xml.CharData:
			if inText {
				info.texts = append(info.texts, string(tok))
			}
		}
	}
	return info
}

func TestWriteDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out") // WriteDir creates it
	r := sampleReport()
	r.Dists[0].Name = `RPC <"batch" & more>` // must be escaped
	if err := WriteDir(dir, r); err != nil {
		t.Fatal(err)
	}
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	got, err := ReadJSON(bytes.NewReader(read("report.json")))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Error("report.json does not read back as the report")
	}

	for _, tc := range []struct {
		file  string
		lines int
		texts []string
	}{
		{"latency.svg", len(r.Dists), []string{"percentile", "latency (ms)", "90%", "99.9%", r.Dists[0].Name, "lateness"}},
		{"throughput.svg", len(r.Series), []string{"time since start (s)", "rate (timers/s)", "scheduled", "fired", "300k"}},
	} {
		info := parseSVG(t, read(tc.file))
		if info.root != "svg" {
			t.Errorf("%s: root <%s>, want <svg>", tc.file, info.root)
		}
		if info.polylines != tc.lines {
			t.Errorf("%s: %d lines, want %d", tc.file, info.polylines, tc.lines)
		}
		all := strings.Join(info.texts, "\n")
		for _, s := range tc.texts {
			if !strings.Contains(all, s) {
				t.Errorf("%s: no text %q in %q", tc.file, s, info.texts)
			}
		}
	}

	md := string(read("report.md"))
	for _, s := range []string{
		"# Bench: schedule on timerd — 2026-03-14 15:09 UTC",
		"](latency.svg)", "](throughput.svg)",
		"| parameter | value |", "| scheduled | 312.4k | timers/s |", "**FAIL**", "bench1",
	} {
		if !strings.Contains(md, s) {
			t.Errorf("report.md lacks %q:\n%s", s, md)
		}
	}

	html := string(read("report.html"))
	if n := strings.Count(html, "<svg"); n != 2 {
		t.Errorf("report.html inlines %d SVGs, want 2", n)
	}
	for _, s := range []string{"<!DOCTYPE html>", "312.4k", `class="fail"`, "bench &lt;a&amp;b&gt;"} {
		if !strings.Contains(html, s) {
			t.Errorf("report.html lacks %q", s)
		}
	}
	if m := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?\s*(https?:)?//`).FindString(html); m != "" {
		t.Errorf("report.html refers to an external resource: %s", m)
	}
	if strings.Contains(html, "<link") || strings.Contains(html, "<script") {
		t.Error("report.html links or scripts something")
	}

	// No temporary file is left behind.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 5 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("dir holds %v, want the 5 report files", names)
	}
}

func TestWriteDirEmpty(t *testing.T) {
	dir := t.TempDir()
	// A stale plot of an earlier run must not survive a run without one.
	if err := os.WriteFile(filepath.Join(dir, "latency.svg"), []byte("<svg/>"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteDir(dir, &Report{Dists: []Dist{{Name: "no curve", Count: 0}}}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"report.json", "report.md", "report.html"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	for _, f := range []string{"latency.svg", "throughput.svg"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: stat = %v, want not to exist", f, err)
		}
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(md, []byte(".svg")) {
		t.Errorf("report.md links a plot that was not written:\n%s", md)
	}
}

func TestWriteDirNotADir(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteDir(f, sampleReport()); err == nil {
		t.Error("WriteDir into a file succeeded")
	}
}

func TestPlotsNonFiniteAndSinglePoint(t *testing.T) {
	single := &Report{
		Dists:  []Dist{{Name: "one", Unit: "ms", Count: 1, Curve: []Point{{100, 5}}}},
		Series: []Series{{Name: "one", Unit: "timers/s", Points: []Point{{0, 0}}}},
	}
	for _, tc := range []struct {
		name  string
		r     *Report
		lines int
	}{
		{"non-finite", nonFiniteReport(), 1},
		{"single point", single, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, mk := range []func(*Report) (plot, bool){latencyPlot, throughputPlot} {
				p, ok := mk(tc.r)
				if !ok {
					t.Fatal("no plot")
				}
				var b bytes.Buffer
				if err := p.writeSVG(&b); err != nil {
					t.Fatal(err)
				}
				if s := b.String(); strings.Contains(s, "NaN") || strings.Contains(s, "Inf") {
					t.Errorf("SVG holds a non-finite value:\n%s", s)
				}
				if info := parseSVG(t, b.Bytes()); info.polylines != tc.lines {
					t.Errorf("%d lines, want %d", info.polylines, tc.lines)
				}
			}
		})
	}
}

func TestLatencyPlotAxis(t *testing.T) {
	for _, tc := range []struct {
		name  string
		count int64
		curve []Point
		want  []string // the X tick labels
	}{
		// Without a count, the curve goes as far as its finest
		// percentile, where the maximum ends it.
		{"to p99.9 and max", 0, []Point{{0, 1}, {90, 2}, {99, 3}, {99.9, 4}, {100, 5}}, []string{"0%", "90%", "99%", "99.9%"}},
		{"to p99.99", 0, []Point{{0, 1}, {99.99, 4}}, []string{"0%", "90%", "99%", "99.9%", "99.99%"}},
		{"to p90", 0, []Point{{0, 1}, {90, 4}}, []string{"0%", "90%"}},
		{"median only", 0, []Point{{50, 1}}, []string{"0%", "90%"}},
		{"beyond the cap", 0, []Point{{0, 1}, {99.99999999, 4}, {100, 5}}, []string{"0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"}},
		// With one, up to 1 - 1/n.
		{"100 values", 100, []Point{{0, 1}, {90, 2}, {99, 3}, {100, 5}}, []string{"0%", "90%", "99%"}},
		{"1,000 values", 1000, []Point{{0, 1}, {90, 2}, {99, 3}, {99.9, 4}, {100, 5}}, []string{"0%", "90%", "99%", "99.9%"}},
		{"300 values", 300, []Point{{0, 1}, {90, 2}, {99, 3}, {100, 5}}, []string{"0%", "90%", "99%", "99.9%"}},
		{"10,000 values", 10000, []Point{{0, 1}, {99.99, 4}, {100, 5}}, []string{"0%", "90%", "99%", "99.9%", "99.99%"}},
		{"curve beyond its count", 100, []Point{{0, 1}, {99, 3}, {99.9, 4}, {99.99, 4.5}, {100, 5}}, []string{"0%", "90%", "99%"}},
		{"one value", 1, []Point{{0, 5}, {100, 5}}, []string{"0%", "90%"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, ok := latencyPlot(&Report{Dists: []Dist{{Name: "d", Unit: "ms", Count: tc.count, Curve: tc.curve}}})
			if !ok {
				t.Fatal("no plot")
			}
			if len(p.panels) != 1 {
				t.Fatalf("%d panels, want 1", len(p.panels))
			}
			pn := p.panels[0]
			var got []string
			for _, tk := range pn.x.ticks {
				got = append(got, tk.label)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ticks %q, want %q", got, tc.want)
			}
			for _, pt := range pn.lines[0].pts {
				if pt.X < pn.x.lo || pt.X > pn.x.hi || pt.Y < pn.y.lo || pt.Y > pn.y.hi {
					t.Errorf("point %v outside the axes [%v,%v]×[%v,%v]", pt, pn.x.lo, pn.x.hi, pn.y.lo, pn.y.hi)
				}
			}
			pts := pn.lines[0].pts
			if tc.count > 0 {
				limit := math.Log10(float64(tc.count))
				for _, pt := range pts {
					if pt.X > limit+1e-9 {
						t.Errorf("point %v beyond the percentile 1 - 1/%d (%v on the axis)", pt, tc.count, limit)
					}
				}
			}
			// The maximum ends the curve.
			if last, max := pts[len(pts)-1], tc.curve[len(tc.curve)-1]; max.X == 100 && last.Y != max.Y {
				t.Errorf("the curve ends at %v, want the maximum %v", last, max.Y)
			}
		})
	}
}

// TestLatencyPlotSupportedPercentiles plots real histograms: Schedule
// calls of 100 values and lateness of 10,000. Each gets a panel of its
// own, and each curve stops at the percentile 1 - 1/n its count
// supports, in the plot and in the SVG.
func TestLatencyPlotSupportedPercentiles(t *testing.T) {
	calls, late := NewLatency(), NewLatency()
	for i := 1; i <= 100; i++ {
		calls.Record(time.Duration(i) * 10 * time.Microsecond)
	}
	for i := 1; i <= 10000; i++ {
		late.Record(time.Duration(i) * time.Millisecond)
	}
	r := &Report{Dists: []Dist{late.Dist("lateness"), calls.Dist("Schedule call, batch=1")}}
	p, ok := latencyPlot(r)
	if !ok {
		t.Fatal("no plot")
	}
	for i, want := range []struct {
		title, line, lastTick string
		decades               float64
	}{
		{latePanel, "lateness", "99.99%", 4},
		{callPanel, "Schedule call, batch=1", "99%", 2},
	} {
		if i >= len(p.panels) {
			t.Fatalf("%d panels, want 2", len(p.panels))
		}
		pn := p.panels[i]
		if pn.title != want.title || len(pn.lines) != 1 || pn.lines[0].label != want.line {
			t.Errorf("panel %d: %q with %d lines, want %q with %q alone", i, pn.title, len(pn.lines), want.title, want.line)
			continue
		}
		if got := pn.x.ticks[len(pn.x.ticks)-1].label; got != want.lastTick {
			t.Errorf("%s: the axis ends at %s, want %s", pn.title, got, want.lastTick)
		}
		pts := pn.lines[0].pts
		for _, pt := range pts {
			if pt.X > want.decades+1e-9 {
				t.Errorf("%s: point %v beyond %s", pn.title, pt, want.lastTick)
			}
		}
		if last := pts[len(pts)-1]; math.Abs(last.X-want.decades) > 1e-9 {
			t.Errorf("%s: the curve ends at %v, want at %s", pn.title, last, want.lastTick)
		}
	}
	if n := len(p.panels); n != 2 {
		t.Errorf("%d panels, want 2", n)
	}

	// In the SVG of the 100 calls alone, no point of the curve is right
	// of the 99% tick, and there is no finer tick.
	p, _ = latencyPlot(&Report{Dists: []Dist{calls.Dist("Schedule call, batch=1")}})
	var b bytes.Buffer
	if err := p.writeSVG(&b); err != nil {
		t.Fatal(err)
	}
	doc := b.String()
	m := regexp.MustCompile(`<text x="([\d.]+)" y="[\d.]+">99%</text>`).FindStringSubmatch(doc)
	if m == nil {
		t.Fatalf("no 99%% tick label in\n%s", doc)
	}
	tick99, _ := strconv.ParseFloat(m[1], 64)
	if strings.Contains(doc, "99.9%") {
		t.Errorf("the SVG of 100 values has a tick past 99%%:\n%s", doc)
	}
	lines := regexp.MustCompile(`<polyline [^>]*points="([^"]*)"`).FindAllStringSubmatch(doc, -1)
	if len(lines) != 1 {
		t.Fatalf("%d polylines, want 1", len(lines))
	}
	for _, xy := range strings.Fields(lines[0][1]) {
		x, _ := strconv.ParseFloat(strings.SplitN(xy, ",", 2)[0], 64)
		if x > tick99 {
			t.Errorf("point %s is right of the 99%% tick at x=%v", xy, tick99)
		}
	}
}

func TestThroughputPlotSmooths(t *testing.T) {
	// Samples every 250 ms, whose counts alternate between 0 and 1,000
	// (rates 0 and 4,000/s): a steady 2,000/s, sampled in steps.
	var spiky []Point
	for i := 1; i <= 40; i++ {
		y := 0.0
		if i%2 == 0 {
			y = 4000
		}
		spiky = append(spiky, Point{X: float64(i) * 0.25, Y: y})
	}
	// Samples every second: 0/s for 10 s, then 1,000/s for 10 s.
	var step []Point
	for i := 1; i <= 20; i++ {
		y := 0.0
		if i > 10 {
			y = 1000
		}
		step = append(step, Point{X: float64(i), Y: y})
	}

	p, ok := throughputPlot(&Report{Series: []Series{{Name: "fired", Unit: "timers/s", Points: spiky}}})
	if !ok {
		t.Fatal("no plot")
	}
	pts := p.panels[0].lines[0].pts
	if len(pts) != len(spiky) {
		t.Fatalf("%d points, want one per sample (%d)", len(pts), len(spiky))
	}
	for _, pt := range pts {
		if math.Abs(pt.Y-2000) > 1e-6 {
			t.Errorf("point %v, want a rate of 2,000/s", pt)
		}
	}
	if !strings.Contains(p.panels[0].title, "the rate over the 1 s around it") {
		t.Errorf("panel title %q does not give the 1 s window", p.panels[0].title)
	}

	// A 3 s window (3 ticks): a point whose window lies within one regime
	// has that regime's rate, and the step is still there.
	pts = smoothRate(step, smoothingWindow([]Series{{Points: step}}))
	for _, pt := range pts {
		switch {
		case pt.X <= 8.5 && pt.Y != 0:
			t.Errorf("point %v, want 0/s before the step", pt)
		case pt.X >= 11.5 && math.Abs(pt.Y-1000) > 1e-9:
			t.Errorf("point %v, want 1,000/s after the step", pt)
		case pt.Y < 0 || pt.Y > 1000:
			t.Errorf("point %v outside the rates of the series", pt)
		}
	}

	// Samples that do not move forward are dropped; a run shorter than
	// the window averages over the whole run.
	pts = smoothRate([]Point{{0.5, 100}, {0.5, 9999}, {1, 300}}, 3)
	if want := []Point{{0.5, 200}, {1, 200}}; !reflect.DeepEqual(pts, want) {
		t.Errorf("smoothRate = %v, want %v", pts, want)
	}
}

func TestNiceTicks(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lo, hi float64
		want   []float64 // nil: check the properties only
	}{
		{"unit", 0, 1, []float64{0, 0.2, 0.4, 0.6, 0.8, 1}},
		{"tenths", 0, 0.3, []float64{0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3}},
		{"rate", 0, 534000, []float64{0, 100000, 200000, 300000, 400000, 500000, 600000}},
		{"latency", 0, 31.5, []float64{0, 5, 10, 15, 20, 25, 30, 35}},
		{"negative", -7, 3, nil},
		{"reversed", 10, 0, []float64{0, 2, 4, 6, 8, 10}},
		{"offset", 1003, 1017, nil},
		{"zero range at zero", 0, 0, []float64{0, 0.2, 0.4, 0.6, 0.8, 1}},
		{"single point", 5, 5, nil},
		{"single negative point", -5, -5, nil},
		{"tiny", 0, 1e-9, nil},
		{"huge", 0, 1e300, nil},
		{"not finite", math.NaN(), math.Inf(1), []float64{0, 0.2, 0.4, 0.6, 0.8, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := niceTicks(tc.lo, tc.hi, 6)
			if tc.want != nil && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("niceTicks(%v, %v) = %v, want %v", tc.lo, tc.hi, got, tc.want)
			}
			if len(got) < 2 || len(got) > 12 {
				t.Fatalf("niceTicks(%v, %v) = %v: %d ticks", tc.lo, tc.hi, got, len(got))
			}
			lo, hi := math.Min(tc.lo, tc.hi), math.Max(tc.lo, tc.hi)
			if finite(lo) && finite(hi) && (got[0] > lo || got[len(got)-1] < hi) {
				t.Errorf("niceTicks(%v, %v) = %v does not cover the range", tc.lo, tc.hi, got)
			}
			step := got[1] - got[0]
			if step <= 0 {
				t.Fatalf("niceTicks(%v, %v) = %v: not increasing", tc.lo, tc.hi, got)
			}
			for i := 1; i < len(got); i++ {
				if d := got[i] - got[i-1]; math.Abs(d-step) > step*1e-9 {
					t.Errorf("niceTicks(%v, %v) = %v: uneven steps", tc.lo, tc.hi, got)
				}
			}
			m := step / math.Pow(10, math.Floor(math.Log10(step)))
			if !slicesContainsApprox([]float64{1, 2, 2.5, 5}, m) {
				t.Errorf("niceTicks(%v, %v): step %v is not 1, 2, 2.5 or 5 times a power of ten", tc.lo, tc.hi, step)
			}
		})
	}
}

// slicesContainsApprox reports whether some value of vs is within a
// rounding error of v.
func slicesContainsApprox(vs []float64, v float64) bool {
	for _, x := range vs {
		if math.Abs(x-v) < 1e-6 {
			return true
		}
	}
	return false
}

// compareReports are runs of two scenarios against three targets; redis-raw
// lacks a distribution, asynq ran only the fire scenario.
func compareReports() ([]string, []*Report) {
	sched := func(target string, rate, p50 float64) *Report {
		return &Report{
			Scenario: "schedule", Target: target,
			Metrics: []Metric{{"scheduled", rate, "timers/s"}},
			Dists:   []Dist{{Name: "rpc", Unit: "ms", P50: p50, P99: 4 * p50, Max: 10 * p50}},
		}
	}
	ref := sched("timerd", 100, 2)
	half := sched("timerd", 50, 3)
	half.Interrupted = true
	raw := sched("redis", 534000, 0)
	raw.Dists = nil
	raw.Metrics = append(raw.Metrics, Metric{"extra", 7, "x"})
	fire := &Report{
		Scenario: "fire", Target: "asynq",
		Metrics: []Metric{{"fired", 1000, "timers/s"}},
		Checks:  []Check{{Name: "lost", Got: 2, Want: 0}},
	}
	return []string{"timerd-embedded", "timerd-redis", "redis-raw", "asynq"},
		[]*Report{ref, half, raw, fire}
}

func TestCompare(t *testing.T) {
	labels, reports := compareReports()
	var b strings.Builder
	if err := Compare(&b, labels, reports); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	lines := strings.Split(out, "\n")
	find := func(prefix string) string {
		for _, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return l
			}
		}
		t.Errorf("no line starts with %q:\n%s", prefix, out)
		return ""
	}
	for _, tc := range []struct {
		prefix string
		fields []string
	}{
		{"scheduled ", []string{"scheduled", "timers/s", "100", "50", "(0.50x)", "534k", "(5340x)"}},
		{"rpc p50 ", []string{"rpc", "p50", "ms", "2", "3", "(1.50x)", "—"}},
		{"rpc p99 ", []string{"rpc", "p99", "ms", "8", "12", "(1.50x)", "—"}},
		{"rpc max ", []string{"rpc", "max", "ms", "20", "30", "(1.50x)", "—"}},
		{"extra ", []string{"extra", "x", "—", "—", "7"}}, // no reference: no ratio
		{"fired ", []string{"fired", "timers/s", "1k"}},
	} {
		if got := strings.Fields(find(tc.prefix)); !reflect.DeepEqual(got, tc.fields) {
			t.Errorf("row %q = %q, want %q", tc.prefix, got, tc.fields)
		}
	}
	for _, s := range []string{
		"scenario schedule", "scenario fire",
		"timerd-embedded", "timerd-redis", "redis-raw",
		"timerd-redis: INTERRUPTED", "asynq: 1 check(s) FAIL: lost",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("comparison lacks %q:\n%s", s, out)
		}
	}
	// asynq ran another scenario: it has no column in the schedule group.
	if i := strings.Index(out, "scenario fire"); strings.Contains(out[:i], "asynq") {
		t.Errorf("asynq appears in the schedule group:\n%s", out)
	}
}

func TestCompareMarkdown(t *testing.T) {
	labels, reports := compareReports()
	var b strings.Builder
	if err := CompareMarkdown(&b, labels, reports); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, s := range []string{
		"### schedule\n", "### fire\n",
		"|   | unit | timerd-embedded | timerd-redis | redis-raw |",
		"|---|---|---:|---:|---:|",
		"| scheduled | timers/s | 100 | 50 (0.50x) | 534k (5340x) |",
		"| rpc p50 | ms | 2 | 3 (1.50x) | — |",
		"- timerd-redis: INTERRUPTED",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("Markdown comparison lacks %q:\n%s", s, out)
		}
	}
}

func TestCompareEdgeCases(t *testing.T) {
	for _, tc := range []struct {
		name    string
		labels  []string
		reports []*Report
		wantErr bool
		want    string
	}{
		{name: "none", want: ""},
		{name: "label count", labels: []string{"a"}, reports: []*Report{{}, {}}, wantErr: true},
		{name: "nil report", labels: []string{"a"}, reports: []*Report{nil}, wantErr: true},
		{name: "labels default to targets", reports: []*Report{{Scenario: "s", Target: "redis-raw"}}, want: "redis-raw"},
		{name: "empty report", labels: []string{"a"}, reports: []*Report{{}}, want: "scenario (unnamed)"},
		{
			name:   "zero reference",
			labels: []string{"a", "b"},
			reports: []*Report{
				{Metrics: []Metric{{"m", 0, "u"}}},
				{Metrics: []Metric{{"m", 4, "u"}}},
			},
			want: "m  u     0  4\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			err := Compare(&b, tc.labels, tc.reports)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Compare error = %v, want error: %v", err, tc.wantErr)
			}
			if !strings.Contains(b.String(), tc.want) {
				t.Errorf("comparison lacks %q:\n%s", tc.want, b.String())
			}
		})
	}
}

func TestRatio(t *testing.T) {
	for _, tc := range []struct {
		v, ref float64
		want   string
	}{
		{50, 100, " (0.50x)"},
		{171, 100, " (1.71x)"},
		{1250, 100, " (12.5x)"},
		{534000, 100, " (5340x)"},
		{5, 0, ""},
		{math.NaN(), 1, ""},
	} {
		if got := ratio(tc.v, tc.ref); got != tc.want {
			t.Errorf("ratio(%v, %v) = %q, want %q", tc.v, tc.ref, got, tc.want)
		}
	}
}

// TestCompareSpread compares targets measured in turn, three times each:
// a column per target, each cell the median with the min and max.
func TestCompareSpread(t *testing.T) {
	t.Parallel()
	rep := func(target string, p99, floorP99 float64, starved bool) *Report {
		return &Report{Scenario: "fire", Target: target,
			Metrics: []Metric{{Name: "delivered", Value: 100, Unit: "timers"}},
			Dists:   []Dist{{Name: "lateness", Unit: "ms", Count: 100, P50: p99 / 2, P99: p99, Max: 2 * p99}},
			Floor: &Floor{Rate: 1000, Elapsed: 1, StarvedP99: 5, Starved: starved,
				Lateness: Dist{Unit: "ms", Count: 1000, P50: 0.5, P99: floorP99, Max: floorP99}}}
	}
	// A B A B A B, as the suite runs them.
	var labels []string
	var reports []*Report
	for i, p99 := range []float64{4, 8, 6} {
		labels = append(labels, "timerd", "afterfunc")
		reports = append(reports, rep("timerd", p99, float64(1+i), false), rep("afterfunc", p99/2, 9, i == 1))
	}
	var b strings.Builder
	if err := CompareSpread(&b, labels, reports, false); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"timerd (3 runs)", "afterfunc (3 runs)",
		// timerd's p99 4, 8, 6: median 6; afterfunc's half.
		"lateness p99", "6 [4–8]", "3 (0.50x) [2–4]",
		"floor: time.AfterFunc lateness p99", "2 [1–3]", "9 (4.50x) [9–9]",
		"note: afterfunc run 2: MACHINE STARVED",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("spread lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "afterfunc run 1: MACHINE") {
		t.Errorf("a run not starved is noted:\n%s", out)
	}
	b.Reset()
	if err := CompareSpread(&b, labels, reports, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "| lateness p99 | ms | 6 \\[4–8\\] |") {
		t.Errorf("markdown spread:\n%s", b.String())
	}
	if got := median([]float64{3, 1, 2, 10}); got != 2.5 {
		t.Errorf("median = %g, want 2.5", got)
	}
}
