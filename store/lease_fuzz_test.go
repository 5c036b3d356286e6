package store

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzParseEpoch: the epoch of an epoch key's value is its leading
// digits, and what grantValue writes reads back.
func FuzzParseEpoch(f *testing.F) {
	f.Add(uint64(7), []byte("0123456789abcdef"), "7:00112233445566778899aabbccddeeff")
	f.Add(uint64(0), []byte{}, "42")
	f.Add(^uint64(0), []byte{1}, ":x")
	f.Fuzz(func(t *testing.T, epoch uint64, token []byte, raw string) {
		var tok Token
		copy(tok[:], token)
		v := grantValue(Grant{Epoch: epoch, Token: tok})
		if got, err := parseEpoch(v); err != nil || got != epoch {
			t.Fatalf("parseEpoch(%q) = %d, %v; want %d", v, got, err, epoch)
		}
		e, err := parseEpoch(raw)
		head, _, _ := strings.Cut(raw, ":")
		if want, werr := strconv.ParseUint(head, 10, 64); (err == nil) != (werr == nil) || e != want {
			t.Fatalf("parseEpoch(%q) = %d, %v; its head %q parses as %d, %v", raw, e, err, head, want, werr)
		}
		if got := epochOf(raw); got != head {
			t.Fatalf("epochOf(%q) = %q, want %q", raw, got, head)
		}
	})
}

// FuzzParseLeaseValue: a lease value "<epoch>:<token>:<owner>" splits
// back into what made it, owners with colons included, and any other
// string is refused or split without a panic.
func FuzzParseLeaseValue(f *testing.F) {
	f.Add(uint64(3), "node-1/abc", "3:00112233445566778899aabbccddeeff:node-1/abc")
	f.Add(uint64(0), "a:b", "")
	f.Add(^uint64(0), "", "::")
	f.Fuzz(func(t *testing.T, epoch uint64, owner, raw string) {
		var tok Token
		v := grantValue(Grant{Epoch: epoch, Token: tok}) + ":" + owner
		o, e, ok := parseLeaseValue(v)
		if !ok || o != owner || e != epoch {
			t.Fatalf("parseLeaseValue(%q) = %q, %d, %v; want %q, %d", v, o, e, ok, owner, epoch)
		}
		o, e, ok = parseLeaseValue(raw)
		if ok && !strings.HasSuffix(raw, ":"+o) {
			t.Fatalf("parseLeaseValue(%q) = owner %q, not the value's tail", raw, o)
		}
		if ok && !strings.HasPrefix(raw, strconv.FormatUint(e, 10)) && !strings.HasPrefix(raw, "+") && !strings.HasPrefix(raw, "0") {
			t.Fatalf("parseLeaseValue(%q) = epoch %d, not the value's head", raw, e)
		}
		_ = describeLease(raw)
	})
}
