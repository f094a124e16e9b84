package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/agentqueue/fleet/factory"
	"github.com/agentqueue/fleet/subjects"
)

// Defaults of FleetConfig.
const (
	DefaultFactories = 4
	DefaultSlots     = 4
)

// FleetConfig configures one end-to-end fleet measurement. Zero fields take
// the defaults (the Default* constants; Runner noop; Command `true`).
type FleetConfig struct {
	URL       string        // a fresh JetStream server; the coordinator provisions the topology
	Jobs      int           // N for drain, default 20000
	Factories int           // default 4
	Slots     int           // slots per factory, default 4
	Rate      float64       // steady offered jobs/s, default 1000
	SteadyFor time.Duration // default 10s
	Runner    RunnerKind    // default noop
	Command   []string      // the jobs' command, default ["true"]
	Log       *zap.Logger   // for the coordinator and factories; default none
}

func (c FleetConfig) withDefaults() (FleetConfig, error) {
	if c.URL == "" {
		return c, errors.New("bench: FleetConfig.URL is required")
	}
	if c.Jobs < 0 || c.Factories < 0 || c.Slots < 0 || c.Rate < 0 || c.SteadyFor < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		return c, fmt.Errorf("bench: invalid FleetConfig %+v", c)
	}
	c.Jobs = orDefault(c.Jobs, DefaultJobs)
	c.Factories = orDefault(c.Factories, DefaultFactories)
	c.Slots = orDefault(c.Slots, DefaultSlots)
	c.Rate = orDefault(c.Rate, DefaultRate)
	c.SteadyFor = orDefault(c.SteadyFor, DefaultSteadyFor)
	c.Runner = orDefault(c.Runner, RunnerNoop)
	if c.Runner != RunnerNoop && c.Runner != RunnerExec {
		return c, fmt.Errorf("bench: unknown runner %q", c.Runner)
	}
	if len(c.Command) == 0 {
		c.Command = []string{"true"}
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	return c, nil
}

func orDefault[T comparable](v, d T) T {
	var zero T
	if v == zero {
		return d
	}
	return v
}

// FleetDrainResult is a fleet drain: Jobs submissions were ingested into a
// coordinator with no factory, then Factories×Slots slots drained them.
type FleetDrainResult struct {
	Runner             RunnerKind
	Jobs               int
	Factories, Slots   int
	IngestElapsed      time.Duration // first submission -> N-th "queued" event
	IngestPerSec       float64
	Done               int           // jobs succeeded (Jobs unless Stalled)
	Elapsed            time.Duration // factories started -> last (N-th) "succeeded" event
	PerSec             float64       // Done / Elapsed
	CPU                time.Duration // the process's CPU time from the factories' start to the N-th "succeeded" event
	IngestWrites       Writes        // the ingest phase (includes the unroutable marks of jobs no factory could take yet)
	DrainWrites        Writes        // the drain phase
	UnroutableSettling time.Duration
	// Stalled says why jobs stopped finishing, if they did; the figures
	// then cover the jobs done before the stall.
	Stalled string
}

// FleetSteadyResult is a steady-rate fleet measurement. RunStart is submit
// -> the runner is called on a factory; Completed is submit -> the job's
// "succeeded" event reaches an observer following FLEET_EVENTS.
type FleetSteadyResult struct {
	SteadyResult
	Runner           RunnerKind
	Factories, Slots int
	Stages           Stages
	Throughput       float64 // Done / (last completion - first submission)
	Writes           Writes  // every write of the window, per finished job
	Stalled          string  // why jobs stopped finishing, if they did
}

// Stages splits the steady latency by where the job was, as seen by the
// observer (event arrival times) and the runner:
//
//	Ingest: submit -> its creation event ("" -> queued) arrives
//	Gate:   creation event -> dispatched event (the leader's gate and dispatch)
//	Claim:  dispatched event -> the runner starts (pool message, pull, claim)
//	Finish: the runner starts -> succeeded event (complete call, event)
//
// Each event arrival includes the event's own publish and delivery, so the
// stages are approximate; they add up to Completed.
type Stages struct {
	Ingest, Gate, Claim, Finish Latency
}

func stagesOf(s *jobSet) Stages {
	return Stages{
		Ingest: Summarize(latencies(s.submitted, s.queuedAt)),
		Gate:   Summarize(latencies(s.queuedAt, s.dispatchedAt)),
		Claim:  Summarize(latencies(s.dispatchedAt, s.started)),
		Finish: Summarize(latencies(s.started, s.done)),
	}
}

// rig is a coordinator with a submitter and an observer on a server.
type rig struct {
	url   string
	log   *zap.Logger
	t     *tracker
	coord *runningCoord
	sub   *submitter
	obs   *observer
	facs  []*runningFactory
}

func startRig(ctx context.Context, url string, log *zap.Logger) (_ *rig, err error) {
	r := &rig{url: url, log: log, t: newTracker()}
	r.t.diag = r.diagnose
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if r.coord, err = startCoordinator(ctx, url, "bench-coordinator", log); err != nil {
		return nil, err
	}
	if r.sub, err = newSubmitter(ctx, url); err != nil {
		return nil, err
	}
	if r.obs, err = startObserver(ctx, url, r.t); err != nil {
		return nil, err
	}
	return r, nil
}

