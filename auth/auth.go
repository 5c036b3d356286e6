// Package auth owns timerd's bearer tokens: the token file, which maps
// each token to the namespaces it may use and the roles it holds, and the
// check of a presented token against it. It knows nothing of gRPC; the
// server reads the token from a request's metadata and asks a Policy.
//
// The token file is JSON:
//
//	{"tokens": [
//	  {"name": "orders-app", "sha256": "<hex SHA-256 of the token>",
//	   "namespaces": ["orders"], "roles": ["schedule", "subscribe"]},
//	  {"name": "ops", "sha256": "...", "namespaces": ["*"], "roles": ["admin"]},
//	  {"name": "nodes", "sha256": "...", "namespaces": ["*"], "roles": ["node"]}
//	]}
//
// An entry gives its token as "sha256" (recommended: the file then holds
// no secret; printf %s "$TOKEN" | sha256sum) or, for development, as
// plain "token". Namespaces are exact names or "*" (every namespace).
// Unknown fields, duplicate names and duplicate tokens are errors, so a
// typo never widens or narrows access silently.
//
// # Invariants
//
//   - A Policy keeps only SHA-256 hashes of tokens, and Authenticate
//     compares a presented token's hash with every entry's in constant
//     time, so neither the file nor the time a check takes tells an
//     attacker how much of a guess was right.
//   - A Principal is immutable; a reloaded file yields new Principals.
package auth

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/timerd/timerd/shard"
)

var (
	// ErrInvalidFile is wrapped by Parse's errors.
	ErrInvalidFile = errors.New("auth: invalid token file")
	// ErrUnknownToken is Authenticate's answer to a token not in the file.
	ErrUnknownToken = errors.New("auth: unknown token")
)

// Role is a set of roles: what kind of RPC a token may make.
type Role uint8

const (
	// RoleSchedule may Schedule, Reschedule, Cancel and Get timers.
	RoleSchedule Role = 1 << iota
	// RoleSubscribe may Subscribe to a topic and ack its deliveries.
	RoleSubscribe
	// RoleAdmin may list and replay dead letters and make any other
	// administrative call.
	RoleAdmin
	// RoleNode is a cluster member's own identity, for the node-to-node
	// calls that are made on no caller's behalf.
	RoleNode
)

// roleNames are the roles' names in the token file, in bit order.
var roleNames = [...]string{"schedule", "subscribe", "admin", "node"}

// ParseRole returns the role named s.
func ParseRole(s string) (Role, error) {
	for i, n := range roleNames {
		if s == n {
			return 1 << i, nil
		}
	}
	return 0, fmt.Errorf("unknown role %q (want one of %s)", s, strings.Join(roleNames[:], ", "))
}

// String names the roles of r, separated by "+".
func (r Role) String() string {
	var names []string
	for i, n := range roleNames {
		if r&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, "+")
}

// AllNamespaces is the namespace entry that stands for every namespace.
const AllNamespaces = "*"

// Principal is who a token belongs to: its entry's name, roles and
// namespaces.
type Principal struct {
	// Name is the entry's name, for logs; it is not a secret.
	Name       string
	roles      Role
	all        bool
	namespaces map[string]bool
}

// Has reports whether p holds any of the roles in r.
func (p *Principal) Has(r Role) bool { return p.roles&r != 0 }

// Roles returns p's roles.
func (p *Principal) Roles() Role { return p.roles }

// MayUse reports whether p may touch the timers of namespace ns.
func (p *Principal) MayUse(ns string) bool { return p.all || p.namespaces[ns] }

// Policy is a parsed token file. It is immutable and safe for concurrent
// use.
type Policy struct {
	entries []entry
}

type entry struct {
	hash [sha256.Size]byte
	p    *Principal
}

// Len returns the number of tokens in the policy.
func (p *Policy) Len() int { return len(p.entries) }

// Authenticate returns the principal of token, or ErrUnknownToken. It
// compares token's hash with every entry's, in constant time.
func (p *Policy) Authenticate(token string) (*Principal, error) {
	h := sha256.Sum256([]byte(token))
	var found *Principal
	for i := range p.entries {
		if subtle.ConstantTimeCompare(h[:], p.entries[i].hash[:]) == 1 {
			found = p.entries[i].p
		}
	}
	if found == nil || token == "" {
		return nil, ErrUnknownToken
	}
	return found, nil
}

// HashToken returns the hex SHA-256 of token: what the file's "sha256"
// field holds.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// fileEntry is one entry of the token file as written.
type fileEntry struct {
	Name       string   `json:"name"`
	Token      string   `json:"token,omitempty"`
	SHA256     string   `json:"sha256,omitempty"`
	Namespaces []string `json:"namespaces"`
	Roles      []string `json:"roles"`
}

type file struct {
	Tokens []fileEntry `json:"tokens"`
}

// maxFileSize bounds the token file: 16 MiB is far more than any real
// file, and keeps a wrong path (a disk image, say) from exhausting memory.
const maxFileSize = 16 << 20

// Parse parses a token file. Errors wrap ErrInvalidFile and name the
// entry and field at fault.
func Parse(data []byte) (*Policy, error) {
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalidFile, maxFileSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f file
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidFile, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the top-level object", ErrInvalidFile)
	}
	p := &Policy{entries: make([]entry, 0, len(f.Tokens))}
	names := make(map[string]bool, len(f.Tokens))
	hashes := make(map[[sha256.Size]byte]string, len(f.Tokens))
	for i, fe := range f.Tokens {
		bad := func(field, format string, args ...any) error {
			return fmt.Errorf("%w: tokens[%d] (%q).%s %s", ErrInvalidFile, i, fe.Name, field, fmt.Sprintf(format, args...))
		}
		if fe.Name == "" {
			return nil, bad("name", "must be set")
		}
		if names[fe.Name] {
			return nil, bad("name", "is used by an earlier entry too")
		}
		names[fe.Name] = true
		var e entry
		switch {
		case (fe.Token == "") == (fe.SHA256 == ""):
			return nil, bad("sha256", "or token: exactly one must be set")
		case fe.Token != "":
			e.hash = sha256.Sum256([]byte(fe.Token))
		default:
			b, err := hex.DecodeString(fe.SHA256)
			if err != nil || len(b) != sha256.Size {
				return nil, bad("sha256", "must be %d hex digits", 2*sha256.Size)
			}
			copy(e.hash[:], b)
		}
		if other, ok := hashes[e.hash]; ok {
			return nil, bad("token", "is the same as that of %q", other)
		}
		hashes[e.hash] = fe.Name
		pr := &Principal{Name: fe.Name, namespaces: make(map[string]bool, len(fe.Namespaces))}
		if len(fe.Roles) == 0 {
			return nil, bad("roles", "must name at least one role")
		}
		for _, r := range fe.Roles {
			role, err := ParseRole(r)
			if err != nil {
				return nil, bad("roles", "%v", err)
			}
			pr.roles |= role
		}
		if len(fe.Namespaces) == 0 {
			return nil, bad("namespaces", "must name at least one namespace, or %q", AllNamespaces)
		}
		for _, ns := range fe.Namespaces {
			if ns == AllNamespaces {
				pr.all = true
				continue
			}
			if err := shard.ValidNamespace(ns); err != nil {
				return nil, bad("namespaces", "%v", err)
			}
			pr.namespaces[ns] = true
		}
		e.p = pr
		p.entries = append(p.entries, e)
	}
	return p, nil
}

// ReadFile reads and parses the token file at path.
func ReadFile(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}
