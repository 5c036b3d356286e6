// Package netfault puts a TCP proxy between a process and a server, for
// tests that need the network between them to fail: Pause holds every
// byte in both directions (a cut that heals, as a paused process or a
// partition is seen from outside) and Resume lets them through again.
//
// It listens on 127.0.0.1 only. It must not be imported outside tests.
package netfault

import (
	"net"
	"sync"
)

// Proxy forwards TCP connections from its own address to a target. Its
// methods may be called concurrently.
type Proxy struct {
	target string
	ln     net.Listener
	wg     sync.WaitGroup // the accept loop and the copiers

	mu sync.Mutex
	// gate is closed while bytes flow, and open (a fresh channel) while
	// paused; conns are the connections to close at Close. Both are
	// guarded by mu.
	gate   chan struct{}
	conns  map[net.Conn]bool
	closed bool
}

// Listen starts a proxy to target on a free port of 127.0.0.1.
func Listen(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	open := make(chan struct{})
	close(open)
	p := &Proxy{target: target, ln: ln, gate: open, conns: make(map[net.Conn]bool)}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr returns the address clients should connect to instead of the
// target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Pause holds every byte sent either way until Resume, and the closing
// of a connection by either side too; connections stay open and new ones
// are accepted (and held too).
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default: // paused already
	}
}

// Resume lets the held bytes, and later ones, through.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

// wait returns once bytes may flow, or false when the proxy closed.
func (p *Proxy) wait() bool {
	p.mu.Lock()
	gate, closed := p.gate, p.closed
	p.mu.Unlock()
	if closed {
		return false
	}
	<-gate
	return true
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		t, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c, t) {
			return
		}
		p.wg.Go(func() { p.pipe(t, c) })
		p.wg.Go(func() { p.pipe(c, t) })
	}
}

// track records a connection pair for Close, or closes it when the proxy
// has closed.
func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = true
	}
	return true
}

// pipe copies src to dst, holding each chunk while the proxy is paused.
// When either side ends, both are closed.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			// EOF or a closed side: both close, once bytes may flow. A
			// close is held like a byte: a paused process sends no FIN,
			// and a partition drops it, so the other side sees nothing.
			p.wait()
			return
		}
	}
}

// Close stops the proxy and closes every connection through it.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}
