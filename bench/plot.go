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

// Plot geometry, in SVG user units. A plot is one or more panels stacked
// under its title, each with its own axes and its legend below it, one
// row per line, so that the legend never hides a curve.
const (
	plotWidth    = 800.0
	titleBand    = 40.0 // the plot's title, once at the top
	panelHead    = 24.0 // a panel's own title, above its plot area
	areaHeight   = 336.0
	marginLeft   = 76.0
	marginRight  = 44.0 // room for the last X tick label
	marginBottom = 60.0 // X tick labels and the axis title
	legendRow    = 20.0
	legendPad    = 8.0
)

// maxDecades bounds the percentile axis at 99.9999%: finer percentiles
// are noise for any run the bench can make.
const maxDecades = 6

// plot is a chart of one or more panels, in data coordinates, ready to be
// written as SVG.
type plot struct {
	title  string
	panels []panel
}

// panel is one chart of a plot: its own axes and the lines on them.
type panel struct {
	title string // may be empty
	x, y  axis
	lines []plotLine
}

// axis is one axis of a panel: the range it spans and where its ticks go.
type axis struct {
	title  string
	lo, hi float64
	ticks  []tick
}

// tick is one labelled tick of an axis, with a gridline across the panel.
type tick struct {
	v     float64
	label string
}

// plotLine is one curve of a panel. style numbers its colour and dash
// pattern, unique within the plot, so that no two lines of a plot look
// alike even on different panels.
type plotLine struct {
	label string
	pts   []Point
	style int
	// markLast marks the last point with a dot: the maximum that ends a
	// percentile curve, which is otherwise a step that may fall on the
	// panel's edge.
	markLast bool
}

// Latency panels. Call latency (request to response) and lateness (due
// time to delivery) are different quantities, often orders of magnitude
// apart, so they are drawn on panels of their own.
const (
	latePanel = "Lateness: delivered after the due time"
	callPanel = "Call latency: request to response"
)

// latencyPanelOf names the panel of the distribution called name.
func latencyPanelOf(name string) string {
	if strings.Contains(name, "lateness") {
		return latePanel
	}
	return callPanel
}

// supportedDecades is how far along the HDR scale (see hdrX) the curve of
// d may go: up to the percentile 1 - 1/n of its n values, the last one
// below which a value lies. Beyond it the curve would only be the maximum
// stretched over percentiles that n values cannot tell apart: 100 values
// say nothing of the 99.9th percentile. A distribution whose count is not
// known (0) goes as far as its finest percentile other than the maximum.
func supportedDecades(d Dist) float64 {
	if d.Count > 0 {
		return math.Min(snapDecade(math.Log10(float64(d.Count))), maxDecades)
	}
	var finest float64
	for _, p := range d.Curve {
		if x, ok := hdrX(p.X); ok {
			finest = math.Max(finest, x)
		}
	}
	return finest
}

