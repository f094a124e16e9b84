package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentqueue/fleet/job"
)

// FloorKind names a variant of the design floor.
type FloorKind string

const (
	// FloorDesign is the JetStream work the design itself prescribes per
	// job, done by bare code: the record's creation at ingest; the
	// dispatch CAS on the record and the pool message; claim and complete
	// as request–replies to a coordinator (fleet.ctl.*), each a CAS on the
	// record; an event per transition; a plain ack. Seven writes per
	// drained job, as the fleet's drain; workers pull one message at a
	// time, as factories do.
	FloorDesign FloorKind = "design"
	// FloorDirect drops what a design change could drop: no audit copy in
	// an events stream and no coordinator hop — workers CAS the record
	// themselves. Four writes per drained job.
	FloorDirect FloorKind = "direct"
	// FloorDirectBatch is FloorDirect with workers pulling 32 messages at a
	// time, as the raw baseline does — which a dispatcher of long jobs
	// cannot do (a prefetched job's lease runs out in the buffer). The
	// ceiling of any design that keeps a fenced record per job.
	FloorDirectBatch FloorKind = "direct-batch"
)

// FloorKinds lists the floor variants in the order they are reported.
var FloorKinds = []FloorKind{FloorDesign, FloorDirect, FloorDirectBatch}

func (k FloorKind) valid() bool {
	return k == FloorDesign || k == FloorDirect || k == FloorDirectBatch
}

func (k FloorKind) fetchBatch() int {
	if k == FloorDirectBatch {
		return drainBatch
	}
	return 1
}

// FloorResult is a design-floor drain: Jobs records already stored were
// dispatched, claimed, completed and acked by bare code in Elapsed.
type FloorResult struct {
	Kind         FloorKind
	Jobs         int
	Workers      int
	Elapsed      time.Duration
	PerSec       float64
	WritesPerJob float64       // stored messages per job, counted from the streams
	CPU          time.Duration // the process's CPU time during the drain, its events' publishing included
}

// floorRun is one floor topology: a record bucket, a work-queue ingest
// stream and pool stream with a durable consumer each, an events stream
// and a control subject, served over the "coordinator" connection, with
// workers on their own connection.
type floorRun struct {
	kind              FloorKind
	coordNC, workNC   *nats.Conn
	coordJS           jetstream.JetStream
	kv, workKV        jetstream.KeyValue
	pool, ingest      jetstream.Consumer // pool: through workNC; ingest: through coordNC
	stream            string             // the pool stream; the others are named after it
	poolSubj, ctlSubj string
	inSubj, evPrefix  string
	bucket            string
	inStream          string
	evStream          string
	revs              []atomic.Uint64 // per job: the record revision last written
	record, event     []byte
	failures          asyncFailures
}

// Pool messages carry the job's index, the record revision the dispatch
// wrote and, in steady runs, the submission time.
const floorMsgLen = 24

func (f *floorRun) key(i uint64) string { return "j" + strconv.FormatUint(i, 10) }

