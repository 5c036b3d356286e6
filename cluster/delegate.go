package cluster

import (
	"bytes"
	"context"
	"log/slog"
	"strings"

	"github.com/hashicorp/memberlist"
)

// delegate receives memberlist's callbacks. memberlist calls NotifyJoin,
// NotifyLeave, NotifyUpdate and NotifyConflict while it holds its node
// table's lock, so they only copy what they are given and wake the
// Cluster's loop; they never block and never call into memberlist.
//
// Those callbacks are also the only moments a memberlist.Node may be read
// safely: memberlist rewrites a node's address, meta and state in place
// under that lock, and the *Node values Members returns point into its
// table. The Cluster therefore takes from Members only the names (which
// memberlist never rewrites) and everything else from the copies made
// here.
type delegate struct{ c *Cluster }

var (
	_ memberlist.Delegate         = delegate{}
	_ memberlist.EventDelegate    = delegate{}
	_ memberlist.ConflictDelegate = delegate{}
)

// fact is what a callback copied about a member. It is never modified.
type fact struct {
	gossipAddr string
	meta       []byte
}

// conflict is a name claimed by a second gossip address.
type conflict struct {
	name                string
	keptAddr, otherAddr string
	keptMeta, otherMeta []byte
}

// maxConflicts bounds the conflicts waiting to be logged.
const maxConflicts = 16

// NodeMeta implements memberlist.Delegate: this node's meta.
func (d delegate) NodeMeta(limit int) []byte {
	b := d.c.selfMeta().encode()
	if len(b) > limit { // Validate keeps this from happening.
		return nil
	}
	return b
}

// NotifyMsg implements memberlist.Delegate; the package sends no messages.
func (delegate) NotifyMsg([]byte) {}

// GetBroadcasts implements memberlist.Delegate; the package broadcasts
// nothing of its own.
func (delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState implements memberlist.Delegate; there is no state to sync.
func (delegate) LocalState(join bool) []byte { return nil }

// MergeRemoteState implements memberlist.Delegate.
func (delegate) MergeRemoteState(buf []byte, join bool) {}

// NotifyJoin implements memberlist.EventDelegate.
func (d delegate) NotifyJoin(n *memberlist.Node) { d.c.observe(n, true) }

// NotifyUpdate implements memberlist.EventDelegate.
func (d delegate) NotifyUpdate(n *memberlist.Node) { d.c.observe(n, true) }

// NotifyLeave implements memberlist.EventDelegate.
func (d delegate) NotifyLeave(n *memberlist.Node) { d.c.observe(n, false) }

// NotifyConflict implements memberlist.ConflictDelegate: other claims the
// name of existing from another address. memberlist keeps existing and
// ignores other (see the package doc); the loop logs it.
func (d delegate) NotifyConflict(existing, other *memberlist.Node) {
	c := d.c
	c.factsMu.Lock()
	if len(c.conflicts) < maxConflicts {
		c.conflicts = append(c.conflicts, conflict{
			name:      existing.Name,
			keptAddr:  existing.Address(),
			keptMeta:  bytes.Clone(existing.Meta),
			otherAddr: other.Address(),
			otherMeta: bytes.Clone(other.Meta),
		})
	}
	c.factsMu.Unlock()
	c.wake()
}

// observe records what a callback says about n: present after a join or
// an update, gone after a leave or a death.
func (c *Cluster) observe(n *memberlist.Node, present bool) {
	c.factsMu.Lock()
	if present {
		c.facts[n.Name] = &fact{gossipAddr: n.Address(), meta: bytes.Clone(n.Meta)}
	} else {
		delete(c.facts, n.Name)
	}
	c.factsMu.Unlock()
	c.wake()
}

// logWriter turns memberlist's log lines ("[WARN] memberlist: ...") into
// slog records: [DEBUG] and [INFO] at debug level, [WARN], [ERR] and
// anything else at warn. memberlist reports at [ERR] what a dead or
// unreachable peer causes, which is expected while a node dies, so none
// of its lines is an error of this process.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelWarn
	for _, l := range []struct {
		prefix string
		level  slog.Level
	}{
		{"[DEBUG]", slog.LevelDebug},
		{"[INFO]", slog.LevelDebug},
		{"[WARN]", slog.LevelWarn},
		{"[ERR]", slog.LevelWarn},
	} {
		if rest, ok := strings.CutPrefix(line, l.prefix); ok {
			line, level = strings.TrimSpace(rest), l.level
			break
		}
	}
	ctx := context.Background()
	if w.log.Enabled(ctx, level) {
		line = strings.TrimPrefix(line, "memberlist: ")
		w.log.Log(ctx, level, line, "component", "memberlist")
	}
	return len(p), nil
}
