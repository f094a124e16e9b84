// Package coordinator is fleet's control plane: it validates submissions
// into job records, serves the control API factories call (claim, renew,
// complete, …), and — on the elected leader — runs the admission gate and
// router, retries, and the queue-state fold. Every state change is a
// compare-and-set on the job record followed by an event on FLEET_EVENTS.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// Config configures a coordinator. Zero values mean the defaults below.
type Config struct {
	ID string // default host-<random>
	// GateOff turns the admission gate off: jobs are released to a pool as
	// soon as one can serve them and the pool queues hold the backlog (FIFO).
	GateOff bool
	// Prefetch is how many jobs beyond its free slots the gate lets wait in
	// a pool's queue, so a factory finds its next job without a round trip.
	Prefetch   int           // default 1 per pool; negative means 0
	LeaseTTL   time.Duration // ack wait of pool consumers and lease of a claim; default 90s
	RenewEvery time.Duration // how often factories renew; default 30s
	// PoolStateOnDisk keeps new pool consumers' state in files rather than
	// in memory (see broker.PoolConsumerConfig for the trade).
	PoolStateOnDisk bool
	FactoryTTL      time.Duration // a factory unseen this long is gone; default LeaseTTL
	// ReRouteAfter is how long a dispatched job waits in a pool with no
	// live factory before it is routed again; default 2×FactoryTTL.
	ReRouteAfter time.Duration
	// ReconcileEvery is how often the reconciler looks; default LeaseTTL/4 (≥ 250ms).
	ReconcileEvery time.Duration
	Backoff        job.Backoff // retry backoff; default job.DefaultBackoff
	HTTPAddr       string      // "" = no HTTP server
	// QueueStateEvery is how often the leader writes fleet_queue_state.
	QueueStateEvery time.Duration // default 1s
	LeaderTTL       time.Duration // leadership lapses this long after the leader stops renewing; default 5s
	Topology        broker.Topology
	Workers         int // concurrent control/ingest handlers; default 64
}

// Defaults.
const (
	DefaultLeaseTTL   = 90 * time.Second
	DefaultRenewEvery = 30 * time.Second
)

