package chaos

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// reportScenario prints a scenario's verdict line, its figures and the
// verdict as JSON, and fails the test when the verdict does.
func reportScenario(t *testing.T, name string, v verdict, figures []string) {
	t.Helper()
	if len(v.Problems) > maxExamples {
		v.Problems = append(v.Problems[:maxExamples], fmt.Sprintf("and %d more", len(v.Problems)-maxExamples))
	}
	fmt.Printf("%s [%s]\n", v.line(), name)
	fmt.Printf("chaos figures %s: %s\n", name, strings.Join(figures, "; "))
	js, err := json.Marshal(struct {
		Scenario string   `json:"scenario"`
		Verdict  verdict  `json:"verdict"`
		Figures  []string `json:"figures"`
	}{name, v, figures})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("chaos verdict json: %s\n", js)
	if !v.Pass {
		t.Errorf("%s: lost %d, early %d, unexpected %d, corrupt %d, other problems %d\n  %s", name,
			v.Lost, v.Early, v.Unexpected, v.Corrupt, len(v.Problems), strings.Join(append(v.Problems, v.Examples...), "\n  "))
	}
}

// missing returns how many of the timers in want no delivery of got is
// of.
func missing(want map[string]time.Time, got []delivery) int {
	seen := make(map[string]bool, len(got))
	for _, d := range got {
		seen[d.id] = true
	}
	n := 0
	for id := range want {
		if !seen[id] {
			n++
		}
	}
	return n
}

// mergeTimes returns the union of a and b.
func mergeTimes(a, b map[string]time.Time) map[string]time.Time {
	m := maps.Clone(a)
	maps.Copy(m, b)
	return m
}

// firstLateness returns, for each timer of due delivered on a stream that
// keep accepts, how late its first such delivery was received.
func firstLateness(got []delivery, due map[string]time.Time, keep func(delivery) bool) []time.Duration {
	first := make(map[string]time.Time)
	for _, d := range got {
		if !keep(d) {
			continue
		}
		if t, ok := first[d.id]; !ok || d.received.Before(t) {
			first[d.id] = d.received
		}
	}
	var out []time.Duration
	for id, t := range first {
		if at, ok := due[id]; ok {
			out = append(out, t.Sub(at))
		}
	}
	return out
}

// pct formats the p-th percentile of ds (p 100: the largest) in seconds,
// or "-" when ds is empty.
func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return ms(s[(len(s)-1)*p/100].Milliseconds())
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
