package cli

import (
	"errors"
	"flag"
	"math"
	"strconv"
	"strings"
	"time"
)

// Units past Go's hours, as people write long spans: a day is 24 hours
// and a year 365 days (no calendar: leap days and clock changes do not
// count).
const (
	Day  = 24 * time.Hour
	Year = 365 * Day
)

// errDuration names the accepted format.
var errDuration = errors.New("want a duration such as 30s, 5m, 1h30m or 7d")

// ParseDuration parses a duration as time.ParseDuration does ("1h30m",
// "1.5s", "250ms", "-5m") and also accepts the units d (24h) and y (365d),
// alone or with the others: "7d", "1d12h", "100y".
func ParseDuration(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	rest, neg := s, false
	if r, ok := strings.CutPrefix(rest, "-"); ok {
		rest, neg = r, true
	} else {
		rest = strings.TrimPrefix(rest, "+")
	}
	if rest == "" {
		return 0, errDuration
	}
	var total time.Duration
	for rest != "" {
		i := strings.IndexFunc(rest, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
		if i <= 0 {
			return 0, errDuration
		}
		num := rest[:i]
		rest = rest[i:]
		j := strings.IndexFunc(rest, func(r rune) bool { return (r >= '0' && r <= '9') || r == '.' })
		if j < 0 {
			j = len(rest)
		}
		var unit time.Duration
		switch rest[:j] {
		case "y":
			unit = Year
		case "d":
			unit = Day
		default:
			u, err := time.ParseDuration("1" + rest[:j])
			if err != nil {
				return 0, errDuration
			}
			unit = u
		}
		rest = rest[j:]
		var part time.Duration
		if n, err := strconv.ParseInt(num, 10, 64); err == nil {
			if n > math.MaxInt64/int64(unit) {
				return 0, errTooLong
			}
			part = time.Duration(n) * unit
		} else {
			f, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return 0, errDuration
			}
			if f*float64(unit) >= math.MaxInt64 {
				return 0, errTooLong
			}
			part = time.Duration(math.Round(f * float64(unit)))
		}
		if total > math.MaxInt64-part {
			return 0, errTooLong
		}
		total += part
	}
	if neg {
		total = -total
	}
	return total, nil
}

var errTooLong = errors.New("duration too long: at most about 292y")

// FormatDuration writes d as a person would: the largest whole units
// first, and none that are zero: 30s, 5m, 1h30m, 1d12h, 100y, 1m500ms,
// 250ms. ParseDuration reads every form it writes.
func FormatDuration(d time.Duration) string {
	switch {
	case d == 0:
		return "0s"
	case d < 0:
		if d == math.MinInt64 {
			return d.String()
		}
		return "-" + FormatDuration(-d)
	case d < time.Second:
		return d.String() // 250ms, 1.5µs
	}
	var b strings.Builder
	for _, u := range []struct {
		name string
		unit time.Duration
	}{{"y", Year}, {"d", Day}, {"h", time.Hour}, {"m", time.Minute}} {
		if n := d / u.unit; n > 0 {
			b.WriteString(strconv.FormatInt(int64(n), 10))
			b.WriteString(u.name)
			d -= n * u.unit
		}
	}
	if d > 0 {
		b.WriteString(d.String()) // what is left is under a minute: 30s, 1.5s, 500ms
	}
	return b.String()
}

// durationFlag wraps a flag set's duration flag: it accepts what
// ParseDuration reads and shows its value as FormatDuration writes it.
type durationFlag struct{ v flag.Value }

func (f durationFlag) String() string {
	if f.v == nil {
		return "0s"
	}
	return FormatDuration(f.Get().(time.Duration))
}

func (f durationFlag) Set(s string) error {
	d, err := ParseDuration(s)
	if err != nil {
		return err
	}
	return f.v.Set(d.String())
}

func (f durationFlag) Get() any { return f.v.(flag.Getter).Get() }

// HumanDurations makes every duration flag of fs (those defined with
// DurationVar and Duration) accept the units d and y besides Go's, and
// show their defaults as FormatDuration writes them. Call it once all of
// fs's flags are defined.
func HumanDurations(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		if _, ok := f.Value.(durationFlag); ok {
			return
		}
		g, ok := f.Value.(flag.Getter)
		if !ok {
			return
		}
		if _, ok := g.Get().(time.Duration); !ok {
			return
		}
		f.Value = durationFlag{f.Value}
		if d, err := time.ParseDuration(f.DefValue); err == nil {
			f.DefValue = FormatDuration(d)
		}
	})
}
