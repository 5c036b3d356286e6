package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Names of the files WriteDir writes.
const (
	reportJSONFile = "report.json"
	latencyFile    = "latency.svg"
	throughputFile = "throughput.svg"
	reportMDFile   = "report.md"
	reportHTMLFile = "report.html"
)

// interruptedNote is shown wherever a report's figures are incomplete.
const interruptedNote = "INTERRUPTED — partial results"

// paramWidth is the width at which WriteTable wraps the parameter line.
const paramWidth = 80

// WriteTable writes the human summary of r that ends a run: a header with
// the scenario, target, address and length of the run, the parameters, then
// aligned tables of the metrics, the distributions and the checks. Sections
// with nothing in them are left out.
func WriteTable(w io.Writer, r *Report) error {
	ew := &errWriter{w: w}
	ew.printf("%s\n", headline(r))
	if r.Interrupted {
		ew.printf("%s\n", interruptedNote)
	}
	if r.Error != "" {
		ew.printf("error: %s\n", r.Error)
	}
	if r.Floor != nil {
		ew.printf("%s\n", r.Floor.verdict())
	}
	for _, l := range paramLines(r.Params, paramWidth) {
		ew.printf("%s\n", l)
	}
	for _, t := range dataTables(r) {
		ew.printf("\n")
		writeTextTable(ew, t)
	}
	return ew.err
}

// headline is the one-line description of a run: what ran against what,
// where, for how long and when.
func headline(r *Report) string {
	var b strings.Builder
	b.WriteString(orDefault(r.Scenario, "bench"))
	if r.Target != "" {
		b.WriteString(" on " + r.Target)
	}
	if r.Addr != "" {
		b.WriteString(" at " + r.Addr)
	}
	fmt.Fprintf(&b, ": %s s", human(r.Elapsed))
	if !r.Start.IsZero() {
		b.WriteString(", started " + r.Start.Format("2006-01-02 15:04:05 MST"))
	}
	return b.String()
}