func setupFloor(ctx context.Context, url string, kind FloorKind, jobs int) (_ *floorRun, err error) {
	if !kind.valid() {
		return nil, fmt.Errorf("bench: unknown floor %q", kind)
	}
	f := &floorRun{kind: kind, revs: make([]atomic.Uint64, jobs)}
	var base string
	f.stream, base = uniqueNames("FLOOR")
	f.poolSubj, f.ctlSubj, f.inSubj, f.evPrefix = base+".pool", base+".ctl", base+".in", base+".ev."
	f.bucket, f.inStream, f.evStream = f.stream+"_REC", f.stream+"_IN", f.stream+"_EV"
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	if f.coordNC, err = connect(url, f.stream+"-coord"); err != nil {
		return nil, err
	}
	if f.workNC, err = connect(url, f.stream+"-work"); err != nil {
		return nil, err
	}
	if f.coordJS, err = newPublisherJS(f.coordNC, &f.failures); err != nil {
		return nil, err
	}
	// The fleet's settings, minus what only the fleet needs: one revision
	// per record (the fleet keeps a history and purges replaced revisions).
	if f.kv, err = f.coordJS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: f.bucket, History: 1,
		Storage: jetstream.FileStorage, Replicas: 1}); err != nil {
		return nil, fmt.Errorf("bench: create bucket %s: %w", f.bucket, err)
	}
	consumer := func(stream, subject string, retention jetstream.RetentionPolicy) (jetstream.Stream, error) {
		s, err := f.coordJS.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{subject},
			Retention: retention, Storage: jetstream.FileStorage, Replicas: 1})
		if err != nil {
			return nil, fmt.Errorf("bench: create stream %s: %w", stream, err)
		}
		if retention == jetstream.WorkQueuePolicy {
			if _, err = s.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "D", AckPolicy: jetstream.AckExplicitPolicy,
				AckWait: 30 * time.Second, MaxAckPending: -1}); err != nil {
				return nil, fmt.Errorf("bench: create consumer on %s: %w", stream, err)
			}
		}
		return s, nil
	}
	if _, err = consumer(f.stream, f.poolSubj, jetstream.WorkQueuePolicy); err != nil {
		return nil, err
	}
	in, err := consumer(f.inStream, f.inSubj, jetstream.WorkQueuePolicy)
	if err != nil {
		return nil, err
	}
	if f.ingest, err = in.Consumer(ctx, "D"); err != nil {
		return nil, err
	}
	if _, err = consumer(f.evStream, f.evPrefix+">", jetstream.LimitsPolicy); err != nil {
		return nil, err
	}
	workJS, err := jetstream.New(f.workNC)
	if err != nil {
		return nil, err
	}
	if f.pool, err = workJS.Consumer(ctx, f.stream, "D"); err != nil {
		return nil, fmt.Errorf("bench: bind consumer on %s: %w", f.stream, err)
	}
	if f.workKV, err = workJS.KeyValue(ctx, f.bucket); err != nil {
		return nil, fmt.Errorf("bench: bind bucket %s: %w", f.bucket, err)
	}
	// Payloads the size of the fleet's own: a fresh record and an event.
	spec := job.Spec{Product: "bench", Command: []string{"true"}, IdempotencyKey: "bench-12345"}
	id := job.IDForKey("bench", spec.IdempotencyKey)
	f.record = job.NewRecord(id, spec, time.Now().UTC()).Encode()
	if f.event, err = json.Marshal(job.Event{JobID: id, Product: "bench", From: job.Dispatched, To: job.Running,
		Epoch: 1, Attempt: 1, Pool: "default", Owner: "factory-1/slot-1", At: time.Now().UTC(), Rev: 12345}); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *floorRun) close() {
	if f.coordJS != nil && f.stream != "" {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		for _, s := range []string{f.stream, f.inStream, f.evStream} {
			_ = f.coordJS.DeleteStream(ctx, s)
		}
		_ = f.coordJS.DeleteKeyValue(ctx, f.bucket)
		cancel()
	}
	if f.coordNC != nil {
		f.coordNC.Close()
	}
	if f.workNC != nil {
		f.workNC.Close()
	}
}

// writes is the number of messages ever stored in the floor's streams.
func (f *floorRun) writes(ctx context.Context) (uint64, error) {
	return StreamWrites(ctx, f.coordJS, f.stream, f.inStream, f.evStream, "KV_"+f.bucket)
}

// emit publishes a transition's event, if the variant keeps an audit copy.
func (f *floorRun) emit(ctx context.Context, i uint64) error {
	if f.kind != FloorDesign {
		return nil
	}
	if err := publishAsync(ctx, f.coordJS, f.evPrefix+f.key(i), f.event); err != nil {
		return fmt.Errorf("bench: event: %w", err)
	}
	return nil
}

// create is ingest's share: the record, and its event.
func (f *floorRun) create(ctx context.Context, i uint64) error {
	rev, err := f.kv.Create(ctx, f.key(i), f.record)
	if err != nil {
		return fmt.Errorf("bench: record create: %w", err)
	}
	f.revs[i].Store(rev)
	return f.emit(ctx, i)
}

