package main

import (
	"bytes"
	"encoding/base64"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/server"
	"github.com/timerd/timerd/store"
)

func TestParse(t *testing.T) {
	t.Setenv("TIMERD_SHARDS", "16")
	t.Setenv("TIMERD_ACK_TIMEOUT", "5s")
	t.Setenv("TIMERD_ALLOW_VOLATILE_REDIS", "true")
	cfg, _, shutdown, err := parse([]string{"--ack-timeout", "7s", "--data-dir", "/tmp/x", "--shutdown-timeout", "3s", "--lease-ttl", "1m"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case cfg.Shards != 16:
		t.Errorf("Shards = %d, want 16 from TIMERD_SHARDS", cfg.Shards)
	case cfg.Shard.AckTimeout != 7*time.Second:
		t.Errorf("AckTimeout = %v, want the flag's 7s over the environment's 5s", cfg.Shard.AckTimeout)
	case cfg.DataDir != "/tmp/x" || shutdown != 3*time.Second:
		t.Errorf("DataDir %q shutdown %v", cfg.DataDir, shutdown)
	case cfg.GRPCAddr != "127.0.0.1:7070" || cfg.HTTPAddr != "127.0.0.1:7071":
		t.Errorf("default addresses %q %q", cfg.GRPCAddr, cfg.HTTPAddr)
	case cfg.PProf:
		t.Error("PProf is on by default")
	case cfg.Shard.LeaseTTL != time.Minute || cfg.Shard.ClockDrift != 600*time.Millisecond:
		t.Errorf("LeaseTTL %v ClockDrift %v, want 1m and 1%% of it, 600ms", cfg.Shard.LeaseTTL, cfg.Shard.ClockDrift)
	case !cfg.AllowVolatileRedis:
		t.Errorf("AllowVolatileRedis = false, want true from TIMERD_ALLOW_VOLATILE_REDIS")
	}
	if cfg, _, _, err := parse(nil, &bytes.Buffer{}); err != nil || !cfg.AllowVolatileRedis {
		t.Errorf("AllowVolatileRedis from the environment alone: %v, %v", cfg.AllowVolatileRedis, err)
	}
	t.Setenv("TIMERD_ALLOW_VOLATILE_REDIS", "false")
	if cfg, _, _, err := parse([]string{"--allow-volatile-redis"}, &bytes.Buffer{}); err != nil || !cfg.AllowVolatileRedis {
		t.Errorf("--allow-volatile-redis over TIMERD_ALLOW_VOLATILE_REDIS=false: %v, %v", cfg.AllowVolatileRedis, err)
	}
}

func TestParsePProf(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  string // TIMERD_PPROF, "" for unset
		args []string
		want bool
	}{
		{"default", "", nil, false},
		{"flag", "", []string{"--pprof"}, true},
		{"environment", "true", nil, true},
		{"flag over environment", "true", []string{"--pprof=false"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("TIMERD_PPROF", tc.env)
			}
			cfg, _, _, err := parse(tc.args, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			if cfg.PProf != tc.want {
				t.Errorf("PProf = %v, want %v", cfg.PProf, tc.want)
			}
		})
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  [2]string
		want string
	}{
		{"unknown flag", []string{"--nope"}, [2]string{}, "flag provided but not defined"},
		{"bad duration", []string{"--ack-timeout", "soon"}, [2]string{}, "want a duration"},
		{"stray argument", []string{"extra"}, [2]string{}, "unexpected argument"},
		{"bad environment", nil, [2]string{"TIMERD_SHARDS", "many"}, "TIMERD_SHARDS"},
		{"invalid config", []string{"--shards", "0"}, [2]string{}, "Shards"},
		{"ack timeout out of bounds", []string{"--ack-timeout", "1h"}, [2]string{}, "AckTimeout"},
		{"bad Redis seed", []string{"--redis", "redis://127.0.0.1:1,127.0.0.1:x"}, [2]string{}, `--redis: invalid Redis URL: seed 2 of 2: port "x"`},
		{"negative replicas to wait for", []string{"--redis", "redis://127.0.0.1:1", "--redis-wait-replicas", "-1"}, [2]string{}, "WaitReplicas -1"},
		{"wait timeout under a millisecond", []string{"--redis", "redis://127.0.0.1:1", "--redis-wait-replicas", "1", "--redis-wait-timeout", "1us"}, [2]string{}, "WaitTimeout"},
		{"Sentinel without master", nil, [2]string{"TIMERD_REDIS", "redis-sentinel://127.0.0.1:26379"}, "--redis: invalid Redis URL: a redis-sentinel:// URL needs master=name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env[0] != "" {
				t.Setenv(tt.env[0], tt.env[1])
			}
			var stdout, out bytes.Buffer
			if code := run(tt.args, &stdout, &out); code != 2 || !strings.Contains(out.String(), tt.want) {
				t.Fatalf("exit %d, output %q; want 2 and %q", code, out.String(), tt.want)
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"--help"}, &out, io.Discard); code != 0 {
		t.Fatalf("--help exits %d", code)
	}
	for _, want := range []string{"--grpc-addr host:port", "--data-dir", "--redis", "TIMERD_GRPC_ADDR", "embedded store", "--version", "--ns-limits-file file"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

// TestHelpDurations: --help writes durations as people do, and a flag
// takes what the help shows, days and years included.
func TestHelpDurations(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"--help"}, &out, io.Discard); code != 0 {
		t.Fatalf("--help exits %d", code)
	}
	for _, want := range []string{"--max-horizon duration\n", "(default 100y)", "--shutdown-timeout duration\n", "(default 30s)", "(default 15m)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "h0m0s") || strings.Contains(out.String(), "m0s") {
		t.Errorf("--help shows Go's form of durations:\n%s", out.String())
	}
	cfg, _, shutdown, err := parse([]string{"--max-horizon", "7d", "--shutdown-timeout", "1m30s"}, io.Discard)
	if err != nil || cfg.Shard.MaxHorizon != 7*24*time.Hour || shutdown != 90*time.Second {
		t.Fatalf("--max-horizon 7d --shutdown-timeout 1m30s: %v %v %v", cfg.Shard.MaxHorizon, shutdown, err)
	}
}

