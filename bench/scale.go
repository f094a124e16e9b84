package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"github.com/agentqueue/fleet/factory"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// Defaults of ScaleConfig.
const (
	DefaultScaleJobs  = 100000
	DefaultPools      = 1000
	DefaultScaleFor   = 5 * time.Second
	DefaultBurstJobs  = 5000
	defaultCacheSleep = 11 * time.Second // nats-server's message-block caches expire after 10s idle
)

// idleSettle is how long the idle coordinator runs before its heap is read.
var idleSettle = 1500 * time.Millisecond

// ScaleConfig configures the scale measurements. Zero fields take the
// defaults.
type ScaleConfig struct {
	Jobs      int           // queued jobs for the memory measurement, default 100000
	Pools     int           // pools (and factories, one connection each) of the wide dispatch case, default 1000
	Factories int           // factories of the one-pool cases, default 4
	Slots     int           // their slots, default 4
	Rate      float64       // steady offered jobs/s of each dispatch case, default 1000
	For       time.Duration // steady window of each dispatch case, default 5s
	BurstJobs int           // jobs of each dispatch burst, default 5000
	// CacheSleep is how long the memory measurement waits after the last
	// write before it reads the heap, so that the in-process server's
	// message-block caches have expired; default 11s.
	CacheSleep time.Duration
	Log        *zap.Logger
	Progress   func(format string, args ...any)
}

func (c ScaleConfig) withDefaults() (ScaleConfig, error) {
	if c.Jobs < 0 || c.Pools < 0 || c.Factories < 0 || c.Slots < 0 || c.Rate < 0 || c.For < 0 || c.BurstJobs < 0 || c.CacheSleep < 0 {
		return c, fmt.Errorf("bench: invalid ScaleConfig %+v", c)
	}
	c.Jobs = orDefault(c.Jobs, DefaultScaleJobs)
	c.Pools = orDefault(c.Pools, DefaultPools)
	c.Factories = orDefault(c.Factories, DefaultFactories)
	c.Slots = orDefault(c.Slots, DefaultSlots)
	c.Rate = orDefault(c.Rate, DefaultRate)
	c.For = orDefault(c.For, DefaultScaleFor)
	c.BurstJobs = orDefault(c.BurstJobs, DefaultBurstJobs)
	c.CacheSleep = orDefault(c.CacheSleep, defaultCacheSleep)
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	if c.Progress == nil {
		c.Progress = func(string, ...any) {}
	}
	return c, nil
}

// MemoryResult is the coordinator's memory with Jobs queued jobs that no
// pool can take (the gate holds them all).
//
// The coordinator runs in the same process as the broker and the harness,
// so its share is isolated by difference: HeapInuse (after a forced GC)
// with the coordinator running and the jobs queued, minus HeapInuse right
// after that coordinator is stopped and its connection closed (the broker
// still holds every stream and record), minus the same difference for an
// idle coordinator with no jobs (its fixed cost). The harness keeps all of
// its own state alive across both readings, so it cancels out.
type MemoryResult struct {
	Jobs          int
	IngestElapsed time.Duration // first submission -> N-th "queued" event
	IngestPerSec  float64
	// MarkSettling is how long after the last "queued" event the
	// coordinator kept writing records (flagging unroutable jobs).
	MarkSettling time.Duration
	IdleHeap     int64   // an idle coordinator's heap (running minus stopped)
	Heap         int64   // the coordinator's heap with Jobs queued (running minus stopped)
	PerJobBytes  float64 // (Heap - IdleHeap) / Jobs
	// ProcessRSSPerJob is the growth of the whole process's RSS (broker,
	// coordinator and harness) over the ingest, per job: an upper bound.
	ProcessRSSPerJob float64
	// A fresh coordinator taking over rebuilds its model from fleet_jobs.
	RebuildElapsed     time.Duration // start -> its first queue-state shows every job
	RebuildHeap        int64         // the new leader's heap (running minus stopped)
	RebuildPerJobBytes float64       // (RebuildHeap - IdleHeap) / Jobs
}

