package shard

import (
	"math/rand/v2"
	"strings"
)

// deadIndex orders a shard's dead letters by id, per namespace and per
// (namespace, topic), so that a page of them costs O(log n + page) and
// needs no sort, whatever the filter. It is the shard's only record of
// which timers are dead letters. It changes with Shard.mu and
// Shard.deadMu both held, so either is enough to read it.
type deadIndex struct {
	byNamespace map[string]*deadSet
	byTopic     map[topicKey]*deadSet
	n           int // dead letters held
}

// len returns the dead letters held.
func (x *deadIndex) len() int { return x.n }

// insert adds t, of namespace, topic and id. It keeps copies of the
// strings: those of the table point into its byte chunks, which it drops
// when it compacts them.
func (x *deadIndex) insert(t *timer, namespace, topic, id string) {
	if x.byNamespace == nil {
		x.byNamespace = make(map[string]*deadSet)
		x.byTopic = make(map[topicKey]*deadSet)
	}
	id = strings.Clone(id)
	ns := x.byNamespace[namespace]
	if ns == nil {
		ns = &deadSet{}
		x.byNamespace[strings.Clone(namespace)] = ns
	}
	ns.insert(t, id)
	tk := topicKey{namespace, topic}
	tp := x.byTopic[tk]
	if tp == nil {
		tp = &deadSet{}
		x.byTopic[topicKey{strings.Clone(namespace), strings.Clone(topic)}] = tp
	}
	tp.insert(t, id)
	x.n++
}

// remove takes out the timer of namespace, topic and id.
func (x *deadIndex) remove(namespace, topic, id string) {
	ns := x.byNamespace[namespace]
	if ns == nil || !ns.remove(id) {
		return
	}
	x.n--
	if ns.len == 0 {
		delete(x.byNamespace, namespace)
	}
	tk := topicKey{namespace, topic}
	if tp := x.byTopic[tk]; tp != nil && tp.remove(id) && tp.len == 0 {
		delete(x.byTopic, tk)
	}
}

// set returns the dead letters of namespace, or of namespace and topic
// when topic is not empty; nil when there are none.
func (x *deadIndex) set(namespace, topic string) *deadSet {
	if topic == "" {
		return x.byNamespace[namespace]
	}
	return x.byTopic[topicKey{namespace, topic}]
}

// deadSet is an ordered set of the dead timers of one namespace, by id: a
// treap, a binary search tree kept balanced (in expectation) by random
// priorities, each node's above its children's. Insert and remove cost
// O(log n), a walk of k ids from a given one O(log n + k).
type deadSet struct {
	root *deadNode
	len  int
}

type deadNode struct {
	t           *timer
	id          string // t's
	prio        uint32
	left, right *deadNode
}

// insert adds t, whose id must not be in the set.
func (d *deadSet) insert(t *timer, id string) {
	d.root = insertNode(d.root, &deadNode{t: t, id: id, prio: rand.Uint32()})
	d.len++
}

func insertNode(n, x *deadNode) *deadNode {
	if n == nil {
		return x
	}
	if x.id < n.id {
		n.left = insertNode(n.left, x)
		if n.left.prio > n.prio {
			l := n.left // rotate right
			n.left, l.right = l.right, n
			return l
		}
		return n
	}
	n.right = insertNode(n.right, x)
	if n.right.prio > n.prio {
		r := n.right // rotate left
		n.right, r.left = r.left, n
		return r
	}
	return n
}

// remove takes id out of the set and reports whether it was there.
func (d *deadSet) remove(id string) bool {
	var ok bool
	d.root, ok = removeNode(d.root, id)
	if ok {
		d.len--
	}
	return ok
}

func removeNode(n *deadNode, id string) (*deadNode, bool) {
	if n == nil {
		return nil, false
	}
	var ok bool
	switch c := strings.Compare(id, n.id); {
	case c < 0:
		n.left, ok = removeNode(n.left, id)
	case c > 0:
		n.right, ok = removeNode(n.right, id)
	default:
		return joinNodes(n.left, n.right), true
	}
	return n, ok
}

// joinNodes joins two treaps, every id of a below every id of b.
func joinNodes(a, b *deadNode) *deadNode {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.prio > b.prio:
		a.right = joinNodes(a.right, b)
		return a
	}
	b.left = joinNodes(a, b.left)
	return b
}

// appendAfter appends to out, in id order, up to limit timers whose ids
// are greater than after.
func (d *deadSet) appendAfter(out []*timer, after string, limit int) []*timer {
	// The stack holds, nearest on top, the nodes past after whose own
	// id and right subtree are still to come: the search path to after
	// first, then the left spine of each right subtree entered.
	var buf [64]*deadNode
	stack := buf[:0]
	for n := d.root; n != nil; {
		if n.id > after {
			stack = append(stack, n)
			n = n.left
		} else {
			n = n.right
		}
	}
	for len(stack) > 0 && limit > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		out = append(out, n.t)
		limit--
		for c := n.right; c != nil; c = c.left {
			stack = append(stack, c)
		}
	}
	return out
}
