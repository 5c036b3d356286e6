package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseInterleaved(t *testing.T) {
	tests := []struct {
		name        string
		args        []string
		stopAtFirst bool
		wantPos     []string
		wantTopic   string
		wantJSON    bool
		wantErr     string
	}{
		{name: "empty"},
		{name: "flags only", args: []string{"--topic", "t", "--json"}, wantTopic: "t", wantJSON: true},
		{name: "flags after positional", args: []string{"id1", "--topic", "t"}, wantPos: []string{"id1"}, wantTopic: "t"},
		{name: "interleaved", args: []string{"a", "--json", "b", "--topic=t", "c"}, wantPos: []string{"a", "b", "c"}, wantTopic: "t", wantJSON: true},
		{name: "single dash flags", args: []string{"-topic", "t", "a"}, wantPos: []string{"a"}, wantTopic: "t"},
		{name: "double dash ends flags", args: []string{"--topic", "t", "--", "--json", "-x"}, wantPos: []string{"--json", "-x"}, wantTopic: "t"},
		{name: "lone dash is positional", args: []string{"-", "--json"}, wantPos: []string{"-"}, wantJSON: true},
		{name: "stop at first", args: []string{"--json", "get", "--topic", "t"}, stopAtFirst: true, wantPos: []string{"get", "--topic", "t"}, wantJSON: true},
		{name: "unknown flag", args: []string{"a", "--nope"}, wantErr: "flag provided but not defined: -nope"},
		{name: "missing value", args: []string{"a", "--topic"}, wantErr: "flag needs an argument: -topic"},
		{name: "help", args: []string{"a", "--help"}, wantErr: flag.ErrHelp.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			topic := fs.String("topic", "", "")
			js := fs.Bool("json", false, "")
			pos, err := parseInterleaved(fs, tt.args, tt.stopAtFirst)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(pos, tt.wantPos) {
				t.Errorf("positional = %q, want %q", pos, tt.wantPos)
			}
			if *topic != tt.wantTopic || *js != tt.wantJSON {
				t.Errorf("topic, json = %q, %v; want %q, %v", *topic, *js, tt.wantTopic, tt.wantJSON)
			}
		})
	}
}

func TestWhenFlags(t *testing.T) {
	at := time.Date(2030, 1, 2, 15, 4, 5, 250_000_000, time.UTC)
	tests := []struct {
		name      string
		args      []string
		required  bool
		wantDue   time.Time
		wantDelay time.Duration
		wantErr   string
	}{
		{name: "in", args: []string{"--in", "30s"}, required: true, wantDelay: 30 * time.Second},
		{name: "in zero", args: []string{"--in", "0s"}, required: true},
		{name: "at", args: []string{"--at", "2030-01-02T15:04:05.25Z"}, required: true, wantDue: at},
		{name: "at with offset", args: []string{"--at", "2030-01-02T16:04:05.25+01:00"}, required: true, wantDue: at},
		{name: "neither, optional", required: false},
		{name: "neither, required", required: true, wantErr: "give --in DURATION or --at TIME"},
		{name: "both", args: []string{"--in", "1s", "--at", "2030-01-02T15:04:05Z"}, wantErr: "not both"},
		{name: "negative in", args: []string{"--in", "-1s"}, wantErr: "negative"},
		{name: "bad at", args: []string{"--at", "tomorrow"}, wantErr: "not an RFC 3339 time"},
		{name: "date only", args: []string{"--at", "2030-01-02"}, wantErr: "not an RFC 3339 time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			var w whenFlags
			w.register(fs, "due")
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			due, delay, err := w.resolve(fs, tt.required)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !due.Equal(tt.wantDue) || delay != tt.wantDelay {
				t.Errorf("resolve = %v, %v; want %v, %v", due, delay, tt.wantDue, tt.wantDelay)
			}
		})
	}
}

