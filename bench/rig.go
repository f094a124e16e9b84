package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/coordinator"
	"github.com/agentqueue/fleet/factory"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// This file holds the in-process fleet the end-to-end measurements drive: a
// fresh embedded broker, a real coordinator and real factories, each on its
// own NATS connection, plus a submitter that publishes the way a tracker
// does and an observer that follows FLEET_EVENTS.
//
// Every piece is started under a pprof label part=server|coordinator|
// factory|harness (goroutines inherit the labels of the goroutine that
// starts them), so a CPU profile of `fleet bench --cpuprofile` can be split
// by component with `go tool pprof -tagfocus part=coordinator`.

// Mode is a broker sync mode.
type Mode string

// Sync modes.
const (
	// ModeLazy is nats-server's default: writes are fsynced every 2 minutes.
	ModeLazy Mode = "lazy"
	// ModeAlways is sync_interval: always, fleet's embedded default: every
	// write is fsynced before it is acknowledged.
	ModeAlways Mode = "always"
)

// ParseModes parses a comma-separated list of modes.
func ParseModes(s string) ([]Mode, error) {
	var out []Mode
	for _, f := range strings.Split(s, ",") {
		switch m := Mode(strings.TrimSpace(strings.ToLower(f))); m {
		case ModeLazy, ModeAlways:
			out = append(out, m)
		case "":
		default:
			return nil, fmt.Errorf("bench: unknown sync mode %q (use lazy, always)", f)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("bench: no sync mode given (use lazy, always)")
	}
	return out, nil
}

// RunnerKind says how factories run jobs.
type RunnerKind string

// Runner kinds.
const (
	// RunnerNoop is an in-process factory.RunnerFunc that returns success
	// at once: what is measured is dispatch, not process start-up.
	RunnerNoop RunnerKind = "noop"
	// RunnerExec is the real factory.ExecRunner running the job's command
	// (`true`): the cost a user really sees.
	RunnerExec RunnerKind = "exec"
)

// labelled runs fn with the pprof label key=value added to those of ctx.
func labelled(ctx context.Context, key, value string, fn func(context.Context)) {
	pprof.Do(ctx, pprof.Labels(key, value), fn)
}

// benchServer is a fresh embedded broker in its own temporary directory.
type benchServer struct {
	emb *broker.Embedded
	dir string
}

func startFleetServer(ctx context.Context, mode Mode) (*benchServer, error) {
	dir, err := os.MkdirTemp("", "fleet-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: temp dir: %w", err)
	}
	var emb *broker.Embedded
	labelled(ctx, "part", "server", func(context.Context) {
		emb, err = broker.StartEmbedded(broker.EmbeddedConfig{StoreDir: dir, Port: -1, LazySync: mode == ModeLazy})
	})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return &benchServer{emb: emb, dir: dir}, nil
}

func (s *benchServer) URL() string { return s.emb.URL() }

func (s *benchServer) stop() {
	s.emb.Stop()
	_ = os.RemoveAll(s.dir)
}

// withServer runs fn against a fresh server in mode, torn down afterwards.
func withServer(ctx context.Context, mode Mode, fn func(url string) error) error {
	s, err := startFleetServer(ctx, mode)
	if err != nil {
		return err
	}
	defer s.stop()
	return fn(s.URL())
}

// runningCoord is a coordinator on its own connection.
type runningCoord struct {
	*coordinator.Coordinator
	b       *broker.Broker
	cancel  context.CancelFunc
	done    chan error
	started time.Time
}

