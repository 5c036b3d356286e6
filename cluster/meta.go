package cluster

import (
	"encoding/binary"
	"fmt"
)

// metaVersion is the version of the node meta layout this package writes
// and reads.
const metaVersion = 1

// meta is what a node announces about itself in the gossip, beside its
// name and gossip address.
//
// Version 1 layout:
//
//	byte     version (1)
//	byte     State
//	uvarint  len(GRPCAddr), then GRPCAddr
//	uvarint  len(Incarnation), then Incarnation
//
// Nothing may follow. A node that cannot decode a member's meta leaves
// that member out of its View, so a change of layout takes a new version,
// and every node must be able to read it before any node writes it.
type meta struct {
	GRPCAddr    string
	Incarnation string
	State       State
}

// encode returns the version 1 encoding of m.
func (m meta) encode() []byte {
	b := make([]byte, 0, 2+2*binary.MaxVarintLen16+len(m.GRPCAddr)+len(m.Incarnation))
	b = append(b, metaVersion, byte(m.State))
	b = binary.AppendUvarint(b, uint64(len(m.GRPCAddr)))
	b = append(b, m.GRPCAddr...)
	b = binary.AppendUvarint(b, uint64(len(m.Incarnation)))
	b = append(b, m.Incarnation...)
	return b
}

// decodeMeta decodes what encode wrote. It fails, wrapping errBadMeta, on
// an unknown version or state, an empty or truncated field, a length not
// in its shortest encoding, or trailing bytes. The strings it returns do not share b's memory.
func decodeMeta(b []byte) (meta, error) {
	if len(b) < 2 {
		return meta{}, fmt.Errorf("%w: %d bytes", errBadMeta, len(b))
	}
	if b[0] != metaVersion {
		return meta{}, fmt.Errorf("%w: version %d, want %d", errBadMeta, b[0], metaVersion)
	}
	m := meta{State: State(b[1])}
	if !m.State.valid() {
		return meta{}, fmt.Errorf("%w: state %d", errBadMeta, b[1])
	}
	rest := b[2:]
	field := func(name string) (string, error) {
		n, k := binary.Uvarint(rest)
		// A length ending in a zero byte is not the shortest encoding
		// (n is not 0): one meta has one encoding, as encode writes it.
		if k <= 0 || n == 0 || rest[k-1] == 0 || n > uint64(len(rest)-k) {
			return "", fmt.Errorf("%w: bad %s", errBadMeta, name)
		}
		s := string(rest[k : k+int(n)])
		rest = rest[k+int(n):]
		return s, nil
	}
	var err error
	if m.GRPCAddr, err = field("gRPC address"); err != nil {
		return meta{}, err
	}
	if m.Incarnation, err = field("incarnation"); err != nil {
		return meta{}, err
	}
	if len(rest) != 0 {
		return meta{}, fmt.Errorf("%w: %d trailing bytes", errBadMeta, len(rest))
	}
	return m, nil
}
