package bench

import (
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Plot geometry, in SVG user units. The legend goes below the plot area,
// one row per line, so that it never hides a curve.
const (
	plotWidth    = 800.0
	plotHeight   = 440.0 // without the legend
	marginLeft   = 76.0
	marginRight  = 44.0 // room for the last X tick label
	marginTop    = 44.0
	marginBottom = 60.0
	legendRow    = 20.0
)

// maxDecades bounds the percentile axis at 99.9999%: finer percentiles
// are noise for any run the bench can make.
const maxDecades = 6

// plot is a line chart, in data coordinates, ready to be written as SVG.
type plot struct {
	title string
	x, y  axis
	lines []plotLine
}

// axis is one axis of a plot: the range it spans and where its ticks go.
type axis struct {
	title  string
	lo, hi float64
	ticks  []tick
}

// tick is one labelled tick of an axis, with a gridline across the plot.
type tick struct {
	v     float64
	label string
}

// plotLine is one curve of a plot.
type plotLine struct {
	label string
	pts   []Point
}

// latencyPlot returns the percentile plot of r's distributions, and false
// when no distribution has a curve to draw. The X axis is the HDR
// histogram scale: log10(1/(1-p)), so that 90%, 99%, 99.9%... are evenly
// spaced and the tail, where latency problems live, gets most of the
// width.
func latencyPlot(r *Report) (plot, bool) {
	var ds []Dist
	all := r.Dists
	if r.Floor != nil {
		// The floor's lateness, beside the target's.
		all = append(slices.Clone(all), r.Floor.dists()[0])
	}
	for _, d := range all {
		if d.Curve = finitePoints(d.Curve); len(d.Curve) > 0 {
			ds = append(ds, d)
		}
	}
	if len(ds) == 0 {
		return plot{}, false
	}

	// The 100th percentile (the maximum) is infinitely far right on this
	// scale; draw it one decade past the finest percentile measured.
	var finest float64
	hasMax := false
	for _, d := range ds {
		for _, p := range d.Curve {
			if x, ok := hdrX(p.X); ok {
				finest = math.Max(finest, x)
			} else {
				hasMax = true
			}
		}
	}
	// The slack keeps float error (1-0.9 is not 0.1) from adding a decade.
	end := math.Max(1, math.Ceil(finest-1e-9))
	if hasMax && end-finest < 0.25 {
		end++
	}
	end = math.Min(end, maxDecades)

	yUnit, perLine := commonUnit(len(ds), func(i int) string { return ds[i].Unit })
	p := plot{title: "Latency by percentile" + about(r)}
	ys := []float64{0}
	for _, d := range ds {
		l := plotLine{label: d.Name}
		if perLine {
			l.label += " (" + d.Unit + ")"
		}
		for _, pt := range d.Curve {
			x, ok := hdrX(pt.X)
			if !ok || x > end {
				x = end
			}
			l.pts = append(l.pts, Point{X: x, Y: pt.Y})
			ys = append(ys, pt.Y)
		}
		p.lines = append(p.lines, l)
	}

	p.x = axis{title: "percentile", lo: 0, hi: end}
	for k := 0; k <= int(end); k++ {
		p.x.ticks = append(p.x.ticks, tick{v: float64(k), label: percentileLabel(k)})
	}
	p.y = valueAxis("latency", yUnit, ys, 6)
	return p, true
}

// hdrX maps the percentile pct (0 to 100) to the HDR scale log10(1/(1-p)),
// and reports false for the 100th percentile, which has no place on it.
func hdrX(pct float64) (float64, bool) {
	q := 1 - math.Min(math.Max(pct, 0), 100)/100
	if q <= 0 {
		return 0, false
	}
	return math.Min(-math.Log10(q), maxDecades), true
}

// percentileLabel names the percentile k decades along the HDR scale:
// 0%, 90%, 99%, 99.9%...
func percentileLabel(k int) string {
	switch k {
	case 0:
		return "0%"
	case 1:
		return "90%"
	case 2:
		return "99%"
	}
	return "99." + strings.Repeat("9", k-2) + "%"
}

// throughputPlot returns the plot of r's series over time, and false when
// no series has a point to draw.
func throughputPlot(r *Report) (plot, bool) {
	var ss []Series
	for _, s := range r.Series {
		if s.Points = finitePoints(s.Points); len(s.Points) > 0 {
			ss = append(ss, s)
		}
	}
	if len(ss) == 0 {
		return plot{}, false
	}
	yUnit, perLine := commonUnit(len(ss), func(i int) string { return ss[i].Unit })
	p := plot{title: "Throughput" + about(r)}
	xs, ys := []float64{0}, []float64{0}
	for _, s := range ss {
		l := plotLine{label: s.Name, pts: s.Points}
		if perLine {
			l.label += " (" + s.Unit + ")"
		}
		for _, pt := range s.Points {
			xs = append(xs, pt.X)
			ys = append(ys, pt.Y)
		}
		p.lines = append(p.lines, l)
	}
	p.x = valueAxis("time since start", "s", xs, 8)
	p.y = valueAxis("rate", yUnit, ys, 6)
	return p, true
}

// about names the run a plot is of, for its title.
func about(r *Report) string {
	switch {
	case r.Scenario != "" && r.Target != "":
		return " — " + r.Scenario + " on " + r.Target
	case r.Scenario != "" || r.Target != "":
		return " — " + r.Scenario + r.Target
	}
	return ""
}

// commonUnit returns the unit shared by the n lines of a plot, for the
// axis title. When they differ it returns "" and true: each line's label
// must then carry its unit.
func commonUnit(n int, unit func(int) string) (string, bool) {
	u := unit(0)
	for i := 1; i < n; i++ {
		if unit(i) != u {
			return "", true
		}
	}
	return u, false
}

// valueAxis returns a linear axis with about n nice ticks that spans vs.
func valueAxis(name, unit string, vs []float64, n int) axis {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, v := range vs {
		lo, hi = math.Min(lo, v), math.Max(hi, v)
	}
	a := axis{title: name}
	if unit != "" {
		a.title += " (" + unit + ")"
	}
	vals := niceTicks(lo, hi, n)
	a.lo, a.hi = vals[0], vals[len(vals)-1]
	for _, v := range vals {
		a.ticks = append(a.ticks, tick{v: v, label: human(v)})
	}
	return a
}

// niceTicks returns about n evenly spaced round values (steps of 1, 2, 2.5
// or 5 times a power of ten) that cover [lo, hi]: the first is at or below
// lo and the last at or above hi, so they can bound an axis. An empty
// range is widened around its value so that there are always at least two
// distinct ticks; bounds that are not finite are taken as [0, 1].
func niceTicks(lo, hi float64, n int) []float64 {
	if !finite(lo) || !finite(hi) {
		lo, hi = 0, 1
	}
	if lo > hi {
		lo, hi = hi, lo
	}
	if lo == hi {
		if lo == 0 {
			hi = 1
		} else {
			d := math.Abs(lo) / 10
			lo, hi = lo-d, hi+d
		}
	}
	n = max(n, 2)
	span := hi - lo
	if !finite(span) {
		return []float64{lo, hi}
	}
	mant, exp := niceStep(span / float64(n-1))
	step := mant * math.Pow(10, float64(exp))
	// The slack keeps rounding error from adding a tick beyond the data.
	const slack = 1e-9
	first := math.Floor(lo/step + slack)
	last := math.Ceil(hi/step - slack)
	ticks := make([]float64, 0, int(last-first)+1)
	for i := first; i <= last; i++ {
		// Scaling the exact integer multiple once, by an exact power of
		// ten, gives 0.3 rather than 3*0.1 = 0.30000000000000004.
		v := i * mant
		if exp < 0 {
			v /= math.Pow(10, float64(-exp))
		} else {
			v *= math.Pow(10, float64(exp))
		}
		ticks = append(ticks, v)
	}
	return ticks
}

// niceStep rounds raw to the nearest nice step, mant×10^exp with mant 1,
// 2, 2.5 or 5.
func niceStep(raw float64) (mant float64, exp int) {
	exp = int(math.Floor(math.Log10(raw)))
	f := raw / math.Pow(10, float64(exp))
	switch {
	case f < 1.5:
		return 1, exp
	case f < 2.25:
		return 2, exp
	case f < 3.5:
		return 2.5, exp
	case f < 7.5:
		return 5, exp
	}
	return 1, exp + 1
}

// colour returns the colour of the i-th line: a palette of distinct,
// colour-blind friendly hues (Tableau 10).
func colour(i int) string {
	colours := [...]string{
		"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
		"#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
	}
	return colours[i%len(colours)]
}

// dashes returns the dash pattern of the i-th line: solid until the
// palette runs out, then dashed so that lines of the same colour differ.
func dashes(i int) string {
	if (i/10)%2 == 1 {
		return ` stroke-dasharray="8 4"`
	}
	return ""
}

// writeSVG writes p as a standalone SVG document. It has no XML prolog so
// that the same bytes can be inlined in HTML.
func (p *plot) writeSVG(w io.Writer) error {
	left, right := marginLeft, plotWidth-marginRight
	top, bottom := marginTop, plotHeight-marginBottom
	height := plotHeight + legendRow*float64(len(p.lines)) + 8
	sx := func(v float64) float64 { return left + (v-p.x.lo)/(p.x.hi-p.x.lo)*(right-left) }
	sy := func(v float64) float64 { return bottom - (v-p.y.lo)/(p.y.hi-p.y.lo)*(bottom-top) }

	ew := &errWriter{w: w}
	ew.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%s" height="%s" viewBox="0 0 %s %s" font-family="sans-serif" font-size="12">`+"\n",
		num(plotWidth), num(height), num(plotWidth), num(height))
	ew.printf("<title>%s</title>\n", esc(p.title))
	ew.printf(`<rect width="100%%" height="100%%" fill="#ffffff"/>` + "\n")
	ew.printf(`<text x="%s" y="26" text-anchor="middle" font-size="16" font-weight="bold">%s</text>`+"\n",
		num(plotWidth/2), esc(p.title))

	// Gridlines and tick labels.
	ew.printf(`<g stroke="#e4e4e4" stroke-width="1">` + "\n")
	for _, t := range p.x.ticks {
		ew.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s"/>`+"\n", num(sx(t.v)), num(top), num(sx(t.v)), num(bottom))
	}
	for _, t := range p.y.ticks {
		ew.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s"/>`+"\n", num(left), num(sy(t.v)), num(right), num(sy(t.v)))
	}
	ew.printf("</g>\n")
	ew.printf(`<rect x="%s" y="%s" width="%s" height="%s" fill="none" stroke="#666666"/>`+"\n",
		num(left), num(top), num(right-left), num(bottom-top))
	ew.printf(`<g fill="#333333" text-anchor="middle">` + "\n")
	for _, t := range p.x.ticks {
		ew.printf(`<text x="%s" y="%s">%s</text>`+"\n", num(sx(t.v)), num(bottom+18), esc(t.label))
	}
	ew.printf("</g>\n")
	ew.printf(`<g fill="#333333" text-anchor="end">` + "\n")
	for _, t := range p.y.ticks {
		ew.printf(`<text x="%s" y="%s">%s</text>`+"\n", num(left-8), num(sy(t.v)+4), esc(t.label))
	}
	ew.printf("</g>\n")

	// Axis titles.
	ew.printf(`<text x="%s" y="%s" text-anchor="middle" font-size="13">%s</text>`+"\n",
		num((left+right)/2), num(bottom+44), esc(p.x.title))
	ew.printf(`<text transform="translate(18 %s) rotate(-90)" text-anchor="middle" font-size="13">%s</text>`+"\n",
		num((top+bottom)/2), esc(p.y.title))

	// Lines, with their name as a tooltip.
	ew.printf(`<g fill="none" stroke-width="2" stroke-linejoin="round" stroke-linecap="round">` + "\n")
	for i, l := range p.lines {
		pts := make([]string, len(l.pts))
		for j, pt := range l.pts {
			pts[j] = num(sx(pt.X)) + "," + num(sy(pt.Y))
		}
		ew.printf(`<polyline stroke="%s"%s points="%s"><title>%s</title></polyline>`+"\n",
			colour(i), dashes(i), strings.Join(pts, " "), esc(l.label))
		// A single point draws no polyline; mark it so it is seen.
		if len(l.pts) == 1 {
			ew.printf(`<circle cx="%s" cy="%s" r="4" fill="%s" stroke="none"/>`+"\n",
				num(sx(l.pts[0].X)), num(sy(l.pts[0].Y)), colour(i))
		}
	}
	ew.printf("</g>\n")

	// Legend, below the plot.
	ew.printf(`<g font-size="12">` + "\n")
	for i, l := range p.lines {
		y := plotHeight + legendRow*float64(i) + 6
		ew.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="3"%s/>`+"\n",
			num(left), num(y), num(left+28), num(y), colour(i), dashes(i))
		ew.printf(`<text x="%s" y="%s">%s</text>`+"\n", num(left+36), num(y+4), esc(l.label))
	}
	ew.printf("</g>\n</svg>\n")
	if ew.err != nil {
		return fmt.Errorf("bench: writing plot: %w", ew.err)
	}
	return nil
}

// num formats an SVG coordinate to a tenth of a unit. Anything not finite
// becomes 0, so that NaN never reaches a document.
func num(v float64) string {
	if !finite(v) {
		return "0"
	}
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64)
}

// esc escapes s for SVG text and attribute values.
func esc(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s)) // writing to a strings.Builder cannot fail
	return b.String()
}
