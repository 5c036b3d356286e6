package cluster

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	base := testConfig("a", "10.0.0.1:7946", "seed.example:7946")
	if err := base.Validate(); err != nil {
		t.Fatal(err)
	}
	def := DefaultConfig()
	def.NodeName, def.Incarnation, def.GRPCAddr, def.Shards = "a", "1", "10.0.0.2:7070", 1024
	if err := def.Validate(); err != nil {
		t.Errorf("DefaultConfig: %v", err)
	}
	cases := []struct {
		field string
		edit  func(*Config)
	}{
		{"NodeName", func(c *Config) { c.NodeName = "" }},
		{"NodeName", func(c *Config) { c.NodeName = "a\x00b" }},
		{"NodeName", func(c *Config) { c.NodeName = strings.Repeat("n", maxNameLen+1) }},
		{"Incarnation", func(c *Config) { c.Incarnation = "" }},
		{"Incarnation", func(c *Config) { c.Incarnation = strings.Repeat("i", maxNameLen+1) }},
		{"GRPCAddr", func(c *Config) { c.GRPCAddr = "" }},
		{"GRPCAddr", func(c *Config) { c.GRPCAddr = "localhost" }},
		{"GRPCAddr", func(c *Config) { c.GRPCAddr = ":7070" }},
		{"GRPCAddr", func(c *Config) { c.GRPCAddr = "h:0" }},
		{"GRPCAddr", func(c *Config) { c.GRPCAddr = strings.Repeat("h", 510) + ":1" }},
		{"BindAddr", func(c *Config) { c.BindAddr = "" }},
		{"BindAddr", func(c *Config) { c.BindAddr = "localhost:7946" }},
		{"BindAddr", func(c *Config) { c.BindAddr = "127.0.0.1:x" }},
		{"AdvertiseAddr", func(c *Config) { c.AdvertiseAddr = "example.com:7946" }},
		{"AdvertiseAddr", func(c *Config) { c.AdvertiseAddr = "10.0.0.1:7946" }}, // BindAddr port 0
		{"Seeds", func(c *Config) { c.Seeds = []string{"10.0.0.1"} }},
		{"Seeds", func(c *Config) { c.Seeds = []string{"10.0.0.1:7946", ""} }},
		{"RejoinInterval", func(c *Config) { c.RejoinInterval = 0 }},
		{"Shards", func(c *Config) { c.Shards = 0 }},
		{"Memberlist", func(c *Config) { c.Memberlist = nil }},
	}
	for _, c := range cases {
		cfg := base
		c.edit(&cfg)
		err := cfg.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: Validate() = %v", c.field, err)
		}
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted the config", c.field)
		}
	}
	// An advertised address with its own port needs a fixed bind port.
	cfg := base
	cfg.BindAddr, cfg.AdvertiseAddr = "0.0.0.0:7946", "203.0.113.7:17946"
	if err := cfg.Validate(); err != nil {
		t.Errorf("advertised address: %v", err)
	}
	cfg.BindAddr, cfg.AdvertiseAddr = "127.0.0.1:0", "203.0.113.7:0"
	if err := cfg.Validate(); err != nil {
		t.Errorf("advertised address with the bound port: %v", err)
	}
}

func TestLogWriterLevels(t *testing.T) {
	log, logs := newLog(t)
	w := logWriter{log}
	for _, line := range []string{
		"[DEBUG] memberlist: debug line\n",
		"[INFO] memberlist: info line\n",
		"[WARN] memberlist: warn line\n",
		"[ERR] memberlist: err line\n",
		"bare line\n",
	} {
		if n, err := w.Write([]byte(line)); n != len(line) || err != nil {
			t.Errorf("Write(%q) = %d, %v", line, n, err)
		}
	}
	for _, want := range []string{
		`level=DEBUG msg="debug line" component=memberlist`,
		`level=DEBUG msg="info line"`,
		`level=WARN msg="warn line"`,
		`level=WARN msg="err line"`,
		`level=WARN msg="bare line"`,
	} {
		if !logs.contains(want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	// Disabled levels are dropped.
	quiet := logWriter{slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	_, _ = quiet.Write([]byte("[DEBUG] memberlist: hidden\n"))
	if logs.contains("hidden") {
		t.Error("a debug line passed a warn logger")
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{StateJoining: "joining", StateActive: "active", StateLeaving: "leaving", 0: "state(0)", 9: "state(9)"} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String() = %q, want %q", s, got, want)
		}
	}
}

func TestViewLookups(t *testing.T) {
	v := View{
		Members: []Member{{Name: "a"}, {Name: "b", GRPCAddr: "b:1"}, {Name: "c"}},
		Owners:  []string{"b", "a", "b", "", "c"},
	}
	if m, ok := v.Member("b"); !ok || m.GRPCAddr != "b:1" {
		t.Errorf("Member(b) = %+v, %v", m, ok)
	}
	if _, ok := v.Member("bb"); ok {
		t.Error("Member(bb) found")
	}
	if got := v.Assigned("b"); len(got) != 2 || got[0] != 0 || got[1] != 2 {
		t.Errorf("Assigned(b) = %v", got)
	}
	if got := v.Assigned("z"); got != nil {
		t.Errorf("Assigned(z) = %v", got)
	}
}