// latencyPlot returns the percentile plot of r's distributions, and false
// when no distribution has a curve to draw. The X axis is the HDR
// histogram scale: log10(1/(1-p)), so that 90%, 99%, 99.9%... are evenly
// spaced and the tail, where latency problems live, gets most of the
// width.
//
// Lateness and call latency are on panels of their own, each with its own
// axes. A distribution of n values is drawn up to the percentile 1 - 1/n
// and no further (supportedDecades); its maximum, which every percentile
// beyond that is, ends its curve there as a step. A panel's percentile
// axis ends at the first labelled percentile (90%, 99%, 99.9%...) at or
// past the end of its longest curve.
func latencyPlot(r *Report) (plot, bool) {
	all := r.Dists
	if r.Floor != nil {
		// The floor's lateness, beside the target's.
		all = append(slices.Clone(all), r.Floor.dists()[0])
	}
	p := plot{title: "Latency by percentile" + about(r)}
	var ds [][]Dist // by panel, in the order of p.panels
	for _, d := range all {
		if d.Curve = finitePoints(d.Curve); len(d.Curve) == 0 {
			continue
		}
		name := latencyPanelOf(d.Name)
		i := slices.IndexFunc(p.panels, func(pn panel) bool { return pn.title == name })
		if i < 0 {
			i = len(p.panels)
			p.panels = append(p.panels, panel{title: name})
			ds = append(ds, nil)
		}
		ds[i] = append(ds[i], d)
	}
	if len(p.panels) == 0 {
		return plot{}, false
	}
	style := 0
	for i := range p.panels {
		pn := &p.panels[i]
		yUnit, perLine := commonUnit(len(ds[i]), func(j int) string { return ds[i][j].Unit })
		ys := []float64{0}
		var end float64
		for _, d := range ds[i] {
			l := plotLine{label: d.Name, style: style}
			style++
			if perLine {
				l.label += " (" + d.Unit + ")"
			}
			last := supportedDecades(d)
			end = math.Max(end, last)
			for _, pt := range d.Curve {
				x, ok := hdrX(pt.X)
				switch {
				case !ok: // the maximum
					x = last
					l.markLast = true
				case x > last+1e-9:
					continue
				case x > last:
					x = last
				}
				l.pts = append(l.pts, Point{X: x, Y: pt.Y})
				ys = append(ys, pt.Y)
			}
			pn.lines = append(pn.lines, l)
		}
		// The slack keeps float error (1-0.9 is not 0.1) from adding a
		// decade.
		end = math.Min(math.Max(1, math.Ceil(end-1e-9)), maxDecades)
		pn.x = axis{title: "percentile", lo: 0, hi: end}
		for k := 0; k <= int(end); k++ {
			pn.x.ticks = append(pn.x.ticks, tick{v: float64(k), label: percentileLabel(k)})
		}
		pn.y = valueAxis("latency", yUnit, ys, 6)
	}
	return p, true
}

// hdrX maps the percentile pct (0 to 100) to the HDR scale log10(1/(1-p)),
// and reports false for the 100th percentile, which has no place on it.
func hdrX(pct float64) (float64, bool) {
	q := 1 - math.Min(math.Max(pct, 0), 100)/100
	if q <= 0 {
		return 0, false
	}
	return math.Min(snapDecade(-math.Log10(q)), maxDecades), true
}

// snapDecade returns x, or the whole number of decades float error moved
// it off (1-0.999 is not 0.001, and log10(1000) is not quite 3).
func snapDecade(x float64) float64 {
	if r := math.Round(x); math.Abs(x-r) < 1e-9 {
		return r
	}
	return x
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
//
// A series holds the rate over each sampling tick, and a count that moves
// in steps (a batch, a wheel tick's worth of timers firing together)
// falls now in one tick, now in the next: at a tick of a second or less
// that draws as spikes of the sampling, not of the target. The plot
// therefore draws, at each sample, the rate over a window of
// smoothingWindow around it (count in the window over its length, from
// the counts the ticks add up to), so a rate that holds for less than the
// window is averaged out and one that holds for longer is drawn as it is.
// The report's JSON keeps the rate of every tick.
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
	w := smoothingWindow(ss)
	yUnit, perLine := commonUnit(len(ss), func(i int) string { return ss[i].Unit })
	pn := panel{title: "each point: the rate over the " + human(w) + " s around it"}
	xs, ys := []float64{0}, []float64{0}
	for i, s := range ss {
		l := plotLine{label: s.Name, pts: smoothRate(s.Points, w), style: i}
		if perLine {
			l.label += " (" + s.Unit + ")"
		}
		for _, pt := range l.pts {
			xs = append(xs, pt.X)
			ys = append(ys, pt.Y)
		}
		pn.lines = append(pn.lines, l)
	}
	pn.x = valueAxis("time since start", "s", xs, 8)
	pn.y = valueAxis("rate", yUnit, ys, 6)
	return plot{title: "Throughput" + about(r), panels: []panel{pn}}, true
}