// TestBadFlagIsOneLine: a bad flag prints its error and how to get
// help, as the go command does, not the whole usage.
func TestBadFlagIsOneLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nope"}, "timerd: flag provided but not defined: -nope\nRun 'timerd --help' for usage.\n"},
		{[]string{"--max-horizon", "10q"}, "timerd: --max-horizon \"10q\": want a duration such as 30s, 5m, 1h30m or 7d\nRun 'timerd --help' for usage.\n"},
		{[]string{"--shards", "many"}, "timerd: --shards \"many\": want a whole number, 0 or more\nRun 'timerd --help' for usage.\n"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, &stdout, &stderr); code != 2 || stderr.String() != tc.want || stdout.Len() > 0 {
			t.Errorf("%q: exit %d, stderr %q, stdout %q; want 2 and %q", tc.args, code, stderr.String(), stdout.String(), tc.want)
		}
	}
}

// TestVersion: --version prints the version, the commit and the Go
// version on one line, and exits 0 without starting a node.
func TestVersion(t *testing.T) {
	t.Setenv("TIMERD_VERSION", "true") // not a setting: the environment cannot ask
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--version", "--grpc-addr", "127.0.0.1:1"}, &stdout, &stderr); code != 0 {
		t.Fatalf("--version exits %d: %s", code, stderr.String())
	}
	line := stdout.String()
	if !strings.HasPrefix(line, "timerd ") || !strings.Contains(line, "commit ") || !strings.Contains(line, runtime.Version()) || strings.Count(line, "\n") != 1 {
		t.Errorf("--version printed %q", line)
	}
	if _, _, _, err := parse(nil, io.Discard); err != nil {
		t.Errorf("TIMERD_VERSION set: %v", err)
	}
}

// TestStartFailsWithTheErrorOnly: a port or a data directory in use
// stops the start with that error alone, not a log that the node
// stopped before it.
func TestStartFailsWithTheErrorOnly(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir, held := t.TempDir(), t.TempDir()
	st, err := store.OpenEmbedded(store.DefaultEmbeddedConfig(held)) // as a running node holds it
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var stdout bytes.Buffer
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"gRPC port in use", []string{"--data-dir", dir, "--grpc-addr", busy.Addr().String(), "--http-addr", ""}, "address already in use"},
		{"HTTP port in use", []string{"--data-dir", dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", busy.Addr().String()}, "address already in use"},
		{"data directory in use", []string{"--data-dir", held, "--grpc-addr", "127.0.0.1:0", "--http-addr", ""}, "in use by another store"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := run(tc.args, &stdout, &stderr)
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			if code != 1 || len(lines) != 1 || !strings.HasPrefix(lines[0], "timerd: ") || !strings.Contains(lines[0], tc.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant 1 and one line: timerd: ... %s", code, stderr.String(), tc.want)
			}
		})
	}
}

// TestParseSecurity: the TLS, token and gossip flags fill the config, and
// incomplete or unreadable settings are refused with the flag named.
func TestParseSecurity(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(key, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badKey := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(badKey, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	nodeTok := filepath.Join(dir, "node.token")
	if err := os.WriteFile(nodeTok, []byte("tok-node\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	member := []string{"--redis", "redis://127.0.0.1:6379", "--gossip-addr", "127.0.0.1:0"}
	tests := []struct {
		name    string
		args    []string
		check   func(cfg server.Config) bool
		wantErr string
	}{
		{"tls", []string{"--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"}, func(c server.Config) bool {
			return c.TLS != nil && c.TLS.CertFile == "c.pem" && c.TLS.KeyFile == "k.pem" && c.TLS.ClientCAFile == "ca.pem"
		}, ""},
		{"no tls", nil, func(c server.Config) bool { return c.TLS == nil && c.AuthFile == "" }, ""},
		{"cert without key", []string{"--tls-cert", "c.pem"}, nil, "--tls-cert and --tls-key"},
		{"client ca alone", []string{"--tls-client-ca", "ca.pem"}, nil, "--tls-cert and --tls-key"},
		{"auth file", []string{"--auth-file", "tokens.json", "--node-token-file", nodeTok}, func(c server.Config) bool {
			return c.AuthFile == "tokens.json" && c.NodeToken == "tok-node"
		}, ""},
		{"missing node token file", []string{"--node-token-file", filepath.Join(dir, "nope")}, nil, "--node-token-file"},
		{"gossip key", append(member, "--gossip-key-file", key, "--gossip-label", "prod"), func(c server.Config) bool {
			return c.Cluster != nil && len(c.Cluster.SecretKey) == 32 && c.Cluster.Label == "prod"
		}, ""},
		{"default label", member, func(c server.Config) bool { return c.Cluster.Label == "timerd" && c.Cluster.SecretKey == nil }, ""},
		{"bad gossip key", append(member, "--gossip-key-file", badKey), nil, "--gossip-key-file"},
		{"gossip key without a cluster", []string{"--gossip-key-file", key}, nil, "needs a cluster member"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, _, err := parse(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parse = %v, want an error naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !tt.check(cfg) {
				t.Fatalf("parse = %+v, %v", cfg, err)
			}
		})
	}
}
