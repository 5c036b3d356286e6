package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// SweepReport is the outcome of a sweep: fire run at each of a list of
// rates in turn against one target, and the highest rate it held.
type SweepReport struct {
	Target string    `json:"target"`
	Addr   string    `json:"addr"`
	Start  time.Time `json:"start"`
	// HeldP99 is the bound in ms a rate's lateness p99 must stay under
	// to be held.
	HeldP99 float64 `json:"held_p99_ms"`
	// Steps are the rates in the order they ran; an interrupted sweep
	// has only those it began.
	Steps []SweepStep `json:"steps"`
	// Highest is the highest rate held, 0 when none was.
	Highest float64 `json:"highest_held"`
	// Interrupted reports a sweep cut short (Ctrl-C, a failing target).
	Interrupted bool `json:"interrupted"`
}

// SweepStep is one rate of a sweep.
type SweepStep struct {
	Rate float64 `json:"rate"`
	// Held reports that the rate's lateness p99 stayed under HeldP99,
	// nothing was early and every check held; Why says what failed when
	// it was not.
	Held   bool    `json:"held"`
	Why    string  `json:"why,omitempty"`
	Report *Report `json:"report"`
}

// Sweep runs fire against t at each rate of cfg.Rates in turn (each for
// cfg.Duration, with the rest of cfg as a single run takes it), and
// reports every step and the highest rate held: lateness p99 under
// cfg.HeldP99, nothing early, every timer delivered and no run failing.
// Each step has its floor measured beside it, as every run does. A line
// per step goes to prog.W as it starts and as it ends. Like Run, the
// error is only for a sweep that cannot start; one cut short returns the
// steps it ran, marked Interrupted.
func Sweep(ctx context.Context, t Target, cfg Config, prog Progress) (*SweepReport, error) {
	cfg = cfg.WithDefaults("fire")
	if len(cfg.Rates) == 0 {
		cfg.Rates = []float64{cfg.Rate}
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &SweepReport{Target: t.Name(), Addr: t.Addr(), Start: time.Now(), HeldP99: ms(cfg.HeldP99)}
	note := func(format string, args ...any) {
		if prog.W != nil {
			fmt.Fprintf(prog.W, format+"\n", args...)
		}
	}
	for i, rate := range cfg.Rates {
		if ctx.Err() != nil {
			s.Interrupted = true
			break
		}
		step := cfg
		step.Rate, step.Rates = rate, nil
		note("sweep %d/%d: fire at %s/s for %v", i+1, len(cfg.Rates), human(rate), cfg.Duration)
		rep, err := Run(ctx, "fire", t, step, prog)
		if err != nil {
			return nil, err
		}
		held, why := judgeStep(rep, cfg.HeldP99)
		s.Steps = append(s.Steps, SweepStep{Rate: rate, Held: held, Why: why, Report: rep})
		note("sweep %d/%d: %s", i+1, len(cfg.Rates), stepLine(s.Steps[len(s.Steps)-1]))
		if rep.Interrupted {
			s.Interrupted = true
			break
		}
	}
	s.Highest = highestHeld(s.Steps)
	return s, nil
}

// judgeStep says whether a fire run held its rate: it ran to the end, its
// checks hold (nothing early, nothing lost, nothing stray) and its
// lateness p99 is under heldP99. why says what failed, first things
// first.
func judgeStep(rep *Report, heldP99 time.Duration) (held bool, why string) {
	lat, ok := findDist(rep.Dists, "lateness")
	switch {
	case rep.Error != "":
		return false, "the run failed: " + rep.Error
	case rep.Interrupted:
		return false, "interrupted"
	case len(rep.Failed()) > 0:
		var bad []string
		for _, c := range rep.Failed() {
			bad = append(bad, fmt.Sprintf("%s %d", c.Name, c.Got))
		}
		return false, strings.Join(bad, ", ")
	case !ok || lat.Count == 0:
		return false, "nothing was delivered"
	case lat.P99 >= ms(heldP99):
		return false, fmt.Sprintf("lateness p99 %s ms, not under %s ms", human(lat.P99), human(ms(heldP99)))
	}
	return true, ""
}

// highestHeld is the highest rate of the steps that held, 0 for none.
func highestHeld(steps []SweepStep) float64 {
	var best float64
	for _, st := range steps {
		if st.Held {
			best = max(best, st.Rate)
		}
	}
	return best
}

// findDist returns the distribution of ds named name.
func findDist(ds []Dist, name string) (Dist, bool) {
	for _, d := range ds {
		if d.Name == name {
			return d, true
		}
	}
	return Dist{}, false
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// stepLine sums a step up in a line: the verdict, the lateness and the
// floor measured beside it.
func stepLine(st SweepStep) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s/s ", human(st.Rate))
	if st.Held {
		b.WriteString("held")
	} else {
		b.WriteString("not held (" + st.Why + ")")
	}
	rep := st.Report
	if lat, ok := findDist(rep.Dists, "lateness"); ok {
		fmt.Fprintf(&b, ": lateness p50 %s p99 %s max %s ms", human(lat.P50), human(lat.P99), human(lat.Max))
	}
	for _, m := range rep.Metrics {
		if m.Name == "delivered and acked" {
			fmt.Fprintf(&b, ", %s/s delivered", human(m.Value))
		}
	}
	if f := rep.Floor; f != nil {
		fmt.Fprintf(&b, "; floor p99 %s ms", human(f.Lateness.P99))
		if f.Starved {
			b.WriteString(" (MACHINE STARVED)")
		}
		if f.HostKnown {
			fmt.Fprintf(&b, ", host CPU %s%% busy, %s%% steal", human(100*f.HostBusy), human(100*f.Steal))
		}
	}
	return b.String()
}

// sweepTable is the sweep as one table, a row per rate.
func sweepTable(s *SweepReport) table {
	t := table{
		Title: "Sweep",
		Head:  []string{"rate/s", "delivered/s", "p50 ms", "p99 ms", "max ms", "early", "not delivered", "floor p99 ms", "starved", "held"},
		Right: []bool{true, true, true, true, true, true, true, true, false, false},
	}
	for _, st := range s.Steps {
		rep := st.Report
		cells := []string{human(st.Rate), "—", "—", "—", "—", "—", "—", "—", "—", "no"}
		for _, m := range rep.Metrics {
			if m.Name == "delivered and acked" {
				cells[1] = human(m.Value)
			}
		}
		if lat, ok := findDist(rep.Dists, "lateness"); ok {
			cells[2], cells[3], cells[4] = human(lat.P50), human(lat.P99), human(lat.Max)
		}
		for _, c := range rep.Checks {
			switch c.Name {
			case "early deliveries":
				cells[5] = strconv.FormatInt(c.Got, 10)
			case "not delivered":
				cells[6] = strconv.FormatInt(c.Got, 10)
			}
		}
		if f := rep.Floor; f != nil {
			cells[7], cells[8] = human(f.Lateness.P99), "no"
			if f.Starved {
				cells[8] = "YES"
			}
		}
		if st.Held {
			cells[9] = "yes"
		}
		t.Rows = append(t.Rows, row{Cells: cells, Fail: !st.Held})
	}
	return t
}

// sweepVerdict is the sweep's last line.
func sweepVerdict(s *SweepReport) string {
	crit := fmt.Sprintf("lateness p99 < %s ms, nothing early, none lost", human(s.HeldP99))
	if s.Highest == 0 {
		return "no rate held (" + crit + ")"
	}
	return fmt.Sprintf("highest rate held (%s): %s/s", crit, human(s.Highest))
}

// WriteSweepTable writes the human summary of a sweep: a headline, a row
// per rate with the floor beside it, and the verdict.
func WriteSweepTable(w io.Writer, s *SweepReport) error {
	ew := &errWriter{w: w}
	ew.printf("sweep of fire on %s at %s: %d rates, started %s\n", s.Target, s.Addr, len(s.Steps), s.Start.Format("2006-01-02 15:04:05 MST"))
	if s.Interrupted {
		ew.printf("%s\n", interruptedNote)
	}
	ew.printf("\n")
	writeTextTable(ew, sweepTable(s))
	ew.printf("\n%s\n", sweepVerdict(s))
	return ew.err
}

// WriteSweepJSON writes s, every step's report in it, as indented JSON;
// values that are not finite are written as WriteJSON does.
func WriteSweepJSON(w io.Writer, s *SweepReport) error {
	c := *s
	c.Steps = make([]SweepStep, len(s.Steps))
	for i, st := range s.Steps {
		st.Report = finiteReport(st.Report)
		c.Steps[i] = st
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&c); err != nil {
		return fmt.Errorf("bench: writing sweep JSON: %w", err)
	}
	return nil
}

// Sweep files WriteSweepDir writes beside a directory per step.
const (
	sweepJSONFile = "sweep.json"
	sweepMDFile   = "sweep.md"
)

// WriteSweepDir writes sweep.json and sweep.md (the table and the
// verdict) into dir, and each step's full report (WriteDir) into
// dir/rate-RATE.
func WriteSweepDir(dir string, s *SweepReport) error {
	for _, st := range s.Steps {
		if err := WriteDir(filepath.Join(dir, "rate-"+strconv.FormatFloat(st.Rate, 'f', -1, 64)), st.Report); err != nil {
			return err
		}
	}
	var js strings.Builder
	if err := WriteSweepJSON(&js, s); err != nil {
		return err
	}
	var md strings.Builder
	ew := &errWriter{w: &md}
	ew.printf("# %s\n\n", mdEscape(fmt.Sprintf("Sweep of fire on %s — %s", s.Target, s.Start.Format("2006-01-02 15:04 MST"))))
	if s.Interrupted {
		ew.printf("> **%s.**\n\n", interruptedNote)
	}
	writeMarkdownTable(ew, sweepTable(s))
	ew.printf("\n%s.\n\nEach rate's full report is in `rate-RATE/report.md`.\n", mdEscape(sweepVerdict(s)))
	if err := writeFileAtomic(dir, sweepJSONFile, []byte(js.String())); err != nil {
		return err
	}
	return writeFileAtomic(dir, sweepMDFile, []byte(md.String()))
}

// WriteSweep shows s on w as o says (the table, or JSON), with the files
// in o.Dir, then returns s.Err().
func (o Output) WriteSweep(w io.Writer, s *SweepReport) error {
	var err error
	if o.JSON {
		err = WriteSweepJSON(w, s)
	} else {
		err = WriteSweepTable(w, s)
	}
	if err != nil {
		return err
	}
	if o.Dir != "" {
		if err := WriteSweepDir(o.Dir, s); err != nil {
			return err
		}
		if o.Log != nil {
			fmt.Fprintf(o.Log, "sweep written to %s\n", filepath.Join(o.Dir, sweepMDFile))
		}
	}
	return s.Err()
}

// Err is nil unless a step broke what must hold at any rate: a delivery
// early or stray, or the target failing. A rate not held for its
// lateness or for timers still undelivered when its drain ended is what
// a sweep measures, not an error.
func (s *SweepReport) Err() error {
	for _, st := range s.Steps {
		rep := st.Report
		if rep.Error != "" {
			return fmt.Errorf("at %s/s: %s", human(st.Rate), rep.Error)
		}
		for _, c := range rep.Failed() {
			if c.Name == "early deliveries" || c.Name == "stray deliveries" {
				return fmt.Errorf("at %s/s: checks failed: %s: %d, want %d", human(st.Rate), c.Name, c.Got, c.Want)
			}
		}
	}
	return nil
}
