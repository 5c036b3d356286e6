package shard

// Census hears how many timers of each namespace the shards of a node
// hold, so that a node can limit a namespace's timers without asking
// every shard. A shard reports the timers it loaded once its load is
// complete, then every timer it adds or forgets, and takes back all it
// reported when it stops (closed, crashed or lost), so the sums over a
// node's shards always equal the timers its serving shards hold, dead
// letters included.
type Census interface {
	// Count adds delta (negative when timers go) to the timers of
	// namespace. It is called under a shard's lock: it must not block
	// and must not call the shard.
	Count(namespace string, delta int)
}

// countLocked adds delta to the timers of namespace, and reports it to
// the census while the shard is counted there.
func (s *Shard) countLocked(namespace string, delta int) {
	n := s.perNS[namespace] + delta
	if n == 0 {
		delete(s.perNS, namespace)
	} else {
		s.perNS[namespace] = n
	}
	if s.counted {
		s.cfg.Census.Count(namespace, delta)
	}
}

// startCountingLocked reports the shard's timers to the census, once its
// load is complete: a load that fails reports nothing, so there is
// nothing to take back.
func (s *Shard) startCountingLocked() {
	if s.cfg.Census == nil || s.counted {
		return
	}
	s.counted = true
	for ns, n := range s.perNS {
		s.cfg.Census.Count(ns, n)
	}
}

// stopCountingLocked takes back from the census all the shard reported.
func (s *Shard) stopCountingLocked() {
	if !s.counted {
		return
	}
	s.counted = false
	for ns, n := range s.perNS {
		s.cfg.Census.Count(ns, -n)
	}
}

// Timers returns how many timers of namespace the shard holds, dead
// letters included.
func (s *Shard) Timers(namespace string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.perNS[namespace]
}