// smoothingWindow returns the window, in seconds, throughputPlot averages
// rates over: three sampling ticks (the median interval between the
// samples of ss), and at least a second.
func smoothingWindow(ss []Series) float64 {
	var dts []float64
	for _, s := range ss {
		prev := 0.0
		for _, p := range s.Points {
			if p.X > prev {
				dts = append(dts, p.X-prev)
				prev = p.X
			}
		}
	}
	if len(dts) == 0 {
		return 1
	}
	slices.Sort(dts)
	return math.Max(1, 3*dts[len(dts)/2])
}

// smoothRate returns, at each sample of pts, the rate over the window of
// w seconds centred on it, moved inside the run where it would stick out
// of it, so that every point averages a whole window when the run is at
// least that long. A point of pts is the rate over the time since the
// point before it (since 0 for the first one), the way the meter samples;
// within that time the count is taken to grow evenly. Points that do not
// move forward in time are dropped.
func smoothRate(pts []Point, w float64) []Point {
	// The count at the time of each sample: t[i], c[i].
	t, c := []float64{0}, []float64{0}
	for _, p := range pts {
		last := t[len(t)-1]
		if p.X <= last {
			continue
		}
		t = append(t, p.X)
		c = append(c, c[len(c)-1]+p.Y*(p.X-last))
	}
	end := t[len(t)-1]
	count := func(at float64) float64 {
		i, found := slices.BinarySearch(t, at)
		switch {
		case found:
			return c[i]
		case i == 0:
			return 0
		case i == len(t):
			return c[len(c)-1]
		}
		f := (at - t[i-1]) / (t[i] - t[i-1])
		return c[i-1] + f*(c[i]-c[i-1])
	}
	out := make([]Point, 0, len(t)-1)
	for _, x := range t[1:] {
		a, b := x-w/2, x+w/2
		if a < 0 {
			a, b = 0, math.Min(w, end)
		}
		if b > end {
			a, b = math.Max(0, end-w), end
		}
		out = append(out, Point{X: x, Y: (count(b) - count(a)) / (b - a)})
	}
	return out
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

// colour returns the colour of style i: a palette of distinct,
// colour-blind friendly hues (Tableau 10).
func colour(i int) string {
	colours := [...]string{
		"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
		"#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
	}
	return colours[i%len(colours)]
}

// dashes returns the dash pattern of style i: solid until the palette runs
// out, then dashed so that lines of the same colour differ.
func dashes(i int) string {
	if (i/10)%2 == 1 {
		return ` stroke-dasharray="8 4"`
	}
	return ""
}

// height is the height of pn in the SVG: its title, its plot area, its
// axis labels and its legend.
func (pn *panel) height() float64 {
	return panelHead + areaHeight + marginBottom + legendRow*float64(len(pn.lines)) + legendPad
}

// writeSVG writes p as a standalone SVG document. It has no XML prolog so
// that the same bytes can be inlined in HTML.
func (p *plot) writeSVG(w io.Writer) error {
	height := titleBand
	for i := range p.panels {
		height += p.panels[i].height()
	}
	ew := &errWriter{w: w}
	ew.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%s" height="%s" viewBox="0 0 %s %s" font-family="sans-serif" font-size="12">`+"\n",
		num(plotWidth), num(height), num(plotWidth), num(height))
	ew.printf("<title>%s</title>\n", esc(p.title))
	ew.printf(`<rect width="100%%" height="100%%" fill="#ffffff"/>` + "\n")
	ew.printf(`<text x="%s" y="26" text-anchor="middle" font-size="16" font-weight="bold">%s</text>`+"\n",
		num(plotWidth/2), esc(p.title))
	y := titleBand
	for i := range p.panels {
		p.panels[i].writeSVG(ew, y)
		y += p.panels[i].height()
	}
	ew.printf("</svg>\n")
	if ew.err != nil {
		return fmt.Errorf("bench: writing plot: %w", ew.err)
	}
	return nil
}

