package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// proxyDialTimeout bounds how long the proxy waits to reach its target.
const proxyDialTimeout = 5 * time.Second

// proxyBufSize is the per-direction copy buffer size.
const proxyBufSize = 32 * 1024

// Proxy is a TCP proxy for simulating network partitions between a client
// and a server. Every accepted connection is forwarded to the target in both
// directions. Pause holds traffic without closing anything, Resume releases
// it in order, and Sever abruptly closes the current connections.
type Proxy struct {
	target string
	ln     net.Listener
	url    string

	mu     sync.Mutex
	paused bool
	resume chan struct{} // closed by Resume; replaced by Pause
	pairs  map[*pipePair]struct{}
	closed bool

	done chan struct{} // closed by close
	wg   sync.WaitGroup
}

// pipePair is one proxied client connection and its upstream connection.
type pipePair struct {
	client net.Conn
	ctx    context.Context    // cancelled on teardown; aborts a pending dial
	cancel context.CancelFunc //

	mu       sync.Mutex
	upstream net.Conn
	closed   bool
}

func newPipePair(client net.Conn) *pipePair {
	ctx, cancel := context.WithCancel(context.Background())
	return &pipePair{client: client, ctx: ctx, cancel: cancel}
}

// setUpstream records the upstream connection; it returns false (and the
// caller must close u) if the pair was already torn down.
func (pp *pipePair) setUpstream(u net.Conn) bool {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.closed {
		return false
	}
	pp.upstream = u
	return true
}

// teardown closes both connections of the pair, once. If abrupt, the
// sockets are closed with SO_LINGER 0 so that peers see a reset rather than
// a clean EOF.
func (pp *pipePair) teardown(abrupt bool) {
	pp.mu.Lock()
	if pp.closed {
		pp.mu.Unlock()
		return
	}
	pp.closed = true
	u := pp.upstream
	pp.mu.Unlock()

	pp.cancel()
	closeConn(pp.client, abrupt)
	if u != nil {
		closeConn(u, abrupt)
	}
}

func closeConn(c net.Conn, abrupt bool) {
	if abrupt {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
	}
	_ = c.Close()
}

// NewProxy starts a proxy on 127.0.0.1 with a random port forwarding to
// target ("host:port"; a "nats://host:port" URL is accepted too). The proxy
// and every goroutine it started have stopped when test cleanup returns.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: proxy listen: %v", err)
	}
	p := &Proxy{
		target: stripScheme(target),
		ln:     ln,
		url:    fmt.Sprintf("nats://127.0.0.1:%d", ln.Addr().(*net.TCPAddr).Port),
		resume: make(chan struct{}),
		pairs:  make(map[*pipePair]struct{}),
		done:   make(chan struct{}),
	}
	close(p.resume) // not paused
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(p.close)
	return p
}

// URL returns the proxy's client URL, "nats://127.0.0.1:<port>".
func (p *Proxy) URL() string { return p.url }

// Addr returns the proxy's listen address, "127.0.0.1:<port>".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Pause stops forwarding bytes in both directions on all current and new
// connections. Bytes already read from a connection are held, not dropped;
// connections stay open. Further bytes back up in the kernel buffers.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused {
		return
	}
	p.paused = true
	p.resume = make(chan struct{})
}

// Resume forwards traffic again, starting with any bytes held while paused,
// in order.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paused {
		return
	}
	p.paused = false
	close(p.resume)
}

// Sever abruptly closes all current connections (both the client and the
// upstream side, with a TCP reset where possible). New connections are
// still accepted. Bytes held by a paused proxy for those connections are
// dropped.
func (p *Proxy) Sever() {
	p.mu.Lock()
	pairs := make([]*pipePair, 0, len(p.pairs))
	for pp := range p.pairs {
		pairs = append(pairs, pp)
	}
	p.mu.Unlock()
	for _, pp := range pairs {
		pp.teardown(true)
	}
}

// NumConns reports how many proxied connections are currently open.
func (p *Proxy) NumConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pairs)
}

// close stops accepting, closes every connection and waits for all proxy
// goroutines to exit.
func (p *Proxy) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()

	p.ln.Close()
	p.Sever()
	p.wg.Wait()
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-p.done:
				return
			default:
			}
			// Transient accept error (e.g. EMFILE); keep serving, but back
			// off a little unless we are shutting down.
			select {
			case <-p.done:
				return
			case <-time.After(pollInterval):
			}
			continue
		}
		p.wg.Add(1)
		go p.handle(c)
	}
}

// handle dials the target for an accepted client connection and pumps bytes
// both ways until either side fails or the pair is severed.
func (p *Proxy) handle(client net.Conn) {
	defer p.wg.Done()

	pp := newPipePair(client)
	// Register before dialing so that Sever/close can abort a pending dial.
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		pp.teardown(false)
		return
	}
	p.pairs[pp] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.pairs, pp)
		p.mu.Unlock()
		pp.teardown(false)
	}()

	d := net.Dialer{Timeout: proxyDialTimeout}
	upstream, err := d.DialContext(pp.ctx, "tcp", p.target)
	if err != nil {
		return
	}
	if !pp.setUpstream(upstream) {
		upstream.Close()
		return
	}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pump(pp, upstream, client) }()
	go func() { defer wg.Done(); p.pump(pp, client, upstream) }()
	wg.Wait()
}

// pump copies src to dst, holding bytes while the proxy is paused. When
// either side fails or reaches EOF it tears down the whole pair, so that the
// other pump stops too. (NATS does not use TCP half-close.)
func (p *Proxy) pump(pp *pipePair, dst, src net.Conn) {
	defer pp.teardown(false)
	buf := make([]byte, proxyBufSize)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if !p.waitResumed(pp) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if rerr != nil {
			return
		}
	}
}

// waitResumed blocks while the proxy is paused. It returns false if the pair
// was torn down or the proxy closed meanwhile.
func (p *Proxy) waitResumed(pp *pipePair) bool {
	for {
		p.mu.Lock()
		paused, resume := p.paused, p.resume
		p.mu.Unlock()
		if !paused {
			return pp.ctx.Err() == nil
		}
		select {
		case <-resume:
		case <-pp.ctx.Done():
			return false
		case <-p.done:
			return false
		}
	}
}