// paramLines lays the parameters out as name=value pairs in lines of at
// most width columns (a single pair may be longer).
func paramLines(ps []Param, width int) []string {
	var lines []string
	var cur strings.Builder
	for _, p := range ps {
		v := p.Value
		// Quote values that would otherwise read as several pairs.
		if v == "" || strings.ContainsAny(v, " \t\n\"=") {
			v = strconv.Quote(v)
		}
		pair := p.Name + "=" + v
		if cur.Len() > 0 && cur.Len()+1+len(pair) > width {
			lines = append(lines, cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(pair)
	}
	if cur.Len() > 0 {
		lines = append(lines, cur.String())
	}
	return lines
}

// writeTextTable writes t aligned in columns. Each table gets its own
// tabwriter so that its columns do not widen another's.
func writeTextTable(ew *errWriter, t table) {
	tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
	tw.Write([]byte(strings.Join(t.Head, "\t") + "\n"))
	for _, row := range t.Rows {
		tw.Write([]byte(strings.Join(row.Cells, "\t") + "\n"))
	}
	// Write errors reach ew.err through ew; Flush reports only those.
	tw.Flush()
}

// table is a table of a report as text cells, rendered as aligned text,
// Markdown or HTML. Its fields are exported for html/template.
type table struct {
	// Title heads the table in Markdown and HTML.
	Title string
	Head  []string
	// Right marks the columns that hold numbers, aligned right where the
	// format allows it.
	Right []bool
	Rows  []row
}

// row is one row of a table.
type row struct {
	Cells []string
	// Fail marks a failing check, so that it stands out.
	Fail bool
}

// paramTable is the parameters as a two-column table.
func paramTable(r *Report) table {
	t := table{Title: "Parameters", Head: []string{"parameter", "value"}, Right: []bool{false, false}}
	for _, p := range r.Params {
		t.Rows = append(t.Rows, row{Cells: []string{p.Name, p.Value}})
	}
	return t
}

// dataTables returns the tables of r's metrics, distributions and checks,
// leaving out those that would be empty.
func dataTables(r *Report) []table {
	var ts []table
	if len(r.Metrics) > 0 {
		t := table{Title: "Metrics", Head: []string{"metric", "value", "unit"}, Right: []bool{false, true, false}}
		for _, m := range r.Metrics {
			t.Rows = append(t.Rows, row{Cells: []string{m.Name, human(m.Value), m.Unit}})
		}
		ts = append(ts, t)
	}
	// The floor's distributions go beside the target's, so that each
	// lateness reads against what the machine allowed at the same time.
	dists := r.Dists
	if r.Floor != nil {
		dists = append(slices.Clone(dists), r.Floor.dists()...)
	}
	if len(dists) > 0 {
		t := table{
			Title: "Distributions",
			Head:  []string{"distribution", "count", "p50", "p90", "p99", "p99.9", "max", "unit"},
			Right: []bool{false, true, true, true, true, true, true, false},
		}
		for _, d := range dists {
			t.Rows = append(t.Rows, row{Cells: []string{
				d.Name, human(float64(d.Count)),
				human(d.P50), human(d.P90), human(d.P99), human(d.P999), human(d.Max),
				d.Unit,
			}})
		}
		ts = append(ts, t)
	}
	if f := r.Floor; f != nil {
		t := table{Title: "Floor", Head: []string{"floor", "value", "unit"}, Right: []bool{false, true, false}}
		for _, m := range f.metrics() {
			t.Rows = append(t.Rows, row{Cells: []string{m.Name, human(m.Value), m.Unit}})
		}
		starved := "no"
		if f.Starved {
			starved = "yes"
		}
		t.Rows = append(t.Rows, row{
			Cells: []string{"machine starved (floor p99 above " + human(f.StarvedP99) + " ms)", starved, ""},
			Fail:  f.Starved,
		})
		ts = append(ts, t)
	}
	if len(r.Checks) > 0 {
		t := table{
			Title: "Checks",
			Head:  []string{"check", "got", "want", "result", "note"},
			Right: []bool{false, true, true, false, false},
		}
		for _, c := range r.Checks {
			result := "ok"
			if !c.OK() {
				result = "FAIL"
			}
			// Checks are exact counts, shown in full: one lost timer
			// in a million must not round away.
			t.Rows = append(t.Rows, row{
				Cells: []string{c.Name, strconv.FormatInt(c.Got, 10), strconv.FormatInt(c.Want, 10), result, c.Note},
				Fail:  !c.OK(),
			})
		}
		ts = append(ts, t)
	}
	return ts
}

// human formats v with at most 4 significant digits and an SI suffix (k,
// M, G, ...) for values of a thousand and more: 312.4k, 1.25M, 12.5, 0.125.
func human(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case v == 0:
		return "0" // also for -0
	}
	// Round first so that 999.96 reads 1k, not 1000.
	v = roundSig(v, 4)
	suffixes := [...]string{"", "k", "M", "G", "T", "P", "E"}
	for i, s := range suffixes {
		scale := math.Pow(1000, float64(i))
		if math.Abs(v)/scale < 1000 || i == len(suffixes)-1 {
			return strconv.FormatFloat(v/scale, 'g', 4, 64) + s
		}
	}
	panic("unreachable")
}

// roundSig rounds v to n significant digits.
func roundSig(v float64, n int) float64 {
	if v == 0 || !finite(v) {
		return v
	}
	p := math.Pow(10, float64(n)-math.Ceil(math.Log10(math.Abs(v))))
	if r := math.Round(v*p) / p; finite(r) {
		return r
	}
	return v
}

// finite reports whether v is neither NaN nor infinite.
func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// finiteOrZero returns v, or 0 when v is NaN or infinite.
func finiteOrZero(v float64) float64 {
	if finite(v) {
		return v
	}
	return 0
}

// finitePoints returns pts without the points that have a NaN or infinite
// coordinate. It returns nil for nil, and never modifies pts.
func finitePoints(pts []Point) []Point {
	return slices.DeleteFunc(slices.Clone(pts), func(p Point) bool {
		return !finite(p.X) || !finite(p.Y)
	})
}

// finiteReport returns a copy of r that holds only finite numbers, since
// JSON cannot represent NaN or infinities: metrics that are not finite are
// left out (they are unknown, and 0 would read as a measurement), other
// such values become 0, and such curve and series points are dropped.
func finiteReport(r *Report) *Report {
	c := *r
	c.Elapsed = finiteOrZero(r.Elapsed)
	c.Metrics = slices.DeleteFunc(slices.Clone(r.Metrics), func(m Metric) bool { return !finite(m.Value) })
	c.Dists = slices.Clone(r.Dists)
	for i := range c.Dists {
		c.Dists[i] = finiteDist(c.Dists[i])
	}
	c.Series = slices.Clone(r.Series)
	for i := range c.Series {
		c.Series[i].Points = finitePoints(c.Series[i].Points)
	}
	if r.Floor != nil {
		f := *r.Floor
		for _, d := range []*Dist{&f.Lateness, &f.SchedLatency, &f.GCPauses} {
			*d = finiteDist(*d)
		}
		for _, v := range []*float64{&f.Rate, &f.Elapsed, &f.CPUUser, &f.CPUSystem, &f.Load, &f.HostBusy, &f.Steal, &f.StarvedP99} {
			*v = finiteOrZero(*v)
		}
		c.Floor = &f
	}
	return &c
}

// finiteDist returns d with its values that are not finite made 0 and
// such curve points dropped.
func finiteDist(d Dist) Dist {
	for _, f := range []*float64{&d.Min, &d.Mean, &d.P50, &d.P90, &d.P99, &d.P999, &d.Max} {
		*f = finiteOrZero(*f)
	}
	d.Curve = finitePoints(d.Curve)
	return d
}

// WriteJSON writes r to w as indented JSON. NaN and infinite values, which
// JSON cannot hold, are not written: such metrics and curve or series
// points are left out and other such values are written as 0.
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	// The JSON is read by tools and people, never embedded in HTML.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(finiteReport(r)); err != nil {
		return fmt.Errorf("bench: writing report JSON: %w", err)
	}
	return nil
}