// DispatchResult is one dispatch case of the scale measurement.
type DispatchResult struct {
	Name            string
	Pools           int           // pools the jobs are spread over
	Factories       int           // factories (one NATS connection each)
	SlotsPerFactory int           //
	Backlog         int           // unroutable jobs held in the coordinator meanwhile
	StartElapsed    time.Duration // starting and registering the factories
	Steady          SteadyResult  // offered Rate for For
	Stages          Stages        // of the steady window
	BurstJobs       int
	BurstElapsed    time.Duration // first submission -> last "succeeded" event
	BurstPerSec     float64
	Stalled         string // why jobs stopped finishing, if they did (the burst is then skipped)
}

// ScaleResult is the outcome of Scale.
type ScaleResult struct {
	Memory   MemoryResult
	Dispatch []DispatchResult
	// Raw is raw JetStream in the shape of the first two dispatch cases
	// (one pool; Pools pools on as many connections): how much of a
	// growth with pools is the broker's own. RawErr says why it is
	// missing, if it is.
	Raw    []RawPoolsResult
	RawErr string
}

// heapInuse forces a collection (returning freed memory to the OS, so RSS
// readings follow) and returns HeapInuse.
func heapInuse() uint64 {
	debug.FreeOSMemory()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// Scale measures the coordinator at scale, on lazily synced fresh servers:
//
//  0. raw JetStream in the shapes of cases 1 and 2 (RawPools);
//  1. dispatch reference: one pool of Factories×Slots, no backlog;
//  2. dispatch to Pools pools: Pools factories of one slot, each with a
//     unique capability (so a pool each) on its own NATS connection, each
//     job requiring one pool's capability, round-robin, no backlog;
//  3. the same pools, jobs requiring nothing: every pool can run every job;
//  4. memory: Jobs jobs requiring a capability no factory has are ingested
//     and stay queued (unroutable); the coordinator's heap per queued job
//     (see MemoryResult); then a new coordinator takes over and rebuilds
//     its model from fleet_jobs;
//  5. and 6. cases 1 and 2 again with those Jobs jobs still held.
//
// Each dispatch case offers Rate jobs/s for For (submit -> run start, as in
// FleetSteady), then submits BurstJobs at once (throughput, first
// submission to last completion). If no cost per dispatch grows with jobs,
// pools or factories, the dispatch cases agree.
func Scale(ctx context.Context, cfg ScaleConfig) (ScaleResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return ScaleResult{}, err
	}
	var res ScaleResult
	for _, wide := range []bool{false, true} {
		pools, conns, workers := 1, cfg.Factories, cfg.Slots
		if wide {
			pools, conns, workers = cfg.Pools, cfg.Pools, 1
		}
		cfg.Progress("scale: raw JetStream, %d pools on %d connections × %d workers", pools, conns, workers)
		err := withServer(ctx, ModeLazy, func(url string) (err error) {
			var rp RawPoolsResult
			labelled(ctx, "phase", fmt.Sprintf("scale/raw-p%d", pools), func(ctx context.Context) {
				rp, err = RawPools(ctx, url, pools, conns, workers, cfg.Rate, cfg.For, cfg.BurstJobs)
			})
			if err == nil {
				res.Raw = append(res.Raw, rp)
			}
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			res.RawErr = err.Error()
			break
		}
	}
	err = withServer(ctx, ModeLazy, func(url string) error {
		r, err := startRig(ctx, url, cfg.Log)
		if err != nil {
			return err
		}
		defer r.close()
		for _, sh := range []shape{onePool, ownPools, anyPool} {
			d, err := r.labelledCase(ctx, cfg, sh, 0)
			res.Dispatch = append(res.Dispatch, d)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	err = withServer(ctx, ModeLazy, func(url string) error {
		var (
			m   MemoryResult
			r   *rig
			err error
		)
		labelled(ctx, "phase", "scale/memory", func(ctx context.Context) { m, r, err = measureMemory(ctx, url, cfg) })
		res.Memory = m
		if err != nil {
			return err
		}
		defer r.close()
		for _, sh := range []shape{onePool, ownPools} {
			d, err := r.labelledCase(ctx, cfg, sh, cfg.Jobs)
			res.Dispatch = append(res.Dispatch, d)
			if err != nil {
				return err
			}
		}
		return nil
	})
	return res, err
}

// shape is a dispatch case's pools and jobs.
type shape int

const (
	onePool  shape = iota // one pool of Factories×Slots
	ownPools              // Pools pools of one factory and slot; each job requires one pool's capability
	anyPool               // the same pools; jobs require nothing, so every pool can run every job
)

// labelledCase runs dispatchCase under the pprof label
// phase=scale/dispatch-p<pools>-b<backlog>[-any] (the coordinator keeps
// the label of the phase it was started in).
func (r *rig) labelledCase(ctx context.Context, cfg ScaleConfig, sh shape, backlog int) (d DispatchResult, err error) {
	label := fmt.Sprintf("scale/dispatch-p%d-b%d", cfg.Pools, backlog)
	switch sh {
	case onePool:
		label = fmt.Sprintf("scale/dispatch-p1-b%d", backlog)
	case anyPool:
		label += "-any"
	}
	labelled(ctx, "phase", label, func(ctx context.Context) {
		d, err = r.dispatchCase(ctx, cfg, sh, backlog)
	})
	return d, err
}

// dispatchCase measures dispatch in one shape, then stops its factories.
func (r *rig) dispatchCase(ctx context.Context, cfg ScaleConfig, sh shape, backlog int) (DispatchResult, error) {
	d := DispatchResult{Name: "1 pool", Pools: 1, Factories: cfg.Factories, SlotsPerFactory: cfg.Slots, Backlog: backlog}
	wide := sh != onePool
	if wide {
		d = DispatchResult{Name: fmt.Sprintf("%d pools", cfg.Pools), Pools: cfg.Pools, Factories: cfg.Pools, SlotsPerFactory: 1, Backlog: backlog}
	}
	if sh == anyPool {
		d.Name += ", any job anywhere"
	}
	if backlog > 0 {
		d.Name += fmt.Sprintf(", %d held", backlog)
	}
	cfg.Progress("scale: dispatch, %s: starting %d factories", d.Name, d.Factories)
	tag := fmt.Sprintf("p%d-b%d-s%d", d.Pools, backlog, sh)
	capOf := func(i int) string { return fmt.Sprintf("benchpool=p%d", i%d.Pools) }
	requires := func(i int) []string {
		if sh != ownPools {
			return nil
		}
		return []string{capOf(i)}
	}
	run := r.t.runner(RunnerNoop)
	start := time.Now()
	fs, err := startFactories(ctx, r.url, d.Factories, func(i int) factory.Config {
		c := factory.Config{ID: fmt.Sprintf("bench-%s-%d", tag, i), Slots: d.SlotsPerFactory, Runner: run}
		if wide {
			c.Caps = []string{capOf(i)}
		}
		return c
	}, r.log)
	r.facs = append(r.facs, fs...)
	defer r.dropPools(ctx)
	if err != nil {
		return d, err
	}
	d.StartElapsed = time.Since(start)
	// The warm-up reaches every pool, so the leader knows every factory
	// before the clock starts.
	warm := newJobSet(r.t.base, "warm-"+tag, max(d.Pools, 2*cfg.Factories*cfg.Slots), requires, []string{"true"})
	r.t.add(warm)
	if err := r.sub.publishAll(ctx, r.t, warm); err != nil {
		return d, err
	}
	if err := warm.waitFor(ctx, "succeeded", &warm.succeeded, 60*time.Second); err != nil {
		return d, err
	}

	cfg.Progress("scale: dispatch, %s: steady %.0f jobs/s for %v", d.Name, cfg.Rate, cfg.For)
	total := max(1, int(cfg.Rate*cfg.For.Seconds()))
	set := newJobSet(r.t.base, "steady-"+tag, total, requires, []string{"true"})
	r.t.add(set)
	d.Steady, _, d.Stalled, err = r.steady(ctx, set, cfg.Rate, cfg.For)
	d.Stages = stagesOf(set)
	if err != nil || d.Stalled != "" {
		return d, err
	}

	cfg.Progress("scale: dispatch, %s: burst of %d jobs", d.Name, cfg.BurstJobs)
	burst := newJobSet(r.t.base, "burst-"+tag, cfg.BurstJobs, requires, []string{"true"})
	r.t.add(burst)
	if err := r.sub.publishAll(ctx, r.t, burst); err != nil {
		return d, err
	}
	if err := burst.waitFor(ctx, "succeeded", &burst.succeeded, drainTimeout(cfg.BurstJobs)); err != nil {
		if !errors.Is(err, ErrStalled) {
			return d, err
		}
		d.Stalled = err.Error()
	}
	first, _ := span(burst.submitted)
	_, last := span(burst.done)
	d.BurstJobs = int(burst.succeeded.Load())
	if last > first {
		d.BurstElapsed = time.Duration(last - first)
		d.BurstPerSec = float64(d.BurstJobs) / d.BurstElapsed.Seconds()
	}
	return d, nil
}

// dropPools stops the rig's factories and deletes their pools' consumers on
// FLEET_JOBS, as an operator retiring the pools would: fleet never deletes
// a pool consumer, and nats-server allows 1,000 consumers per stream by
// default, so the next case could not register its pools otherwise.
func (r *rig) dropPools(ctx context.Context) {
	pools := map[string]bool{}
	for _, f := range r.facs {
		if f != nil {
			pools[f.Pool()] = true
		}
	}
	r.stopFactories()
	for p := range pools {
		if err := r.sub.js.DeleteConsumer(ctx, subjects.StreamJobs, subjects.PoolConsumer(p)); err != nil {
			r.log.Warn("pool consumer not deleted", zap.String("pool", p), zap.Error(err))
		}
	}
}

// waitQueueState polls the leader's total queue state until ok.
func (r *rig) waitQueueState(ctx context.Context, timeout time.Duration, ok func(job.QueueState) bool) error {
	kv, err := r.sub.js.KeyValue(ctx, subjects.BucketQueueState)
	if err != nil {
		return err
	}
	return poll(ctx, timeout, 20*time.Millisecond, func() bool {
		e, err := kv.Get(ctx, subjects.QueueStateTotal)
		if err != nil {
			return false
		}
		var qs job.QueueState
		return json.Unmarshal(e.Value(), &qs) == nil && ok(qs)
	})
}

// measureMemory runs the memory measurement on a fresh server and returns
// the rig of the coordinator that took over afterwards, still holding the
// jobs.
func measureMemory(ctx context.Context, url string, cfg ScaleConfig) (MemoryResult, *rig, error) {
	m := MemoryResult{Jobs: cfg.Jobs}

	// The fixed cost of an idle coordinator.
	cfg.Progress("scale: memory: idle coordinator")
	idle, err := startCoordinator(ctx, url, "bench-coordinator-idle", cfg.Log)
	if err != nil {
		return m, nil, err
	}
	if err := sleep(ctx, idleSettle); err != nil { // a queue-state round or so
		_ = idle.stop()
		return m, nil, err
	}
	hIdle := heapInuse()
	if err := idle.stop(); err != nil {
		return m, nil, err
	}
	hNone := heapInuse()
	m.IdleHeap = int64(hIdle) - int64(hNone)

	// Ingest the held jobs.
	r, err := startRig(ctx, url, cfg.Log)
	if err != nil {
		return m, nil, err
	}
	ok := false
	defer func() {
		if !ok {
			r.close()
		}
	}()
	held := newJobSet(r.t.base, "held", cfg.Jobs, func(int) []string { return []string{"benchhold"} }, []string{"true"})
	r.t.add(held)
	heapInuse()
	rss0, _ := ProcessRSS()
	cfg.Progress("scale: memory: ingesting %d jobs no pool can take", cfg.Jobs)
	labelled(ctx, "part", "harness", func(ctx context.Context) { err = r.sub.publishAll(ctx, r.t, held) })
	if err != nil {
		return m, nil, err
	}
	if err := held.waitFor(ctx, "queued", &held.queued, ingestTimeout(cfg.Jobs)); err != nil {
		return m, nil, err
	}
	first, _ := span(held.submitted)
	m.IngestElapsed = time.Duration(r.t.now() - first)
	m.IngestPerSec = float64(cfg.Jobs) / m.IngestElapsed.Seconds()
	settle := time.Now()
	if err := waitQuiet(ctx, r.sub.js, "KV_"+subjects.BucketJobs, time.Second, ingestTimeout(cfg.Jobs)); err != nil {
		return m, nil, err
	}
	m.MarkSettling = time.Since(settle) - time.Second
	cfg.Progress("scale: memory: ingested in %v, unroutable flags written %v later; waiting %v for broker caches to expire",
		m.IngestElapsed.Round(time.Millisecond), m.MarkSettling.Round(time.Millisecond), cfg.CacheSleep)
	if err := sleep(ctx, cfg.CacheSleep); err != nil {
		return m, nil, err
	}
	hRun := heapInuse()
	rss1, _ := ProcessRSS()
	if err := r.coord.stop(); err != nil {
		return m, nil, err
	}
	r.coord = nil
	hStopped := heapInuse()
	m.Heap = int64(hRun) - int64(hStopped)
	m.PerJobBytes = float64(m.Heap-m.IdleHeap) / float64(cfg.Jobs)
	if rss0 > 0 {
		m.ProcessRSSPerJob = (float64(rss1) - float64(rss0)) / float64(cfg.Jobs)
	}

	// A new leader rebuilds its model from the records; it has written
	// none of them, so its CAS cache is empty: this is the model alone.
	cfg.Progress("scale: memory: a new coordinator takes over %d jobs", cfg.Jobs)
	rb, err := r.takeOver(ctx, "bench-coordinator-takeover", cfg)
	if err != nil {
		return m, nil, err
	}
	m.RebuildElapsed = time.Since(rb.started)
	if err := sleep(ctx, cfg.CacheSleep); err != nil { // the snapshot read loaded broker caches
		_ = rb.stop()
		return m, nil, err
	}
	hRebuilt := heapInuse()
	if err := rb.stop(); err != nil {
		return m, nil, err
	}
	m.RebuildHeap = int64(hRebuilt) - int64(heapInuse())
	m.RebuildPerJobBytes = float64(m.RebuildHeap-m.IdleHeap) / float64(cfg.Jobs)

	// The coordinator of the dispatch cases that follow.
	if r.coord, err = r.takeOver(ctx, "bench-coordinator-2", cfg); err != nil {
		return m, nil, err
	}
	runtime.KeepAlive(held)
	ok = true
	return m, r, nil
}

// takeOver starts a coordinator and waits until, as leader, it has written
// a queue state counting every held job.
func (r *rig) takeOver(ctx context.Context, id string, cfg ScaleConfig) (*runningCoord, error) {
	rc, err := startCoordinator(ctx, r.url, id, cfg.Log)
	if err != nil {
		return nil, err
	}
	if err := r.waitQueueState(ctx, 5*time.Minute, func(qs job.QueueState) bool {
		return qs.Leader == id && qs.Queued >= cfg.Jobs
	}); err != nil {
		_ = rc.stop()
		return nil, fmt.Errorf("bench: takeover by %s: %w", id, err)
	}
	return rc, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
