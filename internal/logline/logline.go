// Package logline reads the lines log/slog's TextHandler writes, as
// timerd logs them, back into their fields: the tests that run timerd as
// a process learn what it did from its log.
//
// A line is a sequence of key=value fields separated by spaces; a value
// with spaces, quotes, '=' or control characters in it is a Go quoted
// string (strconv.Quote), and Parse unquotes it. Parse does not know
// groups: a field of a group is read under its dotted key, as written.
package logline

import (
	"strconv"
	"strings"
	"time"
)

// TimeLayout is how TextHandler writes times, the line's own time field
// included: RFC 3339 to the millisecond.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// Parse returns the fields of line by key; a key given twice keeps its
// last value. Text that is not a key=value field is skipped, and a quoted
// value that does not end is read to the end of the line as it stands.
func Parse(line string) map[string]string {
	f := make(map[string]string)
	for line = strings.TrimLeft(line, " "); line != ""; line = strings.TrimLeft(line, " ") {
		eq := strings.IndexByte(line, '=')
		sp := strings.IndexByte(line, ' ')
		if eq < 0 || (sp >= 0 && sp < eq) {
			if sp < 0 {
				break
			}
			line = line[sp:] // not a field
			continue
		}
		key, rest := line[:eq], line[eq+1:]
		var val string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				f[key] = strings.TrimPrefix(rest, `"`)
				break
			}
			val, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else if i := strings.IndexByte(rest, ' '); i >= 0 {
			val, rest = rest[:i], rest[i:]
		} else {
			val, rest = rest, ""
		}
		f[key] = val
		line = rest
	}
	return f
}

// Time parses a time field (time, or an attribute of type time.Time).
func Time(v string) (time.Time, error) { return time.Parse(TimeLayout, v) }