// startFactories starts n factories of slots slots in one pool (the
// default, derived from os and arch), running jobs with kind.
func (r *rig) startFactories(ctx context.Context, n, slots int, kind RunnerKind) error {
	run := r.t.runner(kind)
	fs, err := startFactories(ctx, r.url, n, func(int) factory.Config {
		return factory.Config{Slots: slots, Runner: run}
	}, r.log)
	r.facs = append(r.facs, fs...)
	return err
}

func (r *rig) stopFactories() {
	stopFactories(r.facs)
	r.facs = nil
}

func (r *rig) close() {
	r.stopFactories()
	if r.obs != nil {
		r.obs.close()
	}
	if r.coord != nil {
		if err := r.coord.stop(); err != nil {
			r.log.Warn("coordinator stopped with an error", zap.Error(err))
		}
	}
	if r.sub != nil {
		r.sub.close()
	}
}

// diagnose describes the fleet's state: the leader's queue-state and the
// message counts of its streams.
func (r *rig) diagnose() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var b strings.Builder
	if kv, err := r.sub.js.KeyValue(ctx, subjects.BucketQueueState); err == nil {
		if e, err := kv.Get(ctx, subjects.QueueStateTotal); err == nil {
			fmt.Fprintf(&b, "queue-state %s", e.Value())
		}
	}
	for _, n := range []string{subjects.StreamIngest, subjects.StreamJobs, subjects.StreamEvents} {
		if s, err := r.sub.js.Stream(ctx, n); err == nil {
			st := s.CachedInfo().State
			fmt.Fprintf(&b, "; %s %d msgs, last seq %d", n, st.Msgs, st.LastSeq)
		}
	}
	return b.String()
}

func (r *rig) writes(ctx context.Context) (map[string]uint64, error) {
	return sampleWrites(ctx, r.sub.js)
}

// Timeouts of fleet phases, generous failure bounds rather than targets.
func ingestTimeout(n int) time.Duration { return 60*time.Second + time.Duration(n)*5*time.Millisecond }
func drainTimeout(n int) time.Duration  { return 60*time.Second + time.Duration(n)*10*time.Millisecond }

// FleetDrain measures how fast the fleet drains a queued backlog.
//
// A coordinator runs alone (gate on, default settings) while N jobs are
// submitted the way a tracker does (async JetStream publish on
// fleet.ingest.<product> with a Nats-Msg-Id); with no factory they all stay
// queued. Once the N-th "queued" event has been seen and the coordinator has
// stopped writing job records (it flags jobs no live pool serves as
// unroutable), the clock starts and Factories factories of Slots slots are
// started; it stops at the arrival of the N-th "succeeded" event.
func FleetDrain(ctx context.Context, cfg FleetConfig) (FleetDrainResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return FleetDrainResult{}, err
	}
	r, err := startRig(ctx, cfg.URL, cfg.Log)
	if err != nil {
		return FleetDrainResult{}, err
	}
	defer r.close()
	res := FleetDrainResult{Runner: cfg.Runner, Jobs: cfg.Jobs, Factories: cfg.Factories, Slots: cfg.Slots}

	set := newJobSet(r.t.base, "drain", cfg.Jobs, nil, cfg.Command)
	r.t.add(set)
	w0, err := r.writes(ctx)
	if err != nil {
		return res, err
	}
	var ingestErr error
	labelled(ctx, "part", "harness", func(ctx context.Context) {
		ingestErr = r.sub.publishAll(ctx, r.t, set)
	})
	if ingestErr != nil {
		return res, ingestErr
	}
	if err := set.waitFor(ctx, "queued", &set.queued, ingestTimeout(cfg.Jobs)); err != nil {
		return res, err
	}
	first, _ := span(set.submitted)
	res.IngestElapsed = time.Duration(r.t.now() - first)
	res.IngestPerSec = float64(cfg.Jobs) / res.IngestElapsed.Seconds()
	settleStart := time.Now()
	if err := waitQuiet(ctx, r.sub.js, "KV_"+subjects.BucketJobs, 500*time.Millisecond, ingestTimeout(cfg.Jobs)); err != nil {
		return res, err
	}
	res.UnroutableSettling = time.Since(settleStart)
	w1, err := r.writes(ctx)
	if err != nil {
		return res, err
	}
	res.IngestWrites = diffWrites(w0, w1, cfg.Jobs)

	start, cpu0 := r.t.now(), processCPU()
	if err := r.startFactories(ctx, cfg.Factories, cfg.Slots, cfg.Runner); err != nil {
		return res, err
	}
	if err := set.waitFor(ctx, "succeeded", &set.succeeded, drainTimeout(cfg.Jobs)); err != nil {
		if !errors.Is(err, ErrStalled) {
			return res, err
		}
		res.Stalled = err.Error()
	}
	res.CPU = processCPU() - cpu0
	res.Done = int(set.succeeded.Load())
	if _, end := span(set.done); end > start {
		res.Elapsed = time.Duration(end - start)
		res.PerSec = float64(res.Done) / res.Elapsed.Seconds()
	}
	w2, err := r.writes(ctx)
	if err != nil {
		return res, err
	}
	res.DrainWrites = diffWrites(w1, w2, res.Done)
	return res, nil
}

