package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// FlagError rewrites an error of fs.Parse to name the flag as the
// commands' help does, with two dashes, and to say what the flag wants:
// `invalid value "10q" for flag -in: parse error` becomes
// `--in "10q": want a duration such as 30s, 5m, 1h30m or 7d`. Other
// errors (an unknown flag, a missing value) are returned as they are.
func FlagError(fs *flag.FlagSet, err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	rest, ok := strings.CutPrefix(msg, "invalid value ")
	if !ok {
		return err
	}
	// rest is `"VALUE" for flag -NAME: CAUSE`; VALUE is quoted with %q.
	i := strings.LastIndex(rest, " for flag -")
	if i < 0 {
		return err
	}
	value := rest[:i]
	name, cause, ok := strings.Cut(rest[i+len(" for flag -"):], ": ")
	if !ok {
		return err
	}
	if f := fs.Lookup(name); f != nil {
		if want := wants(f); want != "" && (cause == "parse error" || cause == "value out of range") {
			cause = want
		}
	}
	return errors.New("--" + name + " " + value + ": " + cause)
}

// wants describes what a flag of the flag package's basic types takes.
func wants(f *flag.Flag) string {
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return ""
	}
	switch g.Get().(type) {
	case int, int64:
		return "want a whole number"
	case uint, uint64:
		return "want a whole number, 0 or more"
	case float64:
		return "want a number"
	case bool:
		return "want true or false"
	case time.Duration:
		return errDuration.Error()
	}
	return ""
}

// PrintFlags prints the flags of fs for which show returns true (all
// when show is nil), sorted by name: each with two dashes and its
// argument's name, then its help, with the default when it is not the
// zero value. Durations are shown as FormatDuration writes them.
func PrintFlags(w io.Writer, fs *flag.FlagSet, show func(*flag.Flag) bool) {
	fs.VisitAll(func(f *flag.Flag) {
		if show != nil && !show(f) {
			return
		}
		arg, usage := flag.UnquoteUsage(f)
		if _, ok := f.Value.(durationFlag); ok && arg == "value" {
			arg = "duration"
		}
		line := "  --" + f.Name
		if arg != "" {
			line += " " + arg
		}
		line += "\n        " + usage
		switch {
		case strings.Contains(usage, "(default"): // the help says it
		case f.DefValue == "", f.DefValue == "0", f.DefValue == "0s", f.DefValue == "false":
		default:
			line += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintln(w, line)
	})
}
