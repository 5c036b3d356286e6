package cluster

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
)

func TestMetaRoundTrip(t *testing.T) {
	for _, m := range []meta{
		{GRPCAddr: "127.0.0.1:7070", Incarnation: "a1b2c3", State: StateJoining},
		{GRPCAddr: "[::1]:7070", Incarnation: "x", State: StateActive},
		{GRPCAddr: "timerd-2.timerd.svc.cluster.local:7070", Incarnation: strings.Repeat("i", maxNameLen), State: StateLeaving},
		{GRPCAddr: strings.Repeat("h", 300) + ":1", Incarnation: "ü✓", State: StateActive},
	} {
		b := m.encode()
		if len(b) > memberlist.MetaMaxSize {
			t.Errorf("%+v: %d bytes", m, len(b))
		}
		got, err := decodeMeta(b)
		if err != nil || got != m {
			t.Errorf("decodeMeta(encode(%+v)) = %+v, %v", m, got, err)
		}
	}
	// The layout is pinned: nodes of different builds must read each other.
	b := meta{GRPCAddr: "h:1", Incarnation: "i", State: StateActive}.encode()
	if want := []byte{1, 2, 3, 'h', ':', '1', 1, 'i'}; !bytes.Equal(b, want) {
		t.Errorf("encoding % x, want % x", b, want)
	}
}

func TestDecodeMetaRejects(t *testing.T) {
	good := meta{GRPCAddr: "h:1", Incarnation: "i", State: StateActive}.encode()
	for name, b := range map[string][]byte{
		"empty":         nil,
		"one byte":      {1},
		"version 0":     append([]byte{0}, good[1:]...),
		"version 2":     append([]byte{2}, good[1:]...),
		"state 0":       {1, 0, 1, 'h', 1, 'i'},
		"state 4":       {1, 4, 1, 'h', 1, 'i'},
		"no fields":     {1, 2},
		"empty address": {1, 2, 0, 1, 'i'},
		"empty inc":     {1, 2, 1, 'h', 0},
		"short address": {1, 2, 5, 'h'},
		"no inc":        {1, 2, 1, 'h'},
		"long inc":      {1, 2, 1, 'h', 2, 'i'},
		"trailing":      append(bytes.Clone(good), 0),
		"bad varint":    {1, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	} {
		if m, err := decodeMeta(b); !errors.Is(err, errBadMeta) {
			t.Errorf("%s: decodeMeta(% x) = %+v, %v; want errBadMeta", name, b, m, err)
		}
	}
}

func FuzzDecodeMeta(f *testing.F) {
	f.Add(meta{GRPCAddr: "127.0.0.1:7070", Incarnation: "a1b2c3", State: StateActive}.encode())
	f.Add([]byte{1, 2, 1, 'h', 1, 'i'})
	f.Add([]byte{1, 4, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b)
		if err != nil {
			if !errors.Is(err, errBadMeta) {
				t.Fatalf("error %v does not wrap errBadMeta", err)
			}
			return
		}
		if !m.State.valid() || m.GRPCAddr == "" || m.Incarnation == "" {
			t.Fatalf("decoded an invalid meta %+v", m)
		}
		// What decodes is exactly one encoding.
		if again := m.encode(); !bytes.Equal(again, b) {
			t.Fatalf("decode(% x) = %+v, which encodes as % x", b, m, again)
		}
	})
}