// ReadJSON reads a report written by WriteJSON. Unknown fields are ignored
// so that reports written by newer versions can still be compared.
func ReadJSON(rd io.Reader) (*Report, error) {
	var r Report
	if err := json.NewDecoder(rd).Decode(&r); err != nil {
		return nil, fmt.Errorf("bench: reading report JSON: %w", err)
	}
	return &r, nil
}

// figure is a plot as written to a file and embedded in the reports.
type figure struct {
	file string
	alt  string
	svg  []byte
}

// WriteDir writes the full report of r into dir, creating it if needed:
// report.json, the plots latency.svg (percentile curves of the
// distributions) and throughput.svg (the series over time), report.md,
// which links the plots, and report.html, a single self-contained file
// with the plots inlined. A plot with nothing to draw is not written, and
// a stale one left by an earlier run is removed so that the directory
// describes one run. Each file is written under a temporary name and then
// renamed, so a reader never sees a half-written file.
func WriteDir(dir string, r *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bench: creating report directory: %w", err)
	}
	var figs []figure
	for _, f := range []struct {
		file, alt string
		plot      func(*Report) (plot, bool)
	}{
		{latencyFile, "Latency by percentile", latencyPlot},
		{throughputFile, "Throughput over time", throughputPlot},
	} {
		p, ok := f.plot(r)
		if !ok {
			if err := os.Remove(filepath.Join(dir, f.file)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("bench: removing stale plot: %w", err)
			}
			continue
		}
		var b bytes.Buffer
		if err := p.writeSVG(&b); err != nil {
			return err
		}
		figs = append(figs, figure{file: f.file, alt: f.alt, svg: b.Bytes()})
	}

	var js, md, html bytes.Buffer
	if err := WriteJSON(&js, r); err != nil {
		return err
	}
	if err := writeMarkdown(&md, r, figs); err != nil {
		return err
	}
	if err := writeHTML(&html, r, figs); err != nil {
		return err
	}
	type file struct {
		name string
		data []byte
	}
	files := []file{{reportJSONFile, js.Bytes()}}
	for _, f := range figs {
		files = append(files, file{f.file, f.svg})
	}
	files = append(files, file{reportMDFile, md.Bytes()}, file{reportHTMLFile, html.Bytes()})
	for _, f := range files {
		if err := writeFileAtomic(dir, f.name, f.data); err != nil {
			return err
		}
	}
	return nil
}

