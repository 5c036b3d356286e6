package server

import "testing"

// TestPeerRelays: a relay stream ends when its peer, once a member, is
// no longer in the view; a peer not yet in the view (it joined before
// this node saw it) keeps its relay until it has been a member and
// left; and a departed peer's new relay is refused until it is a member
// again.
func TestPeerRelays(t *testing.T) {
	type step struct {
		members []string // the view follow is given; nil: add instead
		add     string   // the peer that opens a relay
		ended   int      // follow: relays ended
		refused bool     // add: refused
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"member leaves", []step{
			{members: []string{"a", "b"}},
			{add: "b"},
			{members: []string{"a", "b"}, ended: 0},
			{members: []string{"a"}, ended: 1},
			{add: "b", refused: true},
		}},
		{"unseen peer kept until it leaves", []step{
			{members: []string{"a"}},
			{add: "c"},
			{members: []string{"a"}, ended: 0},
			{members: []string{"a", "c"}, ended: 0},
			{members: []string{"a"}, ended: 1},
		}},
		{"departed peer comes back", []step{
			{members: []string{"a", "b"}},
			{members: []string{"a"}},
			{add: "b", refused: true},
			{members: []string{"a", "b"}},
			{add: "b"},
			{add: "b"},
			{members: []string{"a"}, ended: 2},
		}},
		{"other peers untouched", []step{
			{members: []string{"a", "b", "c"}},
			{add: "b"},
			{add: "c"},
			{members: []string{"a", "c"}, ended: 1},
			{members: []string{"a", "c"}, ended: 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPeerRelays()
			var opened []*peerRelay
			for i, st := range tt.steps {
				if st.add != "" {
					r := p.add(st.add)
					if (r == nil) != st.refused {
						t.Fatalf("step %d: add(%q) refused %v, want %v", i, st.add, r == nil, st.refused)
					}
					if r != nil {
						opened = append(opened, r)
					}
					continue
				}
				m := make(map[string]bool)
				for _, n := range st.members {
					m[n] = true
				}
				if got := p.follow(m); got != st.ended {
					t.Fatalf("step %d: follow(%v) ended %d, want %d", i, st.members, got, st.ended)
				}
			}
			ended := 0
			for _, r := range opened {
				select {
				case <-r.gone:
					ended++
				default:
				}
			}
			want := 0
			for _, st := range tt.steps {
				want += st.ended
			}
			if ended != want {
				t.Errorf("%d relays' gone closed, want %d", ended, want)
			}
		})
	}
}
