package testenv

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// ClusterName is the cluster name used by RunCluster.
const ClusterName = "fleet-test"

// globalAccount is the account clients use when no accounts are configured.
const globalAccount = "$G"

// Cluster is a set of embedded JetStream nodes routed together into one
// JetStream cluster.
type Cluster struct {
	Servers []*Server
}

// RunCluster starts an n-node JetStream cluster on 127.0.0.1. Client and
// cluster ports are chosen up front so that every node gets the full route
// list and keeps its ports across Kill/Restart. Nodes are named "n0".."n{n-1}".
// It returns once every node accepts clients, JetStream has a meta leader,
// the leader sees every node as a JetStream peer, and every node is current
// with the meta group. The cluster is shut down at test cleanup.
func RunCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("testenv: RunCluster needs at least one node, got %d", n)
	}
	ports, err := freePorts(2 * n)
	if err != nil {
		t.Fatalf("testenv: reserve ports: %v", err)
	}
	routes := make([]*url.URL, n)
	for i := range n {
		routes[i] = &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", ports[n+i])}
	}
	dir := t.TempDir()

	c := &Cluster{Servers: make([]*Server, n)}
	for i := range n {
		s := &Server{cfg: nodeConfig{
			name:        fmt.Sprintf("n%d", i),
			port:        ports[i],
			storeDir:    filepath.Join(dir, fmt.Sprintf("n%d", i)),
			clusterName: ClusterName,
			clusterPort: ports[n+i],
			routes:      routes,
		}}
		s.url = fmt.Sprintf("nats://127.0.0.1:%d", ports[i])
		c.Servers[i] = s
	}
	// Cleanup is registered before anything starts so that a failure half
	// way still shuts down whatever is running.
	t.Cleanup(c.shutdown)

	// Start all nodes concurrently: the meta group needs a quorum before
	// any node is fully useful, and a sequential start would only add the
	// route-connect delays up.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, s := range c.Servers {
		wg.Go(func() { errs[i] = s.start() })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("testenv: start cluster node %d: %v", i, err)
		}
	}
	c.waitFormed(t, clusterTimeout)
	return c
}

// shutdown kills every node, concurrently.
func (c *Cluster) shutdown() {
	var wg sync.WaitGroup
	for _, s := range c.Servers {
		wg.Go(s.Kill)
	}
	wg.Wait()
}

// URLs returns the comma-separated client URLs of all nodes (including
// killed ones; their ports are kept for Restart).
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		urls[i] = s.URL()
	}
	return strings.Join(urls, ",")
}

// Connect opens a client connection that may use any node of the cluster;
// it is closed at test cleanup.
func (c *Cluster) Connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return connect(t, c.URLs(), opts...)
}

// Kill shuts node i down, keeping its ports and store directory.
func (c *Cluster) Kill(i int) {
	c.Servers[i].Kill()
}

// Restart starts node i again with the same ports, store directory and
// routes, and waits until it accepts clients, a meta leader exists, the
// leader sees every running node as a peer, and every running node
// (including node i) is current with the meta group.
func (c *Cluster) Restart(t testing.TB, i int) {
	t.Helper()
	c.Servers[i].Kill()
	if err := c.Servers[i].start(); err != nil {
		t.Fatalf("testenv: restart cluster node %d: %v", i, err)
	}
	c.waitFormed(t, clusterTimeout)
}

// MetaLeader returns the index of the node that is the JetStream meta
// leader, or -1 if no running node is.
func (c *Cluster) MetaLeader() int {
	for i, s := range c.Servers {
		if ns := s.Server(); ns != nil && ns.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// WaitMetaLeader waits up to d for a JetStream meta leader and returns its
// index; it fails the test if there is none in time.
func (c *Cluster) WaitMetaLeader(t testing.TB, d time.Duration) int {
	t.Helper()
	idx := -1
	Eventually(t, d, func() bool {
		idx = c.MetaLeader()
		return idx >= 0
	}, "no JetStream meta leader among %d nodes", len(c.Servers))
	return idx
}

// waitFormed waits until the running nodes form a healthy JetStream cluster
// (see Restart).
func (c *Cluster) waitFormed(t testing.TB, d time.Duration) {
	t.Helper()
	var why string
	Eventually(t, d, func() bool {
		why = c.formed()
		return why == ""
	}, "JetStream cluster not formed: %s", lazy(func() string { return why }))
}

// lazy defers building a string until it is formatted, so that a failure
// message can report state observed by the last poll.
type lazy func() string

func (l lazy) String() string { return l() }

// formed returns "" when the cluster is healthy, or a reason why not.
func (c *Cluster) formed() string {
	leader := c.MetaLeader()
	if leader < 0 {
		return "no meta leader"
	}
	running := 0
	for _, s := range c.Servers {
		if s.Server() != nil {
			running++
		}
	}
	for i, s := range c.Servers {
		s.mu.Lock()
		ns, perRemote := s.srv, s.routesPerRemote
		s.mu.Unlock()
		if ns == nil {
			continue
		}
		// Full mesh: without it, interest (e.g. a client's reply inbox or a
		// new stream's subjects) may not reach every node yet.
		if got := ns.NumRemotes(); got < running-1 {
			return fmt.Sprintf("node %d routed to %d of %d other nodes", i, got, running-1)
		}
		if got, want := ns.NumRoutes(), (running-1)*perRemote; got < want {
			return fmt.Sprintf("node %d has %d of %d route connections", i, got, want)
		}
		if !ns.JetStreamIsCurrent() {
			return fmt.Sprintf("node %d not current with the meta group", i)
		}
	}
	ls := c.Servers[leader].Server()
	if ls == nil {
		return "meta leader was killed"
	}
	if peers := ls.JetStreamClusterPeers(); len(peers) < running {
		return fmt.Sprintf("meta leader n%d sees %d of %d running peers: %v", leader, len(peers), running, peers)
	}
	return ""
}

// StreamLeader returns the index of the node that leads the stream in the
// global account, or -1 if no running node does.
func (c *Cluster) StreamLeader(t testing.TB, stream string) int {
	t.Helper()
	for i, s := range c.Servers {
		if ns := s.Server(); ns != nil && ns.JetStreamIsStreamLeader(globalAccount, stream) {
			return i
		}
	}
	return -1
}

// WaitStreamLeader waits up to d for the stream to have a leader and returns
// its index; it fails the test if there is none in time.
func (c *Cluster) WaitStreamLeader(t testing.TB, stream string, d time.Duration) int {
	t.Helper()
	idx := -1
	Eventually(t, d, func() bool {
		idx = c.StreamLeader(t, stream)
		return idx >= 0
	}, "no leader for stream %q", stream)
	return idx
}

// freePorts reserves n distinct free TCP ports on 127.0.0.1 by listening on
// port 0, recording the port and closing the listener. All listeners are
// held open until every port is known, so the n ports are distinct.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
