package bench

import (
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// missingCell fills a comparison cell for a report that lacks the row.
const missingCell = "—"

// Compare writes a side-by-side comparison of reports as aligned text;
// labels[i] names the column of reports[i] (when labels is nil or
// labels[i] is empty, the report's Target does). Reports are grouped by
// scenario, in order of first appearance, since figures of different
// scenarios do not compare. Within a group there is one row per metric
// (name and unit) and rows for the p50, p99 and max of each distribution,
// and one column per report. The group's first report is the reference:
// every other cell shows its value and its ratio to the reference, as in
// "534k (1.71x)". A report that lacks a row shows "—". Interrupted runs
// and failed checks are noted under the group's table.
func Compare(w io.Writer, labels []string, reports []*Report) error {
	return writeComparison(w, labels, reports, false, textSection)
}

// CompareSpread writes the comparison Compare writes, with the reports of
// a scenario that share a label taken as repetitions of one target: they
// share its column, and each cell shows the median of the figure, its
// ratio to the reference column's median, and the min and max in
// brackets, as in "534k (1.71x) [498k–560k]". It is how the suite
// reports targets measured in turn, several times over. markdown writes
// the tables as CompareMarkdown does.
func CompareSpread(w io.Writer, labels []string, reports []*Report, markdown bool) error {
	if markdown {
		return writeComparison(w, labels, reports, true, markdownSection)
	}
	return writeComparison(w, labels, reports, true, textSection)
}

// textSection writes a group as aligned text, with its notes.
func textSection(ew *errWriter, g cmpGroup) {
	ew.printf("scenario %s\n", orDefault(g.scenario, "(unnamed)"))
	writeTextTable(ew, g.table())
	for _, n := range g.notes {
		ew.printf("note: %s\n", n)
	}
}

// CompareMarkdown writes the comparison Compare writes as Markdown, one
// section and table per scenario, for documentation.
func CompareMarkdown(w io.Writer, labels []string, reports []*Report) error {
	return writeComparison(w, labels, reports, false, markdownSection)
}

// markdownSection writes a group as a Markdown section, with its notes.
func markdownSection(ew *errWriter, g cmpGroup) {
	ew.printf("### %s\n\n", mdEscape(orDefault(g.scenario, "(unnamed)")))
	writeMarkdownTable(ew, g.table())
	if len(g.notes) > 0 {
		ew.printf("\n")
		for _, n := range g.notes {
			ew.printf("- %s\n", mdEscape(n))
		}
	}
}

// writeComparison groups reports by scenario and writes each group with
// section, a blank line between groups.
func writeComparison(w io.Writer, labels []string, reports []*Report, spread bool, section func(*errWriter, cmpGroup)) error {
	groups, err := compareGroups(labels, reports, spread)
	if err != nil {
		return err
	}
	ew := &errWriter{w: w}
	for i, g := range groups {
		if i > 0 {
			ew.printf("\n")
		}
		section(ew, g)
	}
	if ew.err != nil {
		return fmt.Errorf("bench: writing comparison: %w", ew.err)
	}
	return nil
}

// table is the group as a table: a column for the figure, one for its
// unit, and one per report, with the reports' columns numbers.
func (g cmpGroup) table() table {
	t := table{
		Head:  append([]string{"", "unit"}, g.labels...),
		Right: make([]bool, 2+len(g.labels)),
	}
	for j := range g.labels {
		t.Right[2+j] = true
	}
	for _, r := range g.rows {
		t.Rows = append(t.Rows, row{Cells: append([]string{r.name, r.unit}, r.cells...)})
	}
	return t
}

// cmpGroup is the comparison of the reports of one scenario.
type cmpGroup struct {
	scenario string
	labels   []string
	rows     []cmpRow
	// notes say which reports are incomplete or failed their checks.
	notes []string
}

// cmpRow is one figure across the reports of a group: its cells are
// formatted already.
type cmpRow struct {
	name, unit string
	cells      []string
}

// cmpKey identifies a row: the same name in another unit is another figure.
type cmpKey struct{ name, unit string }

// compareGroups builds the comparison of reports, grouped by scenario.
// With spread, the reports of a scenario that share a label are
// repetitions of one target and share a column (see CompareSpread).
func compareGroups(labels []string, reports []*Report, spread bool) ([]cmpGroup, error) {
	if labels != nil && len(labels) != len(reports) {
		return nil, fmt.Errorf("bench: compare: %d labels for %d reports", len(labels), len(reports))
	}
	type member struct {
		label string
		r     *Report
	}
	var order []string
	byScenario := map[string][]member{}
	for i, r := range reports {
		if r == nil {
			return nil, errors.New("bench: compare: report " + strconv.Itoa(i) + " is nil")
		}
		label := r.Target
		if labels != nil && labels[i] != "" {
			label = labels[i]
		}
		if _, ok := byScenario[r.Scenario]; !ok {
			order = append(order, r.Scenario)
		}
		byScenario[r.Scenario] = append(byScenario[r.Scenario], member{label, r})
	}

	groups := make([]cmpGroup, 0, len(order))
	for _, sc := range order {
		ms := byScenario[sc]
		g := cmpGroup{scenario: sc}
		// The columns: a report each, or with spread a label each, and
		// the reports in each.
		var cols [][]member
		colOf := map[string]int{}
		for _, m := range ms {
			c, ok := colOf[m.label]
			if !spread || !ok {
				c = len(cols)
				colOf[m.label] = c
				cols = append(cols, nil)
			}
			cols[c] = append(cols[c], m)
		}
		// Each column's figures by row, one value per report, and the
		// rows in order of first appearance: the metrics of every report
		// first, then the distributions, then the floor, as in a report.
		values := make([]map[cmpKey][]float64, len(cols))
		for c := range cols {
			values[c] = map[cmpKey][]float64{}
		}
		var keys []cmpKey
		seen := map[cmpKey]bool{}
		for _, figures := range []func(*Report) []Metric{reportMetrics, reportDists, floorFigures} {
			for c, col := range cols {
				for _, m := range col {
					mine := map[cmpKey]bool{} // the first of a name wins, as in a table
					for _, x := range figures(m.r) {
						k := cmpKey{x.Name, x.Unit}
						if mine[k] {
							continue
						}
						mine[k] = true
						values[c][k] = append(values[c][k], x.Value)
						if !seen[k] {
							seen[k] = true
							keys = append(keys, k)
						}
					}
				}
			}
		}
		for _, col := range cols {
			label := col[0].label
			if len(col) > 1 {
				label += fmt.Sprintf(" (%d runs)", len(col))
			}
			g.labels = append(g.labels, label)
		}
		for _, k := range keys {
			row := cmpRow{name: k.name, unit: k.unit}
			ref := values[0][k]
			for c := range cols {
				vs, ok := values[c][k]
				switch {
				case !ok:
					row.cells = append(row.cells, missingCell)
				case c == 0 || len(ref) == 0:
					row.cells = append(row.cells, spreadCell(vs, nil))
				default:
					row.cells = append(row.cells, spreadCell(vs, ref))
				}
			}
			g.rows = append(g.rows, row)
		}
		for _, col := range cols {
			for i, m := range col {
				label := m.label
				if len(col) > 1 {
					label += fmt.Sprintf(" run %d", i+1)
				}
				if m.r.Interrupted {
					g.notes = append(g.notes, label+": "+interruptedNote)
				}
				if f := m.r.Floor; f != nil && f.Starved {
					g.notes = append(g.notes, label+": "+f.verdict())
				}
				if bad := m.r.Failed(); len(bad) > 0 {
					names := make([]string, len(bad))
					for i, c := range bad {
						names[i] = c.Name
					}
					g.notes = append(g.notes, fmt.Sprintf("%s: %d check(s) FAIL: %s", label, len(bad), strings.Join(names, ", ")))
				}
			}
		}
		groups = append(groups, g)
	}
	return groups, nil
}

// reportMetrics, reportDists and floorFigures return the figures of a
// report that a comparison shows, in turn: its metrics; the p50, p99 and
// max of its distributions; and its floor's distributions and figures.
func reportMetrics(r *Report) []Metric { return r.Metrics }

func reportDists(r *Report) []Metric { return distFigures(r.Dists) }

func floorFigures(r *Report) []Metric {
	if r.Floor == nil {
		return nil
	}
	return append(distFigures(r.Floor.dists()), r.Floor.metrics()...)
}

// distFigures are the p50, p99 and max of each of ds.
func distFigures(ds []Dist) []Metric {
	var ms []Metric
	for _, d := range ds {
		ms = append(ms, Metric{Name: d.Name + " p50", Value: d.P50, Unit: d.Unit},
			Metric{Name: d.Name + " p99", Value: d.P99, Unit: d.Unit},
			Metric{Name: d.Name + " max", Value: d.Max, Unit: d.Unit})
	}
	return ms
}

// spreadCell formats the values of one figure in one column: a single
// value as it is, several (repetitions) as their median and, in
// brackets, their min and max. With ref (the reference column's values),
// the ratio of the median to ref's median follows the median.
func spreadCell(vs, ref []float64) string {
	med := median(vs)
	s := human(med)
	if ref != nil {
		s += ratio(med, median(ref))
	}
	if len(vs) > 1 {
		s += " [" + human(slices.Min(vs)) + "–" + human(slices.Max(vs)) + "]"
	}
	return s
}

// median is the middle of vs (the mean of the two middle values of an
// even count), NaN for none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// ratio formats v relative to the reference ref with three significant
// digits or more, as " (1.71x)", " (12.5x)" or " (5340x)", or returns ""
// when the ratio means nothing (a zero or non-finite reference).
func ratio(v, ref float64) string {
	q := v / ref
	if ref == 0 || !finite(q) {
		return ""
	}
	prec := 2
	switch a := math.Abs(q); {
	case a >= 99.95:
		prec = 0
	case a >= 9.995:
		prec = 1
	}
	return " (" + strconv.FormatFloat(q, 'f', prec, 64) + "x)"
}