// startCoordinator starts a coordinator with default settings (gate on,
// prefetch 1, lease 90s, queue-state every 1s) and waits until it leads.
func startCoordinator(ctx context.Context, url, id string, log *zap.Logger) (*runningCoord, error) {
	var (
		rc  *runningCoord
		err error
	)
	labelled(ctx, "part", "coordinator", func(context.Context) {
		var b *broker.Broker
		if b, err = broker.Connect(broker.Config{URLs: url, Name: id}, log); err != nil {
			return
		}
		var c *coordinator.Coordinator
		if c, err = coordinator.New(b, coordinator.Config{ID: id}, log); err != nil {
			b.Close()
			return
		}
		runCtx, cancel := context.WithCancel(context.Background())
		rc = &runningCoord{Coordinator: c, b: b, cancel: cancel, done: make(chan error, 1), started: time.Now()}
		go func() { rc.done <- c.Run(runCtx) }()
	})
	if err != nil {
		return nil, err
	}
	select {
	case <-rc.Ready():
	case err := <-rc.done:
		rc.b.Close()
		return nil, fmt.Errorf("bench: coordinator did not start: %w", err)
	case <-time.After(30 * time.Second):
		_ = rc.stop()
		return nil, errors.New("bench: coordinator not ready after 30s")
	case <-ctx.Done():
		_ = rc.stop()
		return nil, ctx.Err()
	}
	if err := poll(ctx, 30*time.Second, time.Millisecond, rc.IsLeader); err != nil {
		_ = rc.stop()
		return nil, fmt.Errorf("bench: coordinator never became leader: %w", err)
	}
	return rc, nil
}

func (rc *runningCoord) stop() error {
	rc.cancel()
	err := <-rc.done
	rc.b.Close()
	return err
}

// runningFactory is a factory on its own connection.
type runningFactory struct {
	*factory.Factory
	b      *broker.Broker
	cancel context.CancelFunc
	done   chan error
}

// startFactories starts n factories, each on its own NATS connection, at
// most 16 at a time, and waits until each has registered.
func startFactories(ctx context.Context, url string, n int, cfgFor func(i int) factory.Config, log *zap.Logger) ([]*runningFactory, error) {
	out := make([]*runningFactory, n)
	var (
		wg     sync.WaitGroup
		fail   firstErr
		failed atomic.Bool
		sem    = make(chan struct{}, 16)
	)
	labelled(ctx, "part", "factory", func(context.Context) {
		for i := range n {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if failed.Load() {
					return
				}
				rf, err := startFactory(ctx, url, i, cfgFor(i), log)
				if err != nil {
					fail.set(err)
					failed.Store(true)
					return
				}
				out[i] = rf
			})
		}
		wg.Wait()
	})
	if fail.err != nil {
		stopFactories(out)
		return nil, fail.err
	}
	return out, nil
}