// writeSVG writes pn as a group of SVG elements whose top is at y0.
func (pn *panel) writeSVG(ew *errWriter, y0 float64) {
	left, right := marginLeft, plotWidth-marginRight
	top := y0 + panelHead
	bottom := top + areaHeight
	sx := func(v float64) float64 { return left + (v-pn.x.lo)/(pn.x.hi-pn.x.lo)*(right-left) }
	sy := func(v float64) float64 { return bottom - (v-pn.y.lo)/(pn.y.hi-pn.y.lo)*(bottom-top) }

	ew.printf("<g>\n")
	if pn.title != "" {
		ew.printf(`<text x="%s" y="%s" font-size="13" font-style="italic" fill="#333333">%s</text>`+"\n",
			num(left), num(top-8), esc(pn.title))
	}

	// Gridlines and tick labels.
	ew.printf(`<g stroke="#e4e4e4" stroke-width="1">` + "\n")
	for _, t := range pn.x.ticks {
		ew.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s"/>`+"\n", num(sx(t.v)), num(top), num(sx(t.v)), num(bottom))
	}
	for _, t := range pn.y.ticks {
		ew.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s"/>`+"\n", num(left), num(sy(t.v)), num(right), num(sy(t.v)))
	}
	ew.printf("</g>\n")
	ew.printf(`<rect x="%s" y="%s" width="%s" height="%s" fill="none" stroke="#666666"/>`+"\n",
		num(left), num(top), num(right-left), num(bottom-top))
	ew.printf(`<g fill="#333333" text-anchor="middle">` + "\n")
	for _, t := range pn.x.ticks {
		ew.printf(`<text x="%s" y="%s">%s</text>`+"\n", num(sx(t.v)), num(bottom+18), esc(t.label))
	}
	ew.printf("</g>\n")
	ew.printf(`<g fill="#333333" text-anchor="end">` + "\n")
	for _, t := range pn.y.ticks {
		ew.printf(`<text x="%s" y="%s">%s</text>`+"\n", num(left-8), num(sy(t.v)+4), esc(t.label))
	}
	ew.printf("</g>\n")

	// Axis titles.
	ew.printf(`<text x="%s" y="%s" text-anchor="middle" font-size="13">%s</text>`+"\n",
		num((left+right)/2), num(bottom+44), esc(pn.x.title))
	ew.printf(`<text transform="translate(18 %s) rotate(-90)" text-anchor="middle" font-size="13">%s</text>`+"\n",
		num((top+bottom)/2), esc(pn.y.title))

	// Lines, with their name as a tooltip.
	ew.printf(`<g fill="none" stroke-width="2" stroke-linejoin="round" stroke-linecap="round">` + "\n")
	for _, l := range pn.lines {
		pts := make([]string, len(l.pts))
		for j, pt := range l.pts {
			pts[j] = num(sx(pt.X)) + "," + num(sy(pt.Y))
		}
		ew.printf(`<polyline stroke="%s"%s points="%s"><title>%s</title></polyline>`+"\n",
			colour(l.style), dashes(l.style), strings.Join(pts, " "), esc(l.label))
		// A single point draws no polyline; mark it so it is seen.
		if len(l.pts) == 1 || l.markLast && len(l.pts) > 0 {
			pt := l.pts[len(l.pts)-1]
			ew.printf(`<circle cx="%s" cy="%s" r="4" fill="%s" stroke="none"><title>%s</title></circle>`+"\n",
				num(sx(pt.X)), num(sy(pt.Y)), colour(l.style), esc(l.label))
		}
	}
	ew.printf("</g>\n")

	// Legend, below the panel.
	ew.printf(`<g font-size="12">` + "\n")
	for i, l := range pn.lines {
		y := bottom + marginBottom + legendRow*float64(i) + 6
		ew.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="3"%s/>`+"\n",
			num(left), num(y), num(left+28), num(y), colour(l.style), dashes(l.style))
		ew.printf(`<text x="%s" y="%s">%s</text>`+"\n", num(left+36), num(y+4), esc(l.label))
	}
	ew.printf("</g>\n</g>\n")
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
