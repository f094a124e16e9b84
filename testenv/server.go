// Package testenv provides test-support helpers for the fleet job-dispatch
// system: in-process embedded NATS JetStream servers and clusters, a TCP
// proxy for simulating network partitions, and polling wait helpers.
//
// Nothing in this package sleeps to synchronise; every wait polls a
// condition with a deadline.
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

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

const (
	// readyTimeout bounds how long we wait for a node to accept clients.
	readyTimeout = 10 * time.Second
	// jsTimeout bounds how long we wait for JetStream to come up on a node.
	jsTimeout = 10 * time.Second
	// clusterTimeout bounds how long we wait for a cluster (meta leader,
	// peers) to form. Raft election timeouts are 4–9 s in nats-server, so
	// leave generous room, especially under -race.
	clusterTimeout = 30 * time.Second
	// pollInterval is how often wait helpers re-check their condition.
	pollInterval = 10 * time.Millisecond
)

// nodeConfig holds everything needed to (re)build a node's server.Options.
// A fresh Options value is built for every start because nats-server
// mutates the Options it is given.
type nodeConfig struct {
	name        string
	port        int // -1 for "pick one" on first start
	storeDir    string
	clusterName string
	clusterPort int
	routes      []*url.URL
}

func (c nodeConfig) options() *server.Options {
	opts := &server.Options{
		ServerName:             c.name,
		Host:                   "127.0.0.1",
		Port:                   c.port,
		NoLog:                  true,
		NoSigs:                 true,
		JetStream:              true,
		StoreDir:               c.storeDir,
		SyncAlways:             true,
		SyncInterval:           2 * time.Minute,
		DisableJetStreamBanner: true,
	}
	if c.clusterName != "" {
		opts.Cluster = server.ClusterOpts{
			Name: c.clusterName,
			Host: "127.0.0.1",
			Port: c.clusterPort,
		}
		routes := make([]*url.URL, len(c.routes))
		for i, u := range c.routes {
			cp := *u
			routes[i] = &cp
		}
		opts.Routes = routes
	}
	return opts
}

// Server is one embedded JetStream node.
type Server struct {
	mu  sync.Mutex
	cfg nodeConfig
	srv *server.Server
	url string
	// routesPerRemote is how many route connections this node opens to
	// each other node once fully meshed (pool size plus pinned accounts),
	// as resolved by nats-server from the options of the last start.
	routesPerRemote int
}

// RunServer starts a single JetStream node on 127.0.0.1 with a random
// client port and a file store in t.TempDir(). The server is shut down at
// test cleanup. It fails the test if the server does not become ready.
func RunServer(t testing.TB) *Server {
	t.Helper()
	s := &Server{cfg: nodeConfig{
		name:     "standalone",
		port:     -1,
		storeDir: filepath.Join(t.TempDir(), "js"),
	}}
	t.Cleanup(s.Kill)
	if err := s.start(); err != nil {
		t.Fatalf("testenv: start server: %v", err)
	}
	return s
}

// start builds and starts a server from s.cfg, waits until it accepts
// clients and JetStream is enabled, and pins the client port so that a
// later Restart binds the same one.
func (s *Server) start() error {
	opts := s.cfg.options()
	// NewServer fills in defaults (route pool size, pinned accounts) in opts.
	ns, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("new server %q: %w", s.cfg.name, err)
	}
	go ns.Start()

	fail := func(err error) error {
		ns.Shutdown()
		ns.WaitForShutdown()
		return err
	}
	if !ns.ReadyForConnections(readyTimeout) {
		return fail(fmt.Errorf("server %q not ready for connections within %s", s.cfg.name, readyTimeout))
	}
	if !pollUntil(jsTimeout, ns.JetStreamEnabled) {
		return fail(fmt.Errorf("server %q: JetStream not enabled within %s", s.cfg.name, jsTimeout))
	}
	addr, ok := ns.Addr().(*net.TCPAddr)
	if !ok {
		return fail(fmt.Errorf("server %q: unexpected listener address %v", s.cfg.name, ns.Addr()))
	}

	s.mu.Lock()
	s.cfg.port = addr.Port
	s.srv = ns
	s.routesPerRemote = max(opts.Cluster.PoolSize, 1) + len(opts.Cluster.PinnedAccounts)
	s.url = fmt.Sprintf("nats://127.0.0.1:%d", addr.Port)
	s.mu.Unlock()
	return nil
}

// URL returns the client URL of the node. It stays valid across
// Kill/Restart because the port is kept.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// Server returns the underlying nats-server, or nil while the node is
// killed.
func (s *Server) Server() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}

// StoreDir returns the JetStream store directory of the node.
func (s *Server) StoreDir() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.storeDir
}

// Connect opens a client connection to this node; it is closed at test
// cleanup. It fails the test if the connection cannot be established.
func (s *Server) Connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return connect(t, s.URL(), opts...)
}

// Kill shuts the node down and waits for it to stop, keeping its store
// directory and port so that Restart can bring it back. Killing an
// already-killed node is a no-op.
func (s *Server) Kill() {
	s.mu.Lock()
	ns := s.srv
	s.srv = nil
	s.mu.Unlock()
	if ns == nil {
		return
	}
	ns.Shutdown()
	ns.WaitForShutdown()
}

// Restart starts the node again on the same client port and store
// directory (killing it first if it is running), and waits until it accepts
// clients and JetStream is enabled.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		t.Fatalf("testenv: restart server: %v", err)
	}
}

// Eventually polls cond every 10ms until it returns true or d passes, in
// which case it fails the test with the formatted message.
func Eventually(t testing.TB, d time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	if !pollUntil(d, cond) {
		t.Fatalf("testenv: condition not met within %s: %s", d, fmt.Sprintf(format, args...))
	}
}

// pollUntil checks cond every pollInterval until it is true (returns true)
// or d elapses (returns false). cond is always checked at least once, and
// once more at the deadline.
func pollUntil(d time.Duration, cond func() bool) bool {
	if cond() {
		return true
	}
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if cond() {
				return true
			}
		case <-deadline.C:
			return cond()
		}
	}
}

func connect(t testing.TB, urls string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		t.Fatalf("testenv: connect to %s: %v", urls, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// stripScheme turns "nats://host:port" (or any "scheme://host:port") into
// "host:port"; plain "host:port" is returned unchanged.
func stripScheme(addr string) string {
	if i := strings.Index(addr, "://"); i >= 0 {
		addr = addr[i+3:]
	}
	return strings.TrimSuffix(addr, "/")
}
