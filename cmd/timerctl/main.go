// Command timerctl is the operator's and developer's tool for timerd: it
// schedules, inspects, moves and cancels timers, follows the deliveries of
// a topic, lists and replays dead letters, and shows the members and
// shard map of a cluster.
//
//	timerctl [--addr HOST:PORT] [--json] [--namespace NS] [--timeout D] COMMAND [ARGS]
//
// Run "timerctl --help" for the commands and "timerctl COMMAND --help" for
// the flags of one. Output is meant for people (aligned tables) unless
// --json asks for one JSON document per command, for scripts; subscribe
// always prints one JSON object per delivery and line. Errors go to
// stderr, with the gRPC code name and the server's message; with --json
// they are also a JSON object on stdout (see errorView). The exit code
// is 0 on success, 1 when a call (or an item of a batch) failed and 2 for
// a usage error.
//
// This package only parses flags and prints; every call goes through the
// Go client, package client.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/timerd/timerd/internal/cli"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1
	exitUsage   = 2
	defaultAddr = "127.0.0.1:7070"
)

// run is main with its arguments and output, for tests. It stops on
// SIGINT or SIGTERM (which matters for subscribe) and returns the exit
// code.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a := &app{stdin: os.Stdin, stdout: stdout, stderr: stderr, getenv: os.Getenv}
	return a.main(ctx, args)
}

// app is one invocation of timerctl: its streams, environment and global
// flags.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time // nil: time.Now

	addr      string
	json      bool
	namespace string
	timeout   time.Duration
	// sec is how the calls are secured: TLS and a bearer token.
	sec security

	// cmdArgs are the arguments after the command name, as given (bench
	// hands them on to the runner of a peer).
	cmdArgs []string
}

// usageError is a mistake on the command line; it exits with code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// failedError reports that some items of a batch failed; each was already
// reported on stderr, so main only sets the exit code.
type failedError struct{ n, of int }

func (e *failedError) Error() string { return fmt.Sprintf("%d of %d items failed", e.n, e.of) }

// exitCodeError is the exit code of a child process that ran a command
// (and already reported its errors): timerctl exits with it.
type exitCodeError struct{ code int }

func (e *exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// main runs one command line and returns the exit code.
func (a *app) main(ctx context.Context, args []string) int {
	a.addr = defaultAddr
	if v := a.getenv("TIMERD_ADDR"); v != "" {
		a.addr = v
	}
	a.timeout = 10 * time.Second
	a.sec.token = a.getenv("TIMERD_TOKEN")

	// --json is honoured for the errors of a command line that does not
	// parse, too.
	a.json = jsonAsked(args)

	fs := a.newFlagSet("timerctl")
	var version bool
	fs.BoolVar(&version, "version", false, "print the version, the commit and the Go version timerctl was built from (as JSON with --json)")
	rest, err := parseInterleaved(fs, args, true)
	switch {
	case errors.Is(err, flag.ErrHelp):
		a.printToolUsage(a.stdout, fs)
		return exitOK
	case err != nil:
		return a.usageFailed("", cli.FlagError(fs, err))
	case version:
		return a.printVersion()
	case len(rest) == 0:
		return a.usageFailed("", errors.New("no command given"))
	}
	name, cmdArgs := rest[0], rest[1:]
	if name == "help" {
		return a.help(fs, cmdArgs)
	}
	cmd, cmdArgs, err := lookup(name, cmdArgs)
	if err != nil {
		return a.usageFailed("", err)
	}
	if cmd.subs != nil { // a group such as dead-letters, given no subcommand
		if len(cmdArgs) > 0 && isHelpFlag(cmdArgs[0]) {
			a.printGroupUsage(a.stdout, cmd)
			return exitOK
		}
		return a.usageFailed(cmd.name, errors.New("missing subcommand"))
	}
	return a.runCommand(ctx, cmd, cmdArgs)
}

// runCommand parses the flags of cmd and runs it.
func (a *app) runCommand(ctx context.Context, cmd *command, args []string) int {
	fs := a.newFlagSet("timerctl " + cmd.name)
	r := cmd.flags(fs)
	cli.HumanDurations(fs)
	pos, err := parseInterleaved(fs, args, false)
	if errors.Is(err, flag.ErrHelp) {
		a.printCommandUsage(a.stdout, cmd, fs)
		return exitOK
	}
	if err == nil {
		err = r.check(fs, pos)
	}
	if err == nil && a.timeout < 0 {
		err = errors.New("--timeout must not be negative")
	}
	if err != nil {
		return a.usageFailed(cmd.name, cli.FlagError(fs, err))
	}
	a.cmdArgs = args
	err = r.run(ctx, a, pos)
	var ue *usageError
	var fe *failedError
	var ce *exitCodeError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		return ce.code
	case errors.As(err, &ue):
		return a.usageFailed(cmd.name, err)
	case errors.As(err, &fe):
		return exitFailed // each item was reported, and the JSON printed
	}
	return a.failed(cmd.name, err)
}

