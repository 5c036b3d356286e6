package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
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
		{"bad duration", []string{"--ack-timeout", "soon"}, [2]string{}, "invalid value"},
		{"stray argument", []string{"extra"}, [2]string{}, "unexpected argument"},
		{"bad environment", nil, [2]string{"TIMERD_SHARDS", "many"}, "TIMERD_SHARDS"},
		{"invalid config", []string{"--shards", "0"}, [2]string{}, "Shards"},
		{"ack timeout out of bounds", []string{"--ack-timeout", "1h"}, [2]string{}, "AckTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env[0] != "" {
				t.Setenv(tt.env[0], tt.env[1])
			}
			var out bytes.Buffer
			if code := run(tt.args, &out); code != 2 || !strings.Contains(out.String(), tt.want) {
				t.Fatalf("exit %d, output %q; want 2 and %q", code, out.String(), tt.want)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"--help"}, &out); code != 0 {
		t.Fatalf("--help exits %d", code)
	}
	for _, want := range []string{"-grpc-addr", "-data-dir", "-redis", "TIMERD_GRPC_ADDR", "embedded store"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}
