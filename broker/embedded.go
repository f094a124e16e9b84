// Package broker connects fleet to NATS JetStream: it starts an embedded
// server or dials an external one, provisions every stream, consumer and
// bucket of the topology, and offers a typed, compare-and-set store of job
// records.
package broker

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures an in-process nats-server with JetStream.
type EmbeddedConfig struct {
	StoreDir   string // required: where JetStream keeps its data
	Host       string // default 127.0.0.1
	Port       int    // client port; 0 = 4222, -1 = random
	ServerName string // default derived by the server
	// LazySync turns off fsync-before-ack. Faster, but an OS crash or power
	// loss can drop up to two minutes of acknowledged writes (nats-server's
	// default sync_interval). Off by default: fleet syncs every write.
	LazySync bool
	// MonitorPort exposes nats-server's HTTP monitoring (/varz, /jsz) read by
	// `nats` tooling and KEDA's JetStream scaler; 0 = off, -1 = random.
	MonitorPort int

	// Cluster settings; all empty for a single node.
	ClusterName string
	ClusterHost string
	ClusterPort int      // -1 = random
	Routes      []string // nats-route://host:port of every node (self included is fine)

	Debug bool // log the server's own output to stderr
}

// Embedded is a running in-process broker.
type Embedded struct {
	*server.Server
}

// StartEmbedded starts the server and waits until it accepts clients and
// JetStream is ready.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("broker: embedded server needs a store directory")
	}
	opts := &server.Options{
		ServerName: cfg.ServerName,
		Host:       cfg.Host,
		Port:       cfg.Port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		// Job payloads are bounded well below this; it only caps a message.
		MaxPayload: 8 << 20,
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = 4222
	}
	if !cfg.LazySync {
		opts.SyncAlways = true
		opts.SyncInterval = 2 * time.Minute // as nats-server's own parser sets it beside sync: always
	}
	if cfg.MonitorPort != 0 {
		opts.HTTPHost = opts.Host
		opts.HTTPPort = cfg.MonitorPort
	}
	if cfg.ClusterPort != 0 || len(cfg.Routes) > 0 {
		opts.Cluster.Name = cfg.ClusterName
		if opts.Cluster.Name == "" {
			opts.Cluster.Name = "fleet"
		}
		opts.Cluster.Host = cfg.ClusterHost
		if opts.Cluster.Host == "" {
			opts.Cluster.Host = opts.Host
		}
		opts.Cluster.Port = cfg.ClusterPort
		for _, r := range cfg.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("broker: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("broker: embedded server: %w", err)
	}
	if cfg.Debug {
		s.ConfigureLogger()
	}
	go s.Start() // the server owns its goroutines; Shutdown stops them
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("broker: embedded server on %s:%d not ready after 30s (port in use?)", opts.Host, opts.Port)
	}
	return &Embedded{Server: s}, nil
}

// URL is the client URL of the server.
func (e *Embedded) URL() string { return e.ClientURL() }

// MonitorURL is the monitoring endpoint's base URL, or "" when off.
func (e *Embedded) MonitorURL() string {
	a := e.MonitorAddr()
	if a == nil {
		return ""
	}
	return "http://" + net.JoinHostPort(a.IP.String(), strconv.Itoa(a.Port))
}

// Stop shuts the server down and waits for it.
func (e *Embedded) Stop() {
	e.Shutdown()
	e.WaitForShutdown()
}
