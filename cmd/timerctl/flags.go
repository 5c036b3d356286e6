package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/timerd/timerd/internal/cli"
)

// runner is one command's flags, bound to a flag set, and its action.
type runner interface {
	// check reports a usage error in the parsed flags or the positional
	// arguments.
	check(fs *flag.FlagSet, args []string) error
	// run carries the command out.
	run(ctx context.Context, a *app, args []string) error
}

// command is one entry of the command table: a command with flags, or a
// group (subs set) whose subcommands are the commands.
type command struct {
	name    string // full name, e.g. "dead-letters list"
	args    string // synopsis of the arguments and flags after the name
	summary string // one line, for the command list
	help    string // paragraphs for the command's --help
	flags   func(fs *flag.FlagSet) runner
	subs    []*command
}

// lookup finds the command name (and, for a group, its subcommand at the
// head of args) and returns it with the remaining arguments.
func lookup(name string, args []string) (*command, []string, error) {
	for _, c := range commands {
		if c.name != name {
			continue
		}
		if c.subs == nil || len(args) == 0 || strings.HasPrefix(args[0], "-") {
			return c, args, nil
		}
		for _, s := range c.subs {
			if s.name == name+" "+args[0] {
				return s, args[1:], nil
			}
		}
		return nil, nil, fmt.Errorf("unknown command %q", name+" "+args[0])
	}
	return nil, nil, fmt.Errorf("unknown command %q", name)
}

// parseInterleaved parses args with fs, allowing flags before, between and
// after the positional arguments, which it returns in order. "--" ends
// the flags: everything after it is positional. With stopAtFirst it stops
// at the first positional argument and returns it with everything after
// it unparsed (for the global flags before a command name).
func parseInterleaved(fs *flag.FlagSet, args []string, stopAtFirst bool) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		if stopAtFirst {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// whenFlags are --in and --at: a due time relative to now or absolute.
type whenFlags struct {
	in time.Duration
	at string
}

func (w *whenFlags) register(fs *flag.FlagSet, what string) {
	fs.DurationVar(&w.in, "in", 0, what+" this `duration` from now, e.g. 30s, 5m, 1h30m, 7d (0: at once)")
	fs.StringVar(&w.at, "at", "", what+" at this RFC 3339 `time`, e.g. 2030-01-02T15:04:05Z")
}

// resolve checks the flags and returns the absolute due time (zero when
// --at is not given) and the delay. With required, exactly one of the two
// must be given; otherwise at most one.
func (w *whenFlags) resolve(fs *flag.FlagSet, required bool) (time.Time, time.Duration, error) {
	set := setFlags(fs)
	switch {
	case set["in"] && set["at"]:
		return time.Time{}, 0, errors.New("give either --in or --at, not both")
	case required && !set["in"] && !set["at"]:
		return time.Time{}, 0, errors.New("give --in DURATION or --at TIME")
	case w.in < 0:
		return time.Time{}, 0, fmt.Errorf("--in %v is negative", w.in)
	case set["at"]:
		t, err := parseTime(w.at)
		if err != nil {
			return time.Time{}, 0, err
		}
		return t, 0, nil
	}
	return time.Time{}, w.in, nil
}

// parseTime parses an RFC 3339 time, with or without fractional seconds.
func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--at %q is not an RFC 3339 time such as 2030-01-02T15:04:05Z", s)
	}
	return t, nil
}

// payloadFlags are --payload and --payload-file.
type payloadFlags struct {
	text string
	file string
}

func (p *payloadFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&p.text, "payload", "", "payload `text` handed back in every delivery")
	fs.StringVar(&p.file, "payload-file", "", "read the payload (any bytes) from `file`; - reads standard input")
}

func (p *payloadFlags) check(fs *flag.FlagSet) error {
	if set := setFlags(fs); set["payload"] && set["payload-file"] {
		return errors.New("give either --payload or --payload-file, not both")
	}
	return nil
}

// read returns the payload.
func (p *payloadFlags) read(stdin io.Reader) ([]byte, error) {
	switch p.file {
	case "":
		return []byte(p.text), nil
	case "-":
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("read the payload from standard input: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(p.file)
	if err != nil {
		return nil, fmt.Errorf("read the payload: %w", err)
	}
	return b, nil
}

// printToolUsage prints the tool's help.
func (a *app) printToolUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `Usage: timerctl [global flags] COMMAND [ARGS] [flags]

timerctl schedules, inspects, moves and cancels timers on a timerd node,
follows the deliveries of a topic, lists and replays dead letters, and
shows the cluster's members and shard map.

Commands:
`)
	tw := newTable(w)
	for _, c := range commands {
		if c.subs == nil {
			fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
			continue
		}
		for _, s := range c.subs {
			fmt.Fprintf(tw, "  %s\t%s\n", s.name, s.summary)
		}
	}
	_ = tw.Flush()
	fmt.Fprint(w, `
Global flags (accepted before or after the command):
`)
	printFlags(w, fs, true)
	fmt.Fprint(w, `
Output is a table for people unless --json asks for one JSON document per
command, for scripts. subscribe always prints one JSON object per delivery
and line. Times are printed in UTC (RFC 3339). In JSON a timer's payload is
"payload_base64", always standard base64 whatever its bytes ("" when empty).

Exit codes: 0 on success; 1 when a call, or an item of a batch, failed (the
message on stderr names the gRPC code and gives the server's message); 2 for
a usage error. With --json a failed command also prints on stdout

  {"command":"get","code":"NotFound","error":"NotFound: timer not found: ..."}

where code is the gRPC code name of the failed call, "Usage" for a mistake
on the command line, or "Unknown" for a failure of timerctl's own; a batch
(cancel, dead-letters replay) reports each item in its "results" instead.

Durations are written as Go writes them (30s, 1m30s, 2h) or with days and
years: 7d is 168h, 1y is 365d.

Environment: TIMERD_ADDR sets the default of --addr.

Run 'timerctl COMMAND --help' (or 'timerctl help COMMAND') for the flags of
a command.
`)
}

// printGroupUsage prints the help of a command group.
func (a *app) printGroupUsage(w io.Writer, c *command) {
	fmt.Fprintf(w, "Usage: timerctl %s SUBCOMMAND [ARGS] [flags]\n\n%s\n\nSubcommands:\n", c.name, c.help)
	tw := newTable(w)
	for _, s := range c.subs {
		fmt.Fprintf(tw, "  %s\t%s\n", strings.TrimPrefix(s.name, c.name+" "), s.summary)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nRun 'timerctl %s SUBCOMMAND --help' for the flags of one.\n", c.name)
}

// printCommandUsage prints the help of one command.
func (a *app) printCommandUsage(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", strings.TrimSpace("timerctl "+c.name+" "+c.args), c.help)
	var own bool
	fs.VisitAll(func(f *flag.Flag) { own = own || !globalFlags[f.Name] })
	if own {
		fmt.Fprint(w, "\nFlags:\n")
		printFlags(w, fs, false)
	}
	fmt.Fprint(w, "\nGlobal flags:\n")
	printFlags(w, fs, true)
}

// printFlags prints the global flags of fs, or the others, with two
// dashes, their argument name, their help and their default.
func printFlags(w io.Writer, fs *flag.FlagSet, global bool) {
	cli.PrintFlags(w, fs, func(f *flag.Flag) bool { return globalFlags[f.Name] == global })
}