// writeFileAtomic writes data to dir/name through a temporary file in dir
// that is renamed into place once complete.
func writeFileAtomic(dir, name string, data []byte) (err error) {
	tmp, err := os.CreateTemp(dir, "."+name+".*.tmp")
	if err != nil {
		return fmt.Errorf("bench: writing %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("bench: writing %s: %w", name, err)
	}
	// CreateTemp makes the file private; a report is meant to be shared.
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("bench: writing %s: %w", name, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("bench: writing %s: %w", name, err)
	}
	if err = os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("bench: writing %s: %w", name, err)
	}
	return nil
}

// reportTitle is the heading of the Markdown and HTML reports.
func reportTitle(r *Report) string {
	t := "Bench: " + orDefault(r.Scenario, "run")
	if r.Target != "" {
		t += " on " + r.Target
	}
	if !r.Start.IsZero() {
		t += " — " + r.Start.Format("2006-01-02 15:04 MST")
	}
	return t
}

// runLine describes where and how long a run went, for the Markdown and
// HTML reports.
func runLine(r *Report) string {
	s := "Elapsed " + human(r.Elapsed) + " s"
	if r.Addr != "" {
		s = "Target address " + r.Addr + ". " + s
	}
	return s + "."
}

// hostLine describes the machine a run was measured on.
func hostLine(h Host) string {
	var parts []string
	if h.Hostname != "" {
		parts = append(parts, h.Hostname)
	}
	if h.OS != "" || h.Arch != "" {
		parts = append(parts, h.OS+"/"+h.Arch)
	}
	if h.CPUs > 0 {
		parts = append(parts, strconv.Itoa(h.CPUs)+" CPUs")
	}
	if h.GoVersion != "" {
		parts = append(parts, h.GoVersion)
	}
	if len(parts) == 0 {
		return ""
	}
	return "Host: " + strings.Join(parts, ", ") + "."
}

// writeMarkdown writes r as a Markdown document that links the figures,
// which WriteDir writes next to it.
func writeMarkdown(w io.Writer, r *Report, figs []figure) error {
	ew := &errWriter{w: w}
	ew.printf("# %s\n\n", mdEscape(reportTitle(r)))
	if r.Interrupted {
		ew.printf("> **%s.**\n\n", interruptedNote)
	}
	if r.Error != "" {
		ew.printf("> Error: %s\n\n", mdEscape(r.Error))
	}
	ew.printf("%s\n", mdEscape(runLine(r)))
	if h := hostLine(r.Host); h != "" {
		ew.printf("\n%s\n", mdEscape(h))
	}
	if f := r.Floor; f != nil {
		if f.Starved {
			ew.printf("\n> **%s.**\n", mdEscape(f.verdict()))
		} else {
			ew.printf("\n%s.\n", mdEscape("Floor (this machine, during the run): "+f.verdict()))
		}
	}
	ts := dataTables(r)
	if len(r.Params) > 0 {
		ts = append([]table{paramTable(r)}, ts...)
	}
	for _, t := range ts {
		ew.printf("\n## %s\n\n", t.Title)
		writeMarkdownTable(ew, t)
	}
	if len(figs) > 0 {
		ew.printf("\n## Plots\n")
		for _, f := range figs {
			ew.printf("\n![%s](%s)\n", mdEscape(f.alt), f.file)
		}
	}
	return ew.err
}

// writeMarkdownTable writes t as a GitHub-flavoured Markdown table.
func writeMarkdownTable(ew *errWriter, t table) {
	cells := make([]string, len(t.Head))
	for i, h := range t.Head {
		cells[i] = mdCell(h)
	}
	ew.printf("| %s |\n", strings.Join(cells, " | "))
	for i := range t.Head {
		cells[i] = "---"
		if i < len(t.Right) && t.Right[i] {
			cells[i] = "---:"
		}
	}
	ew.printf("|%s|\n", strings.Join(cells, "|"))
	for _, r := range t.Rows {
		cs := make([]string, len(r.Cells))
		for i, c := range r.Cells {
			cs[i] = mdCell(c)
			if r.Fail && c == "FAIL" {
				cs[i] = "**FAIL**"
			}
		}
		ew.printf("| %s |\n", strings.Join(cs, " | "))
	}
}