// transition is one record CAS by the coordinator, with its event.
func (f *floorRun) transition(ctx context.Context, i uint64) (uint64, error) {
	rev, err := f.kv.Update(ctx, f.key(i), f.record, f.revs[i].Load())
	if err != nil {
		return 0, fmt.Errorf("bench: record CAS: %w", err)
	}
	f.revs[i].Store(rev)
	return rev, f.emit(ctx, i)
}

// serveControl answers claim and complete requests as the coordinator does:
// each in its own goroutine, a CAS on the record, then the reply.
func (f *floorRun) serveControl(ctx context.Context, fail func(error)) (*nats.Subscription, error) {
	return f.coordNC.QueueSubscribe(f.ctlSubj, "coordinators", func(m *nats.Msg) {
		go func() {
			if len(m.Data) != 8 {
				fail(fmt.Errorf("bench: control request of %d bytes", len(m.Data)))
				return
			}
			rev, err := f.transition(ctx, binary.BigEndian.Uint64(m.Data))
			if err != nil {
				fail(err)
				return
			}
			_ = m.Respond(binary.BigEndian.AppendUint64(nil, rev))
		}()
	})
}

// dispatch is the router's share: the dispatch CAS, then the pool message
// naming the revision it wrote.
func (f *floorRun) dispatch(ctx context.Context, i uint64, sent time.Duration) error {
	rev, err := f.transition(ctx, i)
	if err != nil {
		return err
	}
	msg := make([]byte, floorMsgLen)
	binary.BigEndian.PutUint64(msg[0:8], i)
	binary.BigEndian.PutUint64(msg[8:16], rev)
	binary.BigEndian.PutUint64(msg[16:24], uint64(sent))
	for {
		_, err := f.coordJS.PublishAsync(f.poolSubj, msg, jetstream.WithMsgID(f.key(i)+":1"))
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, jetstream.ErrTooManyStalledMsgs) || ctx.Err() != nil:
			return fmt.Errorf("bench: pool publish: %w", err)
		}
	}
}

// work is a worker's share for one pool message: claim, run (a no-op:
// started is called), complete, ack.
func (f *floorRun) work(ctx context.Context, msg jetstream.Msg, started func(i uint64, sent time.Duration)) error {
	data := msg.Data()
	if len(data) != floorMsgLen {
		return fmt.Errorf("bench: pool message of %d bytes", len(data))
	}
	i, rev := binary.BigEndian.Uint64(data[0:8]), binary.BigEndian.Uint64(data[8:16])
	step := func() error {
		if f.kind == FloorDesign {
			if _, err := f.workNC.RequestWithContext(ctx, f.ctlSubj, data[0:8]); err != nil {
				return fmt.Errorf("bench: control request: %w", err)
			}
			return nil
		}
		var err error
		if rev, err = f.workKV.Update(ctx, f.key(i), f.record, rev); err != nil {
			return fmt.Errorf("bench: record CAS by worker: %w", err)
		}
		return nil
	}
	if err := step(); err != nil { // claim
		return err
	}
	if started != nil {
		started(i, time.Duration(binary.BigEndian.Uint64(data[16:24])))
	}
	if err := step(); err != nil { // complete
		return err
	}
	return msg.Ack()
}

// floorSession runs one measurement on a floor topology: the control
// service, a failure latch and a cancellable context.
type floorSession struct {
	*floorRun
	ctx     context.Context
	cancel  context.CancelFunc
	failure firstErr
	wg      sync.WaitGroup
}

func newFloorSession(ctx context.Context, url string, kind FloorKind, jobs int) (*floorSession, func(), error) {
	f, err := setupFloor(ctx, url, kind, jobs)
	if err != nil {
		return nil, nil, err
	}
	s := &floorSession{floorRun: f}
	s.ctx, s.cancel = context.WithCancel(ctx)
	sub, err := f.serveControl(s.ctx, s.fail)
	if err != nil {
		s.cancel()
		f.close()
		return nil, nil, err
	}
	return s, func() {
		s.cancel()
		s.wg.Wait()
		_ = sub.Unsubscribe()
		f.close()
	}, nil
}

