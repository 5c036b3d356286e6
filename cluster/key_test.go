package cluster

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"testing"
)

func TestDecodeKey(t *testing.T) {
	k32 := bytes.Repeat([]byte{0xab}, 32)
	raw16 := []byte("0123456789abcdef")
	tests := []struct {
		name string
		in   []byte
		want []byte // nil: an error
	}{
		{"base64 32", []byte(base64.StdEncoding.EncodeToString(k32) + "\n"), k32},
		{"base64 16 with spaces", []byte("  " + base64.StdEncoding.EncodeToString(raw16) + " \r\n"), raw16},
		{"raw 16", raw16, raw16},
		{"raw 24", bytes.Repeat([]byte{1}, 24), bytes.Repeat([]byte{1}, 24)},
		{"base64 of 20 bytes", []byte(base64.StdEncoding.EncodeToString(make([]byte, 20))), nil},
		{"empty", nil, nil},
		{"raw 17", make([]byte, 17), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeKey(tt.in)
			if tt.want == nil {
				if !errors.Is(err, ErrInvalidKey) {
					t.Fatalf("DecodeKey = %x, %v; want ErrInvalidKey", got, err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, tt.want) {
				t.Fatalf("DecodeKey = %x, %v; want %x", got, err, tt.want)
			}
		})
	}
}

// FuzzDecodeKey checks that DecodeKey never panics and returns only keys
// of a valid AES length.
func FuzzDecodeKey(f *testing.F) {
	f.Add([]byte(base64.StdEncoding.EncodeToString(make([]byte, 32))))
	f.Add([]byte("0123456789abcdef"))
	f.Add([]byte(" \n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := DecodeKey(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("error %v does not wrap ErrInvalidKey", err)
			}
			return
		}
		if validKeyLen(len(k)) != nil {
			t.Fatalf("DecodeKey returned a %d-byte key", len(k))
		}
	})
}

// TestGossipEncryption joins real memberlist nodes on loopback: a node
// with the seed's key and label joins; one without the key, with another
// key, or with another label cannot.
func TestGossipEncryption(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	other := bytes.Repeat([]byte{8}, 16)
	log, _ := newLog(t)
	seedCfg := testConfig("seed")
	seedCfg.SecretKey, seedCfg.Logger = key, log
	seed := start(t, seedCfg)
	tests := []struct {
		name  string
		key   []byte
		label string
		joins bool
	}{
		{"same key and label", key, DefaultLabel, true},
		{"no key", nil, DefaultLabel, false},
		{"another key", other, DefaultLabel, false},
		{"another label", key, "other-cluster", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig("n-" + tt.name)
			cfg.SecretKey, cfg.Label, cfg.Logger = tt.key, tt.label, log
			c := start(t, cfg) // no seeds: it runs alone
			c.seeds = []string{seed.GossipAddr()}
			n, err := c.join(context.Background())
			if tt.joins != (n == 1) {
				t.Fatalf("join: %d seeds answered, err %v; want joined=%v", n, err, tt.joins)
			}
			t.Logf("join: %d, %v", n, err)
		})
	}
}