func startFactory(ctx context.Context, url string, i int, cfg factory.Config, log *zap.Logger) (*runningFactory, error) {
	b, err := broker.Connect(broker.Config{URLs: url, Name: fmt.Sprintf("bench-factory-%d", i)}, log)
	if err != nil {
		return nil, err
	}
	if cfg.ID == "" {
		cfg.ID = fmt.Sprintf("bench-factory-%d", i)
	}
	if cfg.Grace == 0 {
		cfg.Grace = 2 * time.Second
	}
	fa, err := factory.New(b, cfg, log)
	if err != nil {
		b.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	rf := &runningFactory{Factory: fa, b: b, cancel: cancel, done: make(chan error, 1)}
	go func() { rf.done <- fa.Run(runCtx) }()
	select {
	case <-fa.Ready():
		return rf, nil
	case err := <-rf.done:
		b.Close()
		return nil, fmt.Errorf("bench: factory %d did not start: %w", i, err)
	case <-time.After(60 * time.Second):
		stopFactories([]*runningFactory{rf})
		return nil, fmt.Errorf("bench: factory %d not ready after 60s", i)
	case <-ctx.Done():
		stopFactories([]*runningFactory{rf})
		return nil, ctx.Err()
	}
}

// stopFactories stops every factory (they deregister) and closes their
// connections. Nil entries are skipped.
func stopFactories(fs []*runningFactory) {
	for _, f := range fs {
		if f != nil {
			f.cancel()
		}
	}
	for _, f := range fs {
		if f != nil {
			<-f.done
			f.b.Close()
		}
	}
}

// jobSet is a batch of benchmark jobs of one product, published with
// idempotency keys so that every job id is known up front. Times are
// nanoseconds since the tracker's base (0 = not yet).
type jobSet struct {
	product string
	keys    []string
	ids     []string
	data    [][]byte
	base    time.Time

	submitted, started, done []atomic.Int64
	// Arrival of the creation ("" -> queued) and first dispatched event.
	queuedAt, dispatchedAt []atomic.Int64

	queued, succeeded, failed atomic.Int64
	failure                   firstErr

	// diag, if set, describes the fleet's state when a wait times out.
	diag func() string
}

// newJobSet prepares n submissions of product: JSON specs with
// idempotency key "<product>-<i>", the given requirements and command.
func newJobSet(base time.Time, product string, n int, requires func(i int) []string, command []string) *jobSet {
	s := &jobSet{product: product, base: base, keys: make([]string, n), ids: make([]string, n), data: make([][]byte, n),
		submitted: make([]atomic.Int64, n), started: make([]atomic.Int64, n), done: make([]atomic.Int64, n),
		queuedAt: make([]atomic.Int64, n), dispatchedAt: make([]atomic.Int64, n)}
	for i := range n {
		key := product + "-" + strconv.Itoa(i)
		spec := job.Spec{Product: product, Command: command, IdempotencyKey: key}
		if requires != nil {
			spec.Requires = requires(i)
		}
		data, err := json.Marshal(spec)
		if err != nil {
			panic(err) // plain types only
		}
		s.keys[i], s.ids[i], s.data[i] = key, job.IDForKey(product, key), data
	}
	return s
}

func (s *jobSet) len() int { return len(s.ids) }

// span returns the earliest and latest non-zero value of ts.
func span(ts []atomic.Int64) (first, last int64) {
	for i := range ts {
		v := ts[i].Load()
		if v == 0 {
			continue
		}
		if first == 0 || v < first {
			first = v
		}
		last = max(last, v)
	}
	return first, last
}

// latencies returns to[i]-from[i] for every job that has both.
func latencies(from, to []atomic.Int64) []time.Duration {
	out := make([]time.Duration, 0, len(from))
	for i := range from {
		a, b := from[i].Load(), to[i].Load()
		if a != 0 && b != 0 {
			out = append(out, time.Duration(b-a))
		}
	}
	return out
}

// ErrStalled is returned (wrapped) when jobs stopped finishing: no
// progress for the stall window while some are still outstanding.
var ErrStalled = errors.New("stalled")

// stallAfter is how long a wait sees no progress before it reports a stall.
var stallAfter = 20 * time.Second

// waitFor polls until count reaches the size of the set, a job of the set
// failed, nothing moved for stallAfter (ErrStalled), or timeout passes.
func (s *jobSet) waitFor(ctx context.Context, what string, count *atomic.Int64, timeout time.Duration) error {
	target := int64(s.len())
	deadline := time.Now().Add(timeout)
	last, lastMove := count.Load(), time.Now()
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		n := count.Load()
		if n >= target {
			return nil
		}
		if f := s.failed.Load(); f > 0 {
			return fmt.Errorf("bench: %d %s jobs did not succeed, first: %w", f, s.product, s.failure.err)
		}
		now := time.Now()
		if n != last {
			last, lastMove = n, now
		}
		var cause error
		switch {
		case now.Sub(lastMove) >= stallAfter:
			cause = fmt.Errorf("%w: no job %s for %v", ErrStalled, what, stallAfter)
		case now.After(deadline):
			cause = fmt.Errorf("timed out after %v", timeout)
		}
		if cause != nil {
			msg := fmt.Sprintf("only %d of %d %s jobs %s (%d queued, %d succeeded seen)",
				n, target, s.product, what, s.queued.Load(), s.succeeded.Load())
			if s.diag != nil {
				msg += "; " + s.diag()
			}
			return fmt.Errorf("bench: %w: %s", cause, msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// tracker maps job ids to their set, for the runner and the observer.
type tracker struct {
	base time.Time
	diag func() string
	mu   sync.RWMutex
	byID map[string]jobRef
}

type jobRef struct {
	set *jobSet
	i   int
}

func newTracker() *tracker { return &tracker{base: time.Now(), byID: map[string]jobRef{}} }

func (t *tracker) add(s *jobSet) {
	if s.diag == nil {
		s.diag = t.diag
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, id := range s.ids {
		t.byID[id] = jobRef{s, i}
	}
}

func (t *tracker) lookup(id string) (jobRef, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	r, ok := t.byID[id]
	return r, ok
}

// now is the time since base, never 0.
func (t *tracker) now() int64 { return max(1, int64(time.Since(t.base))) }

// runner returns the factory runner of kind: it records the run start of
// each job (before running anything), then runs it.
func (t *tracker) runner(kind RunnerKind) factory.Runner {
	var next factory.Runner
	if kind == RunnerExec {
		next = factory.ExecRunner{}
	}
	return factory.RunnerFunc(func(ctx context.Context, task factory.Task) job.Outcome {
		if r, ok := t.lookup(task.JobID); ok {
			r.set.started[r.i].CompareAndSwap(0, t.now())
		}
		if next == nil {
			return job.Outcome{}
		}
		return next.Run(ctx, task)
	})
}

// event folds one FLEET_EVENTS message: creation events count as queued,
// the arrival time of a succeeded event is the job's completion time.
func (t *tracker) event(subject string, data []byte) {
	now := t.now()
	r, ok := t.lookup(subject[strings.LastIndexByte(subject, '.')+1:])
	if !ok {
		return
	}
	from, to, ok := eventStates(data)
	if !ok {
		var ev job.Event
		if err := json.Unmarshal(data, &ev); err != nil {
			return
		}
		from, to = string(ev.From), string(ev.To)
	}
	switch job.State(to) {
	case job.Queued:
		if from == "" && r.set.queuedAt[r.i].CompareAndSwap(0, now) {
			r.set.queued.Add(1)
		}
	case job.Dispatched:
		r.set.dispatchedAt[r.i].CompareAndSwap(0, now)
	case job.Succeeded:
		if r.set.done[r.i].CompareAndSwap(0, now) {
			r.set.succeeded.Add(1)
		}
	case job.Failed, job.Dead, job.Cancelled:
		var ev job.Event
		_ = json.Unmarshal(data, &ev)
		r.set.failed.Add(1)
		r.set.failure.set(fmt.Errorf("job %s went %s→%s: %s", ev.JobID, ev.From, ev.To, ev.Reason))
	}
}

var (
	fromField = []byte(`"from":"`)
	toField   = []byte(`"to":"`)
)

// eventStates extracts from and to of an encoded job.Event without a full
// decode: both are plain state names, and the fields before them (job id,
// product) are tokens that cannot contain a quote.
func eventStates(b []byte) (from, to string, ok bool) {
	str := func(field []byte) (string, bool) {
		i := bytes.Index(b, field)
		if i < 0 {
			return "", false
		}
		rest := b[i+len(field):]
		j := bytes.IndexByte(rest, '"')
		if j < 0 {
			return "", false
		}
		return string(rest[:j]), true
	}
	var ok1, ok2 bool
	from, ok1 = str(fromField)
	to, ok2 = str(toField)
	return from, to, ok1 && ok2
}

// submitter publishes submissions like a tracker: JetStream async publish
// of the JSON spec on fleet.ingest.<product> with Nats-Msg-Id
// <product>:<key>.
type submitter struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	failures asyncFailures
}

func newSubmitter(ctx context.Context, url string) (*submitter, error) {
	s := &submitter{}
	var err error
	labelled(ctx, "part", "harness", func(context.Context) {
		s.nc, s.js, err = dialPublisher(url, "bench-submitter", &s.failures)
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// publish submits job i of set, recording its submit time first.
func (s *submitter) publish(ctx context.Context, t *tracker, set *jobSet, i int) error {
	msg := &nats.Msg{Subject: subjects.Ingest(set.product), Data: set.data[i], Header: nats.Header{}}
	set.submitted[i].Store(t.now())
	for {
		_, err := s.js.PublishMsgAsync(msg, jetstream.WithMsgID(set.product+":"+set.keys[i]))
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			if err != nil {
				return fmt.Errorf("bench: submit: %w", err)
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// publishAll submits every job of set as fast as the publish window allows
// and waits for every publish ack.
func (s *submitter) publishAll(ctx context.Context, t *tracker, set *jobSet) error {
	for i := range set.len() {
		if err := s.publish(ctx, t, set, i); err != nil {
			return err
		}
	}
	return s.settle(ctx)
}

// settle waits for every outstanding publish ack and reports failures.
func (s *submitter) settle(ctx context.Context) error {
	if err := waitPublished(ctx, s.js); err != nil {
		return fmt.Errorf("bench: waiting for submission acks: %w", err)
	}
	return s.failures.err()
}

func (s *submitter) close() { s.nc.Close() }

// observer follows FLEET_EVENTS from its current end with an ordered
// consumer and feeds every event to the tracker.
type observer struct {
	nc *nats.Conn
	cc jetstream.ConsumeContext
}

func startObserver(ctx context.Context, url string, t *tracker) (*observer, error) {
	o := &observer{}
	var err error
	labelled(ctx, "part", "harness", func(context.Context) {
		if o.nc, err = connect(url, "bench-observer"); err != nil {
			return
		}
		var js jetstream.JetStream
		if js, err = jetstream.New(o.nc); err != nil {
			return
		}
		var s jetstream.Stream
		if s, err = js.Stream(ctx, subjects.StreamEvents); err != nil {
			err = fmt.Errorf("bench: %s: %w", subjects.StreamEvents, err)
			return
		}
		var oc jetstream.Consumer
		oc, err = js.OrderedConsumer(ctx, subjects.StreamEvents, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: s.CachedInfo().State.LastSeq + 1,
		})
		if err != nil {
			err = fmt.Errorf("bench: follow events: %w", err)
			return
		}
		o.cc, err = oc.Consume(func(m jetstream.Msg) { t.event(m.Subject(), m.Data()) })
	})
	if err != nil {
		if o.nc != nil {
			o.nc.Close()
		}
		return nil, err
	}
	return o, nil
}

func (o *observer) close() {
	o.cc.Stop()
	o.nc.Close()
}

// poll calls cond every interval until it is true, timeout passes or ctx ends.
func poll(ctx context.Context, timeout, interval time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("condition not met after %v", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
	return nil
}

// Writes is what JetStream stored during a measurement: the growth of
// LastSeq of every FLEET_* stream and KV_fleet_* bucket stream.
type Writes struct {
	Jobs     int               // jobs finished in the window
	Total    uint64            // messages stored in the window
	PerJob   float64           // Total / Jobs
	ByStream map[string]uint64 // messages stored per stream (only streams that grew)
}

// fleetStreams lists the streams whose writes count as the fleet's.
func fleetStreams(ctx context.Context, js jetstream.JetStream) ([]string, error) {
	var out []string
	names := js.StreamNames(ctx)
	for n := range names.Name() {
		if strings.HasPrefix(n, "FLEET_") || strings.HasPrefix(n, "KV_fleet_") {
			out = append(out, n)
		}
	}
	if err := names.Err(); err != nil {
		return nil, fmt.Errorf("bench: list streams: %w", err)
	}
	return out, nil
}

// sampleWrites reads LastSeq of every fleet stream.
func sampleWrites(ctx context.Context, js jetstream.JetStream) (map[string]uint64, error) {
	names, err := fleetStreams(ctx, js)
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(names))
	for _, n := range names {
		v, err := StreamWrites(ctx, js, n)
		if err != nil {
			return nil, err
		}
		out[n] = v
	}
	return out, nil
}

func diffWrites(before, after map[string]uint64, jobs int) Writes {
	w := Writes{Jobs: jobs, ByStream: map[string]uint64{}}
	for n, v := range after {
		if d := v - before[n]; v > before[n] {
			w.ByStream[n] = d
			w.Total += d
		}
	}
	if jobs > 0 {
		w.PerJob = float64(w.Total) / float64(jobs)
	}
	return w
}

// waitQuiet waits until stream's LastSeq has not moved for quiet (at most
// timeout): the coordinator has finished its background writes.
func waitQuiet(ctx context.Context, js jetstream.JetStream, stream string, quiet, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last uint64
	lastMove := time.Now()
	for {
		v, err := StreamWrites(ctx, js, stream)
		if err != nil {
			return err
		}
		now := time.Now()
		if v != last {
			last, lastMove = v, now
		} else if now.Sub(lastMove) >= quiet {
			return nil
		}
		if now.After(deadline) {
			return fmt.Errorf("bench: %s still being written after %v", stream, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