func (s *floorSession) fail(err error) {
	if s.ctx.Err() == nil {
		s.failure.set(err)
		s.cancel()
	}
}

// parallel runs fn for every job index in [0, n) on w goroutines.
func (s *floorSession) parallel(w, n int, fn func(i uint64) error) {
	var next atomic.Uint64
	for range w {
		s.wg.Go(func() {
			for i := next.Add(1) - 1; i < uint64(n) && s.ctx.Err() == nil; i = next.Add(1) - 1 {
				if err := fn(i); err != nil {
					s.fail(err)
				}
			}
		})
	}
}

// workers runs w workers pulling from the pool until done reports true or
// the session ends; each pull waits at most wait (0: until the session
// ends).
func (s *floorSession) workers(w int, wait time.Duration, done func() bool, started, finished func(i uint64, sent time.Duration)) {
	for range w {
		s.wg.Go(func() {
			for !done() && s.ctx.Err() == nil {
				opt := jetstream.FetchContext(s.ctx)
				if wait > 0 {
					opt = jetstream.FetchMaxWait(wait)
				}
				batch, err := s.pool.Fetch(s.kind.fetchBatch(), opt)
				if err != nil {
					s.fail(fmt.Errorf("bench: fetch: %w", err))
					return
				}
				for msg := range batch.Messages() {
					if err := s.work(s.ctx, msg, started); err != nil {
						s.fail(err)
						continue
					}
					data := msg.Data()
					finished(binary.BigEndian.Uint64(data[0:8]), time.Duration(binary.BigEndian.Uint64(data[16:24])))
				}
				if err := batch.Error(); err != nil && s.ctx.Err() == nil {
					s.fail(fmt.Errorf("bench: fetch: %w", err))
					return
				}
			}
		})
	}
}

// published waits for the session's async publishes and reports failures.
func (s *floorSession) published(ctx context.Context) error {
	if err := waitPublished(ctx, s.coordJS); err != nil {
		return fmt.Errorf("bench: waiting for publish acks: %w", err)
	}
	return s.failures.err()
}

// FloorDrain measures the design floor's drain: the JetStream operations a
// job needs from dispatch to ack under the given variant, done by bare code
// with no validation, model, scheduling or codec. N records are created
// first (untimed); then as many dispatchers as workers dispatch every job
// while cfg.Workers workers claim, complete and ack them. The clock runs
// from the first dispatch to the N-th ack.
func FloorDrain(ctx context.Context, cfg RawConfig, kind FloorKind) (FloorResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return FloorResult{}, err
	}
	s, closeFn, err := newFloorSession(ctx, cfg.URL, kind, cfg.Jobs)
	if err != nil {
		return FloorResult{}, err
	}
	defer closeFn()

	s.parallel(cfg.Workers, cfg.Jobs, func(i uint64) error { return s.create(s.ctx, i) })
	s.wg.Wait()
	if s.failure.err != nil {
		return FloorResult{}, s.failure.err
	}
	if err := s.published(ctx); err != nil {
		return FloorResult{}, err
	}
	before, err := s.writes(ctx)
	if err != nil {
		return FloorResult{}, err
	}

	var (
		acked    atomic.Int64
		end      time.Time
		target   = int64(cfg.Jobs)
		finished = make(chan struct{})
	)
	start, cpu0 := time.Now(), processCPU()
	s.parallel(cfg.Workers, cfg.Jobs, func(i uint64) error { return s.dispatch(s.ctx, i, 0) })
	s.workers(cfg.Workers, 0, func() bool { return acked.Load() >= target }, nil, func(uint64, time.Duration) {
		if acked.Add(1) == target {
			end = time.Now()
			close(finished)
			s.cancel()
		}
	})
	s.wg.Wait()
	select {
	case <-finished:
	default:
		if s.failure.err != nil {
			return FloorResult{}, s.failure.err
		}
		return FloorResult{}, fmt.Errorf("bench: floor drain stopped after %d of %d jobs: %w", acked.Load(), target, ctx.Err())
	}
	if err := s.published(ctx); err != nil {
		return FloorResult{}, err
	}
	cpu := processCPU() - cpu0
	after, err := s.writes(ctx)
	if err != nil {
		return FloorResult{}, err
	}
	elapsed := end.Sub(start)
	return FloorResult{Kind: kind, Jobs: cfg.Jobs, Workers: cfg.Workers, Elapsed: elapsed,
		PerSec: float64(cfg.Jobs) / elapsed.Seconds(), WritesPerJob: float64(after-before) / float64(cfg.Jobs), CPU: cpu}, nil
}