// FleetSteady measures latency at a fixed offered rate.
//
// A coordinator and Factories factories run; 2×Factories×Slots warm-up jobs
// go through first. Then round(Rate×SteadyFor) jobs are submitted over
// SteadyFor, paced by a 1ms ticker like RawSteady. For each job RunStart is
// submit -> the runner is called on a factory, and Completed is submit ->
// arrival of its "succeeded" event at an observer following FLEET_EVENTS.
// Writes are counted over the whole window and divided by the jobs done.
func FleetSteady(ctx context.Context, cfg FleetConfig) (FleetSteadyResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return FleetSteadyResult{}, err
	}
	total, err := steadyJobs(cfg.Rate, cfg.SteadyFor)
	if err != nil {
		return FleetSteadyResult{}, err
	}
	r, err := startRig(ctx, cfg.URL, cfg.Log)
	if err != nil {
		return FleetSteadyResult{}, err
	}
	defer r.close()
	res := FleetSteadyResult{Runner: cfg.Runner, Factories: cfg.Factories, Slots: cfg.Slots}
	if err := r.startFactories(ctx, cfg.Factories, cfg.Slots, cfg.Runner); err != nil {
		return res, err
	}
	if err := r.warmUp(ctx, 2*cfg.Factories*cfg.Slots, cfg.Command); err != nil {
		return res, err
	}
	set := newJobSet(r.t.base, "steady", total, nil, cfg.Command)
	r.t.add(set)
	sr, w, stalled, err := r.steady(ctx, set, cfg.Rate, cfg.SteadyFor)
	if err != nil {
		return res, err
	}
	res.SteadyResult, res.Writes, res.Stalled = sr, w, stalled
	res.Stages = stagesOf(set)
	first, _ := span(set.submitted)
	if _, last := span(set.done); last > first {
		res.Throughput = float64(sr.Done) / time.Duration(last-first).Seconds()
	}
	return res, nil
}

// warmUp runs n jobs through the fleet and waits for all of them.
func (r *rig) warmUp(ctx context.Context, n int, command []string) error {
	set := newJobSet(r.t.base, "warm", n, nil, command)
	r.t.add(set)
	if err := r.sub.publishAll(ctx, r.t, set); err != nil {
		return err
	}
	return set.waitFor(ctx, "succeeded", &set.succeeded, 60*time.Second)
}

// steady offers set at rate over d and waits for every job to succeed. If
// jobs stop finishing, stalled says why and the figures cover those done.
func (r *rig) steady(ctx context.Context, set *jobSet, rate float64, d time.Duration) (_ SteadyResult, _ Writes, stalled string, _ error) {
	w0, err := r.writes(ctx)
	if err != nil {
		return SteadyResult{}, Writes{}, "", err
	}
	var (
		sent     int
		duration time.Duration
		pubErr   error
	)
	labelled(ctx, "part", "harness", func(ctx context.Context) {
		sent, duration, pubErr = paced(ctx, rate, set.len(), func(i int) error { return r.sub.publish(ctx, r.t, set, i) })
		if pubErr == nil {
			pubErr = r.sub.settle(ctx)
		}
	})
	if pubErr != nil {
		return SteadyResult{}, Writes{}, "", pubErr
	}
	if err := set.waitFor(ctx, "succeeded", &set.succeeded, 60*time.Second+2*d); err != nil {
		if !errors.Is(err, ErrStalled) {
			return SteadyResult{}, Writes{}, "", err
		}
		stalled = err.Error()
	}
	w1, err := r.writes(ctx)
	if err != nil {
		return SteadyResult{}, Writes{}, "", err
	}
	done := int(set.succeeded.Load())
	return SteadyResult{
		Offered:   float64(sent) / duration.Seconds(),
		Duration:  duration,
		Sent:      sent,
		Done:      done,
		RunStart:  Summarize(latencies(set.submitted, set.started)),
		Completed: Summarize(latencies(set.submitted, set.done)),
	}, diffWrites(w0, w1, done), stalled, nil
}

// paced calls send(i) for i in [0, total) at rate per second: a 1ms ticker
// tops the count up to floor(elapsed×rate) on each tick. It returns how many
// were sent and the length of the sending window.
func paced(ctx context.Context, rate float64, total int, send func(i int) error) (int, time.Duration, error) {
	ticker := time.NewTicker(steadyTick)
	defer ticker.Stop()
	t0 := time.Now()
	sent := 0
	for sent < total {
		select {
		case <-ctx.Done():
			return sent, time.Since(t0), ctx.Err()
		case <-ticker.C:
		}
		due := min(total, int(time.Since(t0).Seconds()*rate))
		for ; sent < due; sent++ {
			if err := send(sent); err != nil {
				return sent, time.Since(t0), err
			}
		}
	}
	return sent, time.Since(t0), nil
}