func (c Config) withDefaults() (Config, error) {
	if c.ID == "" {
		h, _ := os.Hostname()
		if !subjects.ValidToken(h) || len(h) > 40 {
			h = "coordinator"
		}
		c.ID = h + "-" + nuid.Next()[16:]
	}
	if err := subjects.CheckToken("coordinator id", c.ID); err != nil {
		return c, err
	}
	switch {
	case c.Prefetch == 0:
		c.Prefetch = 1
	case c.Prefetch < 0:
		c.Prefetch = 0
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.RenewEvery <= 0 {
		c.RenewEvery = min(DefaultRenewEvery, c.LeaseTTL/3)
	}
	if c.RenewEvery >= c.LeaseTTL {
		return c, fmt.Errorf("coordinator: renew interval %v must be well under the lease %v", c.RenewEvery, c.LeaseTTL)
	}
	if c.FactoryTTL <= 0 {
		c.FactoryTTL = c.LeaseTTL
	}
	if c.ReRouteAfter <= 0 {
		c.ReRouteAfter = 2 * c.FactoryTTL
	}
	if c.ReconcileEvery <= 0 {
		c.ReconcileEvery = max(c.LeaseTTL/4, 250*time.Millisecond)
	}
	if c.QueueStateEvery <= 0 {
		c.QueueStateEvery = time.Second
	}
	if c.LeaderTTL <= 0 {
		c.LeaderTTL = 5 * time.Second
	}
	if c.Workers <= 0 {
		c.Workers = 64
	}
	return c, nil
}

// Coordinator is one coordinator process's worth of control plane.
type Coordinator struct {
	cfg       Config
	b         *broker.Broker
	log       *zap.Logger
	jobs      *broker.Jobs
	facs      jetstream.KeyValue
	qs        jetstream.KeyValue
	cfgKV     jetstream.KeyValue
	jobStream jetstream.Stream
	met       *metrics

	sem chan struct{} // bounds concurrent handlers

	mu       sync.Mutex
	local    chan job.Event  // this process's leader, if it leads
	pools    map[string]bool // pool consumers this process has ensured
	isLeader bool
	httpLn   net.Listener
	ready    chan struct{}
}

// New builds a coordinator on b. It does no I/O until Run.
func New(b *broker.Broker, cfg Config, log *zap.Logger) (*Coordinator, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Coordinator{
		cfg: cfg, b: b, log: log.Named("coordinator").With(zap.String("coordinator", cfg.ID)),
		met: newMetrics(), sem: make(chan struct{}, cfg.Workers),
		pools: map[string]bool{}, ready: make(chan struct{}),
	}, nil
}

// ID is the coordinator's id.
func (c *Coordinator) ID() string { return c.cfg.ID }

// Ready is closed once the coordinator serves ingest and control calls.
func (c *Coordinator) Ready() <-chan struct{} { return c.ready }

// HTTPAddr is the bound HTTP address once Ready, or "".
func (c *Coordinator) HTTPAddr() string {
	if c.httpLn == nil {
		return ""
	}
	return c.httpLn.Addr().String()
}

// Run provisions the topology, then serves until ctx ends. It returns after
// everything it started has stopped: first ingest and the control API stop
// taking work, then leadership is given up, then HTTP closes.
func (c *Coordinator) Run(ctx context.Context) error {
	if err := c.b.Provision(ctx, c.cfg.Topology); err != nil {
		return err
	}
	var err error
	if c.jobs, err = c.b.OpenJobs(ctx); err != nil {
		return err
	}
	if c.facs, err = c.b.KV(ctx, subjects.BucketFactories); err != nil {
		return err
	}
	if c.qs, err = c.b.KV(ctx, subjects.BucketQueueState); err != nil {
		return err
	}
	if c.cfgKV, err = c.b.KV(ctx, subjects.BucketConfig); err != nil {
		return err
	}
	if c.jobStream, err = c.b.JS.Stream(ctx, subjects.StreamJobs); err != nil {
		return fmt.Errorf("coordinator: %s: %w", subjects.StreamJobs, err)
	}
	var srv *http.Server
	if c.cfg.HTTPAddr != "" {
		if c.httpLn, err = net.Listen("tcp", c.cfg.HTTPAddr); err != nil {
			return fmt.Errorf("coordinator: listen on %s: %w (set --http to a free address)", c.cfg.HTTPAddr, err)
		}
		srv = &http.Server{Handler: c.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
	}

	ctl, err := c.serveControl()
	if err != nil {
		return err
	}
	ingest, err := c.startIngest(ctx)
	if err != nil {
		_ = ctl.Unsubscribe()
		return err
	}

	var wg sync.WaitGroup
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	if srv != nil {
		wg.Go(func() {
			if err := srv.Serve(c.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				c.log.Error("http server stopped", zap.Error(err))
			}
		})
	}
	wg.Go(func() { c.elect(runCtx) })
	close(c.ready)
	c.log.Info("coordinator serving", zap.String("http", c.HTTPAddr()))

	<-ctx.Done()
	// Stop taking work, let handlers in flight finish, then stop the leader.
	ingest.Stop()
	_ = ctl.Drain()
	for range cap(c.sem) {
		c.sem <- struct{}{}
	}
	stop()
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = srv.Shutdown(sctx)
		cancel()
	}
	wg.Wait()
	c.log.Info("coordinator stopped")
	return nil
}

// spawn runs fn on a bounded handler goroutine.
func (c *Coordinator) spawn(fn func()) {
	c.sem <- struct{}{}
	go func() {
		defer func() { <-c.sem }()
		fn()
	}()
}

// commit counts a transition this coordinator wrote at rev and hands it to
// this process's leader, if it is one, at once. Its event and, for a job
// that died, its dead letter are the relay's to write (relay.go).
func (c *Coordinator) commit(prev, next job.Record, rev uint64) {
	if next.State != prev.State {
		c.met.transition(next.State)
	}
	c.mu.Lock()
	local := c.local
	c.mu.Unlock()
	if local != nil {
		select {
		case local <- job.EventFor(prev, next, rev):
		default: // the leader is busy; its read of fleet_jobs brings it
		}
	}
}