// FloorSteady offers jobs at cfg.Rate for cfg.SteadyFor along the design
// floor's whole path: a submission published to an ingest stream; the
// coordinator consumes it, creates the record and dispatches at once (no
// backlog, no gate); a waiting worker pulls the pool message, claims —
// that is run-start — completes and acks. RunStart and Completed are
// measured from the submission's publish, as for RawSteady and the fleet.
func FloorSteady(ctx context.Context, cfg RawConfig, kind FloorKind) (SteadyResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return SteadyResult{}, err
	}
	total, err := steadyJobs(cfg.Rate, cfg.SteadyFor)
	if err != nil {
		return SteadyResult{}, err
	}
	s, closeFn, err := newFloorSession(ctx, cfg.URL, kind, total)
	if err != nil {
		return SteadyResult{}, err
	}
	defer closeFn()

	var (
		base      = time.Now()
		runStart  = make([]time.Duration, total)
		completed = make([]time.Duration, total)
		done      atomic.Int64
		stop      atomic.Bool
	)
	cc, err := s.ingest.Consume(func(m jetstream.Msg) {
		go func() {
			data := m.Data()
			if len(data) < steadyHeader {
				s.fail(fmt.Errorf("bench: submission of %d bytes", len(data)))
				return
			}
			i, sent := binary.BigEndian.Uint64(data[0:8]), time.Duration(binary.BigEndian.Uint64(data[8:16]))
			if i >= uint64(total) {
				s.fail(fmt.Errorf("bench: submission index %d out of range", i))
				return
			}
			if err := s.create(s.ctx, i); err != nil {
				s.fail(err)
				return
			}
			if err := s.dispatch(s.ctx, i, sent); err != nil {
				s.fail(err)
				return
			}
			_ = m.Ack()
		}()
	}, jetstream.PullMaxMessages(256))
	if err != nil {
		return SteadyResult{}, fmt.Errorf("bench: consume ingest: %w", err)
	}
	defer cc.Stop()
	s.workers(cfg.Workers, steadyFetchWait, stop.Load, func(i uint64, sent time.Duration) {
		runStart[i] = time.Since(base) - sent
	}, func(i uint64, sent time.Duration) {
		completed[i] = time.Since(base) - sent
		done.Add(1)
	})

	// The submitter, on its own connection.
	var subFailures asyncFailures
	nc, js, err := dialPublisher(cfg.URL, s.stream+"-submit", &subFailures)
	if err != nil {
		return SteadyResult{}, err
	}
	defer nc.Close()
	payload := make([]byte, max(cfg.PayloadBytes, steadyHeader))
	sent, window, err := paced(s.ctx, cfg.Rate, total, func(i int) error {
		buf := append([]byte(nil), payload...)
		binary.BigEndian.PutUint64(buf[0:8], uint64(i))
		binary.BigEndian.PutUint64(buf[8:16], uint64(time.Since(base)))
		return publishAsync(s.ctx, js, s.inSubj, buf)
	})
	if err == nil {
		err = waitPublished(s.ctx, js)
	}
	if err == nil {
		err = subFailures.err()
	}
	if err == nil {
		err = awaitDone(s.ctx, &done, sent)
	}
	stop.Store(true)
	if s.failure.err != nil {
		return SteadyResult{}, s.failure.err
	}
	if err != nil {
		return SteadyResult{}, err
	}
	if err := s.published(ctx); err != nil {
		return SteadyResult{}, err
	}
	return SteadyResult{Offered: float64(sent) / window.Seconds(), Duration: window, Sent: sent, Done: int(done.Load()),
		RunStart: Summarize(runStart[:sent]), Completed: Summarize(completed[:sent])}, nil
}