// jsonAsked reports whether the command line asks for JSON, before any
// "--", whether or not it parses.
func jsonAsked(args []string) bool {
	asked := false
	for _, arg := range args {
		switch arg {
		case "--":
			return asked
		case "-json", "--json", "-json=true", "--json=true", "-json=1", "--json=1":
			asked = true
		case "-json=false", "--json=false", "-json=0", "--json=0":
			asked = false
		}
	}
	return asked
}

// usageFailed reports a mistake on the command line of cmd ("" for the
// tool's own) with a pointer to its help, and returns exitUsage.
func (a *app) usageFailed(cmd string, err error) int {
	prog := strings.TrimSpace("timerctl " + cmd)
	fmt.Fprintf(a.stderr, "%s: %v\nRun '%s --help' for usage.\n", prog, err, prog)
	if a.json {
		_ = writeJSON(a.stdout, errorView{Command: cmd, Code: codeUsage, Error: err.Error()})
	}
	return exitUsage
}

// failed reports the error of a command that ran, and returns exitFailed.
func (a *app) failed(cmd string, err error) int {
	text := a.errorText(err)
	fmt.Fprintf(a.stderr, "timerctl %s: %s\n", cmd, text)
	if a.json {
		_ = writeJSON(a.stdout, errorView{Command: cmd, Code: errorCode(err), Error: text})
	}
	return exitFailed
}

// printVersion prints what timerctl was built from: one line, or with
// --json {"version","commit","modified","go_version"}.
func (a *app) printVersion() int {
	b := cli.ReadBuild()
	if a.json {
		_ = writeJSON(a.stdout, b)
	} else {
		fmt.Fprintln(a.stdout, b.Line("timerctl"))
	}
	return exitOK
}

// help runs "timerctl help [COMMAND...]".
func (a *app) help(root *flag.FlagSet, args []string) int {
	if len(args) == 0 {
		a.printToolUsage(a.stdout, root)
		return exitOK
	}
	cmd, _, err := lookup(args[0], args[1:])
	if err != nil {
		fmt.Fprintf(a.stderr, "timerctl help: %v\n", err)
		return exitUsage
	}
	if cmd.subs != nil {
		a.printGroupUsage(a.stdout, cmd)
		return exitOK
	}
	fs := a.newFlagSet("timerctl " + cmd.name)
	cmd.flags(fs)
	cli.HumanDurations(fs)
	a.printCommandUsage(a.stdout, cmd, fs)
	return exitOK
}

// globalFlags names the flags every command accepts, before or after its
// name.
// (--version, a global flag in the tool's help, is the tool's alone.)
var globalFlags = map[string]bool{"addr": true, "json": true, "namespace": true, "timeout": true, "version": true,
	"token": true, "tls": true, "tls-ca": true, "tls-cert": true, "tls-key": true, "tls-server-name": true}

// newFlagSet returns a flag set with the global flags, which write to a.
// It prints nothing itself: the callers report errors and usage.
func (a *app) newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&a.addr, "addr", a.addr, "`host:port` of a timerd node's gRPC API (env TIMERD_ADDR)")
	fs.BoolVar(&a.json, "json", a.json, "print JSON for scripts instead of tables")
	fs.StringVar(&a.namespace, "namespace", a.namespace, "`namespace` of the timers (empty: \"default\")")
	fs.DurationVar(&a.timeout, "timeout", a.timeout, "bound on each command's calls (0: none; subscribe: only the connection check)")
	a.sec.flags(fs)
	cli.HumanDurations(fs)
	return fs
}

func isHelpFlag(s string) bool {
	switch s {
	case "-h", "-help", "--help", "--h":
		return true
	}
	return false
}