func TestPayloadFlags(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/p.bin"
	if err := os.WriteFile(file, []byte{0, 1, 2}, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		stdin    string
		want     []byte
		checkErr string
		readErr  string
	}{
		{name: "none", want: []byte{}},
		{name: "text", args: []string{"--payload", "hello world"}, want: []byte("hello world")},
		{name: "file", args: []string{"--payload-file", file}, want: []byte{0, 1, 2}},
		{name: "stdin", args: []string{"--payload-file", "-"}, stdin: "from stdin\n", want: []byte("from stdin\n")},
		{name: "both", args: []string{"--payload", "x", "--payload-file", file}, checkErr: "not both"},
		{name: "missing file", args: []string{"--payload-file", dir + "/nope"}, readErr: "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			var p payloadFlags
			p.register(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := p.check(fs)
			if tt.checkErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.checkErr) {
					t.Fatalf("check = %v, want %q", err, tt.checkErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := p.read(strings.NewReader(tt.stdin))
			if tt.readErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.readErr) {
					t.Fatalf("read = %v, want %q", err, tt.readErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("payload = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	tests := []struct {
		name, wantName string
		args, wantArgs []string
		wantErr        string
	}{
		{name: "get", args: []string{"x"}, wantName: "get", wantArgs: []string{"x"}},
		{name: "dead-letters", args: []string{"list", "--limit", "3"}, wantName: "dead-letters list", wantArgs: []string{"--limit", "3"}},
		{name: "dead-letters", args: []string{"replay", "a", "b"}, wantName: "dead-letters replay", wantArgs: []string{"a", "b"}},
		{name: "dead-letters", wantName: "dead-letters"},
		{name: "dead-letters", args: []string{"--help"}, wantName: "dead-letters", wantArgs: []string{"--help"}},
		{name: "dead-letters", args: []string{"purge"}, wantErr: `unknown command "dead-letters purge"`},
		{name: "nope", wantErr: `unknown command "nope"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(append([]string{tt.name}, tt.args...), " "), func(t *testing.T) {
			c, rest, err := lookup(tt.name, tt.args)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.name != tt.wantName || !slices.Equal(rest, tt.wantArgs) {
				t.Errorf("lookup = %q %q, want %q %q", c.name, rest, tt.wantName, tt.wantArgs)
			}
		})
	}
}

// TestUsage runs command lines that never reach a server: help, and
// mistakes that must exit 2 with a message on stderr.
func TestUsage(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string // substring
		wantStderr string // substring
	}{
		{name: "no command", wantCode: exitUsage, wantStderr: "no command given"},
		{name: "tool help", args: []string{"--help"}, wantCode: exitOK, wantStdout: "dead-letters replay"},
		{name: "tool help lists env", args: []string{"-h"}, wantCode: exitOK, wantStdout: "TIMERD_ADDR"},
		{name: "help command", args: []string{"help", "schedule"}, wantCode: exitOK, wantStdout: "--payload-file file"},
		{name: "help group", args: []string{"help", "dead-letters"}, wantCode: exitOK, wantStdout: "Subcommands:"},
		{name: "help subcommand", args: []string{"help", "dead-letters", "list"}, wantCode: exitOK, wantStdout: "--limit N"},
		{name: "help unknown", args: []string{"help", "nope"}, wantCode: exitUsage, wantStderr: `unknown command "nope"`},
		{name: "command help", args: []string{"get", "--help"}, wantCode: exitOK, wantStdout: "Usage: timerctl get ID"},
		{name: "command help lists globals", args: []string{"cancel", "--help"}, wantCode: exitOK, wantStdout: "--timeout duration"},
		{name: "subscribe help documents JSON lines", args: []string{"subscribe", "--help"}, wantCode: exitOK, wantStdout: "payload_base64"},
		{name: "group help", args: []string{"dead-letters", "--help"}, wantCode: exitOK, wantStdout: "replay"},
		{name: "subcommand help", args: []string{"dead-letters", "replay", "--help"}, wantCode: exitOK, wantStdout: "--at time"},
		{name: "group without subcommand", args: []string{"dead-letters"}, wantCode: exitUsage, wantStderr: "missing subcommand"},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: exitUsage, wantStderr: `unknown command "frobnicate"`},
		{name: "unknown global flag", args: []string{"--frob", "get", "x"}, wantCode: exitUsage, wantStderr: "flag provided but not defined"},
		{name: "unknown command flag", args: []string{"get", "x", "--frob"}, wantCode: exitUsage, wantStderr: "timerctl get: flag provided but not defined"},
		{name: "bad duration", args: []string{"--timeout", "soon", "get", "x"}, wantCode: exitUsage, wantStderr: `--timeout "soon": want a duration such as 30s`},
		{name: "negative timeout", args: []string{"get", "x", "--timeout", "-1s"}, wantCode: exitUsage, wantStderr: "--timeout must not be negative"},
		{name: "get without id", args: []string{"get"}, wantCode: exitUsage, wantStderr: "missing the timer ID"},
		{name: "get two ids", args: []string{"get", "a", "b"}, wantCode: exitUsage, wantStderr: `unexpected argument "b"`},
		{name: "cancel without ids", args: []string{"cancel"}, wantCode: exitUsage, wantStderr: "missing the IDs"},
		{name: "schedule without topic", args: []string{"schedule", "a", "--in", "1s"}, wantCode: exitUsage, wantStderr: "missing --topic"},
		{name: "schedule without when", args: []string{"schedule", "a", "--topic", "t"}, wantCode: exitUsage, wantStderr: "give --in DURATION or --at TIME"},
		{name: "schedule negative every", args: []string{"schedule", "a", "--topic", "t", "--in", "1s", "--every", "-1m"}, wantCode: exitUsage, wantStderr: "--every -1m0s is negative"},
		{name: "schedule two payloads", args: []string{"schedule", "a", "--topic", "t", "--in", "1s", "--payload", "x", "--payload-file", "-"}, wantCode: exitUsage, wantStderr: "not both"},
		{name: "reschedule without when", args: []string{"reschedule", "a"}, wantCode: exitUsage, wantStderr: "give --in DURATION or --at TIME"},
		{name: "subscribe without topic", args: []string{"subscribe"}, wantCode: exitUsage, wantStderr: "missing --topic"},
		{name: "subscribe negative count", args: []string{"subscribe", "--topic", "t", "--count", "-1"}, wantCode: exitUsage, wantStderr: "--count -1 is negative"},
		{name: "subscribe zero credit", args: []string{"subscribe", "--topic", "t", "--max-in-flight", "0"}, wantCode: exitUsage, wantStderr: "--max-in-flight must be at least 1"},
		{name: "subscribe argument", args: []string{"subscribe", "--topic", "t", "extra"}, wantCode: exitUsage, wantStderr: `unexpected argument "extra"`},
		{name: "list negative limit", args: []string{"dead-letters", "list", "--limit", "-2"}, wantCode: exitUsage, wantStderr: "--limit -2 is negative"},
		{name: "replay both whens", args: []string{"dead-letters", "replay", "--in", "1s", "--at", "2030-01-02T15:04:05Z"}, wantCode: exitUsage, wantStderr: "not both"},
		{name: "status argument", args: []string{"status", "x"}, wantCode: exitUsage, wantStderr: `unexpected argument "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := runApp(t, &app{}, tt.args...)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, stdout, stderr)
			}
			if !strings.Contains(stdout, tt.wantStdout) {
				t.Errorf("stdout does not contain %q:\n%s", tt.wantStdout, stdout)
			}
			if !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stderr does not contain %q:\n%s", tt.wantStderr, stderr)
			}
			if tt.wantCode == exitOK && stderr != "" {
				t.Errorf("unexpected stderr:\n%s", stderr)
			}
		})
	}
}

func TestAddrFromEnvironment(t *testing.T) {
	tests := []struct {
		name string
		env  string
		args []string
		want string
	}{
		{name: "default", args: []string{"get", "--help"}, want: defaultAddr},
		{name: "env", env: "10.1.2.3:9000", args: []string{"get", "--help"}, want: "10.1.2.3:9000"},
		{name: "flag wins", env: "10.1.2.3:9000", args: []string{"--addr", "127.0.0.1:1", "get", "--help"}, want: "127.0.0.1:1"},
		{name: "flag after command wins", env: "10.1.2.3:9000", args: []string{"get", "x", "--addr", "127.0.0.1:2", "--help"}, want: "127.0.0.1:2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &app{getenv: func(k string) string {
				if k == "TIMERD_ADDR" {
					return tt.env
				}
				return ""
			}}
			// "get --help" parses every flag and stops before dialing.
			if _, _, code := runApp(t, a, tt.args...); code != exitOK {
				t.Fatalf("exit code %d", code)
			}
			if a.addr != tt.want {
				t.Errorf("addr = %q, want %q", a.addr, tt.want)
			}
		})
	}
}

// runApp runs a command line on a (whose stdin, stdout, stderr and
// getenv it fills in when unset) and returns the output and exit code.
func runApp(t *testing.T, a *app, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	a.stdout, a.stderr = &out, &errOut
	if a.stdin == nil {
		a.stdin = strings.NewReader("")
	}
	if a.getenv == nil {
		a.getenv = func(string) string { return "" }
	}
	code = a.main(context.Background(), args)
	return out.String(), errOut.String(), code
}
