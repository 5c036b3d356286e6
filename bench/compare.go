package bench

import (
	"errors"
	"fmt"
	"io"
	"math"
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
	return writeComparison(w, labels, reports, func(ew *errWriter, g cmpGroup) {
		ew.printf("scenario %s\n", orDefault(g.scenario, "(unnamed)"))
		writeTextTable(ew, g.table())
		for _, n := range g.notes {
			ew.printf("note: %s\n", n)
		}
	})
}

// CompareMarkdown writes the comparison Compare writes as Markdown, one
// section and table per scenario, for documentation.
func CompareMarkdown(w io.Writer, labels []string, reports []*Report) error {
	return writeComparison(w, labels, reports, func(ew *errWriter, g cmpGroup) {
		ew.printf("### %s\n\n", mdEscape(orDefault(g.scenario, "(unnamed)")))
		writeMarkdownTable(ew, g.table())
		if len(g.notes) > 0 {
			ew.printf("\n")
			for _, n := range g.notes {
				ew.printf("- %s\n", mdEscape(n))
			}
		}
	})
}

// writeComparison groups reports by scenario and writes each group with
// section, a blank line between groups.
func writeComparison(w io.Writer, labels []string, reports []*Report, section func(*errWriter, cmpGroup)) error {
	groups, err := compareGroups(labels, reports)
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
func compareGroups(labels []string, reports []*Report) ([]cmpGroup, error) {
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
		// Each report's figures by row, and the rows in order of first
		// appearance: the metrics first, then the distributions, as in a
		// report.
		values := make([]map[cmpKey]float64, len(ms))
		var keys []cmpKey
		seen := map[cmpKey]bool{}
		add := func(i int, k cmpKey, v float64) {
			if _, dup := values[i][k]; dup {
				return // the first of a name wins, as in a table
			}
			values[i][k] = v
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
		for i, m := range ms {
			g.labels = append(g.labels, m.label)
			values[i] = map[cmpKey]float64{}
			for _, x := range m.r.Metrics {
				add(i, cmpKey{x.Name, x.Unit}, x.Value)
			}
		}
		for i, m := range ms {
			for _, d := range m.r.Dists {
				add(i, cmpKey{d.Name + " p50", d.Unit}, d.P50)
				add(i, cmpKey{d.Name + " p99", d.Unit}, d.P99)
				add(i, cmpKey{d.Name + " max", d.Unit}, d.Max)
			}
		}
		// The floor of each run, measured beside it, last.
		for i, m := range ms {
			if f := m.r.Floor; f != nil {
				for _, d := range f.dists() {
					add(i, cmpKey{d.Name + " p50", d.Unit}, d.P50)
					add(i, cmpKey{d.Name + " p99", d.Unit}, d.P99)
					add(i, cmpKey{d.Name + " max", d.Unit}, d.Max)
				}
				for _, x := range f.metrics() {
					add(i, cmpKey{x.Name, x.Unit}, x.Value)
				}
			}
		}
		for _, k := range keys {
			row := cmpRow{name: k.name, unit: k.unit}
			ref, hasRef := values[0][k]
			for i := range ms {
				v, ok := values[i][k]
				switch {
				case !ok:
					row.cells = append(row.cells, missingCell)
				case i == 0 || !hasRef:
					row.cells = append(row.cells, human(v))
				default:
					row.cells = append(row.cells, human(v)+ratio(v, ref))
				}
			}
			g.rows = append(g.rows, row)
		}
		for _, m := range ms {
			if m.r.Interrupted {
				g.notes = append(g.notes, m.label+": "+interruptedNote)
			}
			if f := m.r.Floor; f != nil && f.Starved {
				g.notes = append(g.notes, m.label+": "+f.verdict())
			}
			if bad := m.r.Failed(); len(bad) > 0 {
				names := make([]string, len(bad))
				for i, c := range bad {
					names[i] = c.Name
				}
				g.notes = append(g.notes, fmt.Sprintf("%s: %d check(s) FAIL: %s", m.label, len(bad), strings.Join(names, ", ")))
			}
		}
		groups = append(groups, g)
	}
	return groups, nil
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