// mdEscape escapes the characters that Markdown would otherwise take as
// markup in running text.
func mdEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune("\\`*_[]<>|#", c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// mdCell makes s safe as a Markdown table cell: escaped, on one line, and
// not empty so the table keeps its shape.
func mdCell(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return " "
	}
	return mdEscape(s)
}

// htmlTemplate lays out the HTML report. It is parsed once; executing it
// does not change it.
var htmlTemplate = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;max-width:64em;margin:2em auto;padding:0 1em;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.5em}
table{border-collapse:collapse;margin:.5em 0}
th,td{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}
th{border-bottom:2px solid #999}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.fail td{color:#b00020;font-weight:bold}
.warn{background:#fff4d6;border-left:4px solid #e0a000;padding:.5em 1em}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}
</style>
</head>
<body>
<h1>{{.Title}}</h1>
{{if .Interrupted}}<p class="warn"><strong>{{.InterruptedNote}}.</strong></p>
{{end}}{{with .Error}}<p class="warn">Error: {{.}}</p>
{{end}}<p>{{.Run}}{{with .Host}}<br>{{.}}{{end}}</p>
{{with .Floor}}{{if $.Starved}}<p class="warn"><strong>{{.}}.</strong></p>{{else}}<p>Floor (this machine, during the run): {{.}}.</p>{{end}}
{{end}}
{{range .Tables}}{{$t := .}}<h2>{{.Title}}</h2>
<table>
<thead><tr>{{range .Head}}<th>{{.}}</th>{{end}}</tr></thead>
<tbody>
{{range .Rows}}<tr{{if .Fail}} class="fail"{{end}}>{{range $i, $c := .Cells}}<td{{if index $t.Right $i}} class="num"{{end}}>{{$c}}</td>{{end}}</tr>
{{end}}</tbody>
</table>
{{end}}{{if .Figures}}<h2>Plots</h2>
{{range .Figures}}<figure>
{{.}}
</figure>
{{end}}{{end}}</body>
</html>
`))

// writeHTML writes r as one self-contained HTML page with the figures
// inlined, so that it can be mailed or archived as a single file.
func writeHTML(w io.Writer, r *Report, figs []figure) error {
	ts := dataTables(r)
	if len(r.Params) > 0 {
		ts = append([]table{paramTable(r)}, ts...)
	}
	svgs := make([]template.HTML, len(figs))
	for i, f := range figs {
		// The SVG is generated here, with every text escaped, so it is
		// trusted markup.
		svgs[i] = template.HTML(f.svg)
	}
	var floor string
	if r.Floor != nil {
		floor = r.Floor.verdict()
	}
	data := struct {
		Title, InterruptedNote, Error, Run, Host, Floor string
		Interrupted, Starved                            bool
		Tables                                          []table
		Figures                                         []template.HTML
	}{
		Floor:           floor,
		Starved:         r.Floor != nil && r.Floor.Starved,
		Title:           reportTitle(r),
		InterruptedNote: interruptedNote,
		Error:           r.Error,
		Run:             runLine(r),
		Host:            hostLine(r.Host),
		Interrupted:     r.Interrupted,
		Tables:          ts,
		Figures:         svgs,
	}
	if err := htmlTemplate.Execute(w, data); err != nil {
		return fmt.Errorf("bench: writing HTML report: %w", err)
	}
	return nil
}

// orDefault returns s, or def when s is empty.
func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// errWriter is a writer that remembers its first error and then writes
// nothing more, so that a long run of writes is checked once at the end.
type errWriter struct {
	w   io.Writer
	err error
}

// Write writes p unless an earlier write failed.
func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

// printf formats to the writer unless an earlier write failed.
func (e *errWriter) printf(format string, args ...any) {
	fmt.Fprintf(e, format, args...)
}
