// Package factory is the worker side of fleet: it registers a factory's
// pool, capabilities and slots, pulls jobs from its pool's consumer, claims
// each delivery for an epoch (the fencing token), runs it while keeping the
// lease, and reports the outcome before acknowledging the message.
package factory

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// Config configures a factory. Zero values mean the defaults.
type Config struct {
	ID    string   // default <host>-<random>
	Caps  []string // capability labels; os=<GOOS> and arch=<GOARCH> are added unless set
	Pool  string   // default derived from the capabilities
	Slots int      // jobs run at once; default 1
	// Grace is how long running jobs may finish after a stop is requested
	// before they are killed and given back for retry; default 30s.
	Grace     time.Duration
	Heartbeat time.Duration // registration refresh; default 5s
	FetchWait time.Duration // long-poll of one pull request; default 5s
	Runner    Runner        // default ExecRunner{}
}

func (c Config) withDefaults() (Config, error) {
	caps, err := job.ParseLabels(c.Caps)
	if err != nil {
		return c, fmt.Errorf("factory: %w", err)
	}
	has := func(k string) bool {
		for _, l := range caps {
			if strings.HasPrefix(l, k+"=") {
				return true
			}
		}
		return false
	}
	extra := []string(caps)
	if !has("os") {
		extra = append(extra, "os="+runtime.GOOS)
	}
	if !has("arch") {
		extra = append(extra, "arch="+runtime.GOARCH)
	}
	if c.Caps, err = job.ParseLabels(extra); err != nil {
		return c, fmt.Errorf("factory: %w", err)
	}
	if c.Pool == "" {
		c.Pool = job.PoolName(c.Caps)
	}
	if err := subjects.CheckToken("pool", c.Pool); err != nil {
		return c, err
	}
	if c.ID == "" {
		h, _ := os.Hostname()
		if !subjects.ValidToken(h) || len(h) > 40 {
			h = "factory"
		}
		c.ID = h + "-" + strings.ToLower(nuid.Next()[14:])
	}
	if err := subjects.CheckToken("factory id", c.ID); err != nil {
		return c, err
	}
	if c.Slots <= 0 {
		c.Slots = 1
	}
	if c.Grace <= 0 {
		c.Grace = 30 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 5 * time.Second
	}
	if c.FetchWait <= 0 {
		c.FetchWait = 5 * time.Second
	}
	if c.Runner == nil {
		c.Runner = ExecRunner{}
	}
	return c, nil
}

// Factory pulls and runs jobs of one pool.
type Factory struct {
	cfg Config
	b   *broker.Broker
	log *zap.Logger

	mu       sync.Mutex
	busy     int
	renew    time.Duration
	leaseTTL time.Duration
	ready    chan struct{}

	regMu   sync.Mutex // serialises re-registration
	lastReg time.Time
}

// New builds a factory on b. It does no I/O until Run.
func New(b *broker.Broker, cfg Config, log *zap.Logger) (*Factory, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Factory{cfg: cfg, b: b, ready: make(chan struct{}),
		log: log.Named("factory").With(zap.String("factory", cfg.ID), zap.String("pool", cfg.Pool))}, nil
}

// ID, Pool and Caps say who the factory is.
func (f *Factory) ID() string             { return f.cfg.ID }
func (f *Factory) Pool() string           { return f.cfg.Pool }
func (f *Factory) Caps() job.Labels       { return f.cfg.Caps }
func (f *Factory) Ready() <-chan struct{} { return f.ready }

var (
	errFenced    = errors.New("lease lost: a newer epoch holds the job")
	errLeaseLost = errors.New("lease lapsed: could not renew in time")
	errShutdown  = errors.New("factory shutting down")
	errConnGone  = errors.New("connection to NATS closed")
)

// Run registers and works until ctx ends, then stops in two phases: it
// stops fetching, lets running jobs finish for Grace, then kills the rest and
// gives them back for retry. It returns once every job goroutine is done.
func (f *Factory) Run(ctx context.Context) error {
	reg, err := f.register(ctx)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.renew, f.leaseTTL = reg.Renew, reg.LeaseTTL
	f.mu.Unlock()
	cons, err := f.b.JS.Consumer(ctx, reg.Stream, reg.Consumer)
	if err != nil {
		return fmt.Errorf("factory: bind to %s: %w", reg.Consumer, err)
	}
	// hard outlives ctx by the grace period; cancelling it kills running jobs.
	hard, kill := context.WithCancelCause(context.Background())
	defer kill(nil)

	// Each slot's loop runs its job inline, so waiting for the loops is
	// waiting for the jobs.
	var loops sync.WaitGroup
	for range f.cfg.Slots {
		loops.Go(func() { f.pull(ctx, hard, cons) })
	}
	loops.Go(func() { f.heartbeat(ctx, kill) })
	close(f.ready)
	f.log.Info("factory running", zap.Strings("caps", f.cfg.Caps), zap.Int("slots", f.cfg.Slots))

	<-ctx.Done() // no new job starts after this; the grace period starts now
	finished := make(chan struct{})
	go func() { loops.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-hard.Done():
		<-finished
	case <-time.After(f.cfg.Grace):
		f.log.Warn("grace period over: stopping running jobs", zap.Duration("grace", f.cfg.Grace))
		kill(errShutdown)
		<-finished
	}
	if !f.b.NC.IsClosed() {
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var r job.RegisterReply
		_ = f.b.Call(dctx, subjects.VerbDeregister, f.info(), &r)
		cancel()
	}
	f.log.Info("factory stopped")
	return nil
}

func (f *Factory) info() job.FactoryInfo {
	f.mu.Lock()
	busy := f.busy
	f.mu.Unlock()
	host, _ := os.Hostname()
	return job.FactoryInfo{ID: f.cfg.ID, Pool: f.cfg.Pool, Caps: f.cfg.Caps, Slots: f.cfg.Slots, Busy: busy, Host: host}
}

// register announces the factory, retrying until a coordinator answers.
func (f *Factory) register(ctx context.Context) (job.RegisterReply, error) {
	warned := false
	for {
		var r job.RegisterReply
		err := f.b.Call(ctx, subjects.VerbRegister, f.info(), &r)
		if err == nil {
			err = r.Err.AsError()
		}
		if err == nil {
			return r, nil
		}
		if !errors.Is(err, job.ErrNoReply) {
			return r, fmt.Errorf("factory: register: %w", err)
		}
		if !warned {
			f.log.Warn("waiting for a coordinator to register with", zap.Error(err))
			warned = true
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// heartbeat refreshes the registration; it ends the factory's jobs if the
// connection is closed for good (nothing can be reported any more).
func (f *Factory) heartbeat(ctx context.Context, kill context.CancelCauseFunc) {
	t := time.NewTicker(f.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if f.b.NC.IsClosed() {
			kill(errConnGone)
			return
		}
		var r job.RegisterReply
		if err := f.b.Call(ctx, subjects.VerbHeartbeat, f.info(), &r); err != nil && ctx.Err() == nil {
			f.log.Debug("heartbeat", zap.Error(err))
		}
	}
}

// pull fetches one message at a time for one slot and runs it.
func (f *Factory) pull(ctx, hard context.Context, cons jetstream.Consumer) {
	for ctx.Err() == nil && hard.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, f.cfg.FetchWait)
		batch, err := cons.Fetch(1, jetstream.FetchContext(fctx))
		if err == nil {
			for msg := range batch.Messages() {
				f.setBusy(+1)
				f.handle(hard, msg)
				f.setBusy(-1)
			}
			err = batch.Error()
		}
		cancel()
		if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || ctx.Err() != nil {
			continue
		}
		if f.b.NC.IsClosed() {
			return
		}
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
			errors.Is(err, nats.ErrNoResponders) {
			f.reregister(ctx, err)
		} else {
			f.log.Debug("fetch", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// reregister registers again when the pool's consumer is gone (a broker
// restart loses a consumer whose state is in memory; an operator may delete
// one): registering creates it. The slots share one attempt a second.
func (f *Factory) reregister(ctx context.Context, cause error) {
	f.regMu.Lock()
	defer f.regMu.Unlock()
	if time.Since(f.lastReg) < time.Second {
		return
	}
	f.lastReg = time.Now()
	var r job.RegisterReply
	err := f.b.Call(ctx, subjects.VerbRegister, f.info(), &r)
	if err == nil {
		err = r.Err.AsError()
	}
	if err != nil {
		f.log.Warn("pool consumer gone; registering again failed, will retry", zap.NamedError("cause", cause), zap.Error(err))
		return
	}
	f.log.Info("pool consumer gone; registered again", zap.NamedError("cause", cause))
}

func (f *Factory) setBusy(d int) {
	f.mu.Lock()
	f.busy += d
	f.mu.Unlock()
}
