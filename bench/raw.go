package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults applied to zero fields of RawConfig.
const (
	DefaultJobs         = 20000
	DefaultWorkers      = 16
	DefaultPayloadBytes = 200
	DefaultRate         = 1000.0
	DefaultSteadyFor    = 10 * time.Second
)

const (
	// publishMaxPending bounds outstanding PublishAsync acks per publisher.
	publishMaxPending = 4096
	// drainBatch is the pull batch size each drain worker requests per Fetch.
	// Every message is still DoubleAck'ed individually; the batch only
	// amortises the per-Fetch inbox subscription and pull request.
	drainBatch = 32
	// steadyFetchWait is the expiry of each steady-mode pull request; the
	// server expires the request (408) so no message is ever delivered to an
	// abandoned inbox.
	steadyFetchWait = 250 * time.Millisecond
	// steadyTick is the publisher's pacing tick. Each tick sends however
	// many messages are needed to bring the total to floor(elapsed*Rate).
	steadyTick = time.Millisecond
	// steadySettle bounds how long RawSteady waits after the last publish
	// for every message to be handled.
	steadySettle = 30 * time.Second
	// cleanupTimeout bounds stream deletion at the end of a run.
	cleanupTimeout = 10 * time.Second
	// writeRatePayload is the message size used by WriteRate.
	writeRatePayload = DefaultPayloadBytes
	// steadyHeader is the prefix of each steady payload: message index and
	// publish offset (nanoseconds since the run's monotonic base).
	steadyHeader = 16
)

// RawConfig configures the raw JetStream baseline. Zero fields take the
// Default* values. Every call creates its own uniquely named stream
// ("BENCH_RAW_<token>_<n>") and deletes it before returning.
type RawConfig struct {
	URL          string        // NATS URL of an already-running JetStream server
	Jobs         int           // N for drain, default 20000
	Workers      int           // W, default 16
	PayloadBytes int           // default 200
	Rate         float64       // steady offered jobs/s, default 1000
	SteadyFor    time.Duration // default 10s
}

func (c RawConfig) withDefaults() (RawConfig, error) {
	if c.URL == "" {
		return c, errors.New("bench: RawConfig.URL is required")
	}
	if c.Jobs < 0 || c.Workers < 0 || c.PayloadBytes < 0 || c.Rate < 0 || c.SteadyFor < 0 ||
		math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		return c, fmt.Errorf("bench: invalid RawConfig %+v", c)
	}
	if c.Jobs == 0 {
		c.Jobs = DefaultJobs
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.PayloadBytes == 0 {
		c.PayloadBytes = DefaultPayloadBytes
	}
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.SteadyFor == 0 {
		c.SteadyFor = DefaultSteadyFor
	}
	return c, nil
}

var (
	// runToken distinguishes this process's stream names from those of other
	// processes sharing the same server; runSeq distinguishes calls.
	runToken = rand.Uint32()
	runSeq   atomic.Uint64
)

func uniqueNames(kind string) (stream, subject string) {
	id := fmt.Sprintf("%08x_%d", runToken, runSeq.Add(1))
	return "BENCH_" + kind + "_" + id, "bench." + strings.ToLower(kind) + "." + id
}

// firstErr keeps the first error reported by any goroutine.
type firstErr struct {
	once sync.Once
	err  error
}

func (f *firstErr) set(err error) {
	if err != nil {
		f.once.Do(func() { f.err = err })
	}
}

// asyncFailures counts an async publisher's failed publishes and keeps the
// first failure.
type asyncFailures struct {
	n     atomic.Int64
	first firstErr
}

// err reports the failures, if any.
func (a *asyncFailures) err() error {
	if n := a.n.Load(); n > 0 {
		return fmt.Errorf("bench: %d async publishes failed, first: %w", n, a.first.err)
	}
	return nil
}

// rawRun is one raw-baseline topology: a publisher connection, a worker
// connection, a work-queue stream and one durable pull consumer.
type rawRun struct {
	pubNC, workNC *nats.Conn
	pubJS         jetstream.JetStream
	cons          jetstream.Consumer // bound through the worker connection
	stream        string
	subject       string
	failures      asyncFailures
}

func connect(url, name string) (*nats.Conn, error) {
	nc, err := nats.Connect(url, nats.Name(name), nats.MaxReconnects(0))
	if err != nil {
		return nil, fmt.Errorf("bench: connect %s: %w", url, err)
	}
	return nc, nil
}

// newPublisherJS returns a JetStream context with bounded async publishing
// whose async failures are recorded in f.
func newPublisherJS(nc *nats.Conn, f *asyncFailures) (jetstream.JetStream, error) {
	return jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(publishMaxPending),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			f.n.Add(1)
			f.first.set(err)
		}),
	)
}

// dialPublisher connects and returns an async publisher on the connection.
func dialPublisher(url, name string, f *asyncFailures) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := connect(url, name)
	if err != nil {
		return nil, nil, err
	}
	js, err := newPublisherJS(nc, f)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

func setupRaw(ctx context.Context, url string) (_ *rawRun, err error) {
	r := &rawRun{}
	r.stream, r.subject = uniqueNames("RAW")
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if r.pubNC, err = connect(url, r.stream+"-pub"); err != nil {
		return nil, err
	}
	if r.workNC, err = connect(url, r.stream+"-work"); err != nil {
		return nil, err
	}
	if r.pubJS, err = newPublisherJS(r.pubNC, &r.failures); err != nil {
		return nil, err
	}
	s, err := r.pubJS.CreateStream(ctx, jetstream.StreamConfig{
		Name:      r.stream,
		Subjects:  []string{r.subject},
		Retention: jetstream.WorkQueuePolicy,
		Storage:   jetstream.FileStorage,
		Replicas:  1,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: create stream %s: %w", r.stream, err)
	}
	const durable = "WORKERS"
	if _, err = s.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: -1,
	}); err != nil {
		return nil, fmt.Errorf("bench: create consumer on %s: %w", r.stream, err)
	}
	workJS, err := jetstream.New(r.workNC)
	if err != nil {
		return nil, err
	}
	if r.cons, err = workJS.Consumer(ctx, r.stream, durable); err != nil {
		return nil, fmt.Errorf("bench: bind consumer on %s: %w", r.stream, err)
	}
	return r, nil
}

// close deletes the stream (best effort, independent of the caller's
// context) and closes both connections.
func (r *rawRun) close() {
	if r.pubJS != nil && r.stream != "" {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		_ = r.pubJS.DeleteStream(ctx, r.stream)
		cancel()
	}
	if r.pubNC != nil {
		r.pubNC.Close()
	}
	if r.workNC != nil {
		r.workNC.Close()
	}
}

// publishAsync publishes data, waiting (without giving up) while the bounded
// pending window is full, until ctx ends.
func publishAsync(ctx context.Context, js jetstream.JetStream, subject string, data []byte) error {
	for {
		_, err := js.PublishAsync(subject, data)
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// waitPublished waits until every outstanding async publish of js is acked.
func waitPublished(ctx context.Context, js jetstream.JetStream) error {
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RawDrain measures how fast W workers drain N pre-stored messages from a
// JetStream work queue.
//
// It creates a work-queue stream (file storage, R1) and one durable pull
// consumer (AckExplicit, AckWait 30s, MaxAckPending -1), publishes N messages
// of PayloadBytes with bounded PublishAsync and waits for every publish ack.
// Only then does the clock start: W goroutines each loop Fetch(32) and
// DoubleAck every message individually (the handler is a no-op). The clock
// stops when the N-th DoubleAck returns. The stream is deleted afterwards.
func RawDrain(ctx context.Context, cfg RawConfig) (DrainResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return DrainResult{}, err
	}
	r, err := setupRaw(ctx, cfg.URL)
	if err != nil {
		return DrainResult{}, err
	}
	defer r.close()

	// Fill the queue. The payload is shared: it is read-only and identical
	// for every job.
	payload := make([]byte, cfg.PayloadBytes)
	for i := range payload {
		payload[i] = 'x'
	}
	for range cfg.Jobs {
		if err := publishAsync(ctx, r.pubJS, r.subject, payload); err != nil {
			return DrainResult{}, fmt.Errorf("bench: publish: %w", err)
		}
	}
	if err := waitPublished(ctx, r.pubJS); err != nil {
		return DrainResult{}, fmt.Errorf("bench: waiting for publish acks: %w", err)
	}
	if err := r.failures.err(); err != nil {
		return DrainResult{}, err
	}

	// Drain. runCtx is cancelled once every job is acked (or on failure),
	// which releases workers parked in a Fetch at the tail; by then the
	// queue is empty, so no message can be stranded in an abandoned pull.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		acked    atomic.Int64
		end      time.Time
		failure  firstErr
		wg       sync.WaitGroup
		target   = int64(cfg.Jobs)
		finished = make(chan struct{})
	)
	start, cpu0 := time.Now(), processCPU()
	for range cfg.Workers {
		wg.Go(func() {
			for acked.Load() < target && runCtx.Err() == nil {
				batch, err := r.cons.Fetch(drainBatch, jetstream.FetchContext(runCtx))
				if err != nil {
					if runCtx.Err() == nil {
						failure.set(fmt.Errorf("bench: fetch: %w", err))
						cancel()
					}
					return
				}
				for msg := range batch.Messages() {
					// no-op handler
					if err := msg.DoubleAck(runCtx); err != nil {
						if runCtx.Err() == nil {
							failure.set(fmt.Errorf("bench: double ack: %w", err))
							cancel()
						}
						continue
					}
					if acked.Add(1) == target {
						end = time.Now()
						close(finished)
						cancel()
					}
				}
				if err := batch.Error(); err != nil && runCtx.Err() == nil {
					failure.set(fmt.Errorf("bench: fetch: %w", err))
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	cpu := processCPU() - cpu0
	select {
	case <-finished:
	default:
		if failure.err != nil {
			return DrainResult{}, failure.err
		}
		return DrainResult{}, fmt.Errorf("bench: drain stopped after %d of %d jobs: %w", acked.Load(), target, ctx.Err())
	}
	elapsed := end.Sub(start)
	return DrainResult{
		Jobs:    cfg.Jobs,
		Workers: cfg.Workers,
		Elapsed: elapsed,
		PerSec:  float64(cfg.Jobs) / elapsed.Seconds(),
		CPU:     cpu,
	}, nil
}

// RawSteady offers jobs at a fixed rate to W already-waiting workers and
// records per-job latencies.
//
// Topology is as for RawDrain. W workers loop Fetch(1) with a short expiry
// (each worker holds at most one job at a time, so a burst is spread across
// idle workers rather than queued behind one). A single publisher sends
// round(Rate*SteadyFor) messages over SteadyFor, paced by a 1ms ticker that
// each tick tops the total up to floor(elapsed*Rate), so the offered rate is
// exact on average. Each payload carries its index and its publish time (as
// an offset on this process's monotonic clock). For every message RunStart
// is publish -> worker receive and Completed is publish -> DoubleAck
// returned. After the last publish RawSteady waits (up to 30s, or ctx) for
// every message to be handled, then deletes the stream. Payloads are at
// least 16 bytes.
func RawSteady(ctx context.Context, cfg RawConfig) (SteadyResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return SteadyResult{}, err
	}
	size := max(cfg.PayloadBytes, steadyHeader)
	total, err := steadyJobs(cfg.Rate, cfg.SteadyFor)
	if err != nil {
		return SteadyResult{}, err
	}

	r, err := setupRaw(ctx, cfg.URL)
	if err != nil {
		return SteadyResult{}, err
	}
	defer r.close()

	var (
		base      = time.Now() // monotonic reference for embedded publish times
		runStart  = make([]time.Duration, total)
		completed = make([]time.Duration, total)
		claimed   = make([]atomic.Bool, total) // first handler of each index wins
		done      atomic.Int64
		stop      atomic.Bool
		failure   firstErr
		wg        sync.WaitGroup
	)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	fail := func(err error) {
		failure.set(err)
		cancel()
	}

	handle := func(msg jetstream.Msg) {
		got := time.Since(base)
		data := msg.Data()
		if len(data) < steadyHeader {
			fail(fmt.Errorf("bench: short payload (%d bytes)", len(data)))
			return
		}
		idx := binary.BigEndian.Uint64(data[0:8])
		sent := time.Duration(binary.BigEndian.Uint64(data[8:16]))
		// no-op handler
		if err := msg.DoubleAck(runCtx); err != nil {
			if runCtx.Err() == nil {
				fail(fmt.Errorf("bench: double ack: %w", err))
			}
			return
		}
		acked := time.Since(base)
		if idx >= uint64(total) {
			fail(fmt.Errorf("bench: payload index %d out of range", idx))
			return
		}
		if claimed[idx].Swap(true) {
			return // redelivery of an already handled job
		}
		runStart[idx] = got - sent
		completed[idx] = acked - sent
		done.Add(1)
	}

	for range cfg.Workers {
		wg.Go(func() {
			for !stop.Load() && runCtx.Err() == nil {
				batch, err := r.cons.Fetch(1, jetstream.FetchMaxWait(steadyFetchWait))
				if err != nil {
					fail(fmt.Errorf("bench: fetch: %w", err))
					return
				}
				for msg := range batch.Messages() {
					handle(msg)
				}
				if err := batch.Error(); err != nil && runCtx.Err() == nil {
					fail(fmt.Errorf("bench: fetch: %w", err))
					return
				}
			}
		})
	}
	stopWorkers := func() {
		stop.Store(true)
		wg.Wait()
	}

	// Publisher.
	sent, duration, pubErr := paced(runCtx, cfg.Rate, total, func(i int) error {
		buf := make([]byte, size)
		binary.BigEndian.PutUint64(buf[0:8], uint64(i))
		binary.BigEndian.PutUint64(buf[8:16], uint64(time.Since(base)))
		if err := publishAsync(runCtx, r.pubJS, r.subject, buf); err != nil {
			return fmt.Errorf("bench: publish: %w", err)
		}
		return nil
	})
	if pubErr == nil {
		pubErr = waitPublished(runCtx, r.pubJS)
	}
	if pubErr == nil {
		pubErr = r.failures.err()
	}
	if pubErr != nil {
		cancel()
		stopWorkers()
		if failure.err != nil {
			return SteadyResult{}, failure.err
		}
		return SteadyResult{}, pubErr
	}

	// Wait for every job to be handled.
	waitErr := awaitDone(runCtx, &done, sent)
	stopWorkers()
	if failure.err != nil {
		return SteadyResult{}, failure.err
	}
	if waitErr != nil {
		return SteadyResult{}, waitErr
	}

	// Every index in [0, sent) has been claimed exactly once.
	return SteadyResult{
		Offered:   float64(sent) / duration.Seconds(),
		Duration:  duration,
		Sent:      sent,
		Done:      int(done.Load()),
		RunStart:  Summarize(runStart[:sent]),
		Completed: Summarize(completed[:sent]),
	}, nil
}

// awaitDone waits until done reaches n, for at most steadySettle.
func awaitDone(ctx context.Context, done *atomic.Int64, n int) error {
	settle := time.NewTimer(steadySettle)
	defer settle.Stop()
	poll := time.NewTicker(2 * time.Millisecond)
	defer poll.Stop()
	for done.Load() < int64(n) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-settle.C:
			return fmt.Errorf("bench: only %d of %d jobs done %v after the last publish", done.Load(), n, steadySettle)
		case <-poll.C:
		}
	}
	return nil
}

// steadyJobs is how many jobs a steady run offering rate jobs/s for d sends.
func steadyJobs(rate float64, d time.Duration) (int, error) {
	total := int(math.Round(rate * d.Seconds()))
	if total < 1 {
		return 0, fmt.Errorf("bench: Rate*SteadyFor = %v jobs, need at least 1", rate*d.Seconds())
	}
	return total, nil
}

// WriteRate measures how many stored (synced, if the server syncs every
// write) messages per second the server sustains: it publishes msgs messages
// of 200 bytes with bounded PublishAsync from one connection to a fresh R1
// file-storage stream, waits for every publish ack, and returns msgs divided
// by the elapsed time. Use it to compute an fsync bound for a server running
// with sync_always. The stream is deleted afterwards.
func WriteRate(ctx context.Context, url string, msgs int) (float64, error) {
	if msgs < 1 {
		return 0, fmt.Errorf("bench: WriteRate needs msgs >= 1, got %d", msgs)
	}
	stream, subject := uniqueNames("WR")
	var failures asyncFailures
	nc, js, err := dialPublisher(url, stream, &failures)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     stream,
		Subjects: []string{subject},
		Storage:  jetstream.FileStorage,
		Replicas: 1,
	}); err != nil {
		return 0, fmt.Errorf("bench: create stream %s: %w", stream, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		_ = js.DeleteStream(dctx, stream)
		cancel()
	}()

	payload := make([]byte, writeRatePayload)
	start := time.Now()
	for range msgs {
		if err := publishAsync(ctx, js, subject, payload); err != nil {
			return 0, fmt.Errorf("bench: publish: %w", err)
		}
	}
	if err := waitPublished(ctx, js); err != nil {
		return 0, fmt.Errorf("bench: waiting for publish acks: %w", err)
	}
	elapsed := time.Since(start)
	if err := failures.err(); err != nil {
		return 0, err
	}
	return float64(msgs) / elapsed.Seconds(), nil
}

// StreamWrites returns the sum over the given streams of State.LastSeq, i.e.
// the number of messages ever stored in them. Sampling it before and after a
// run gives the writes per job.
func StreamWrites(ctx context.Context, js jetstream.JetStream, streams ...string) (uint64, error) {
	var sum uint64
	for _, name := range streams {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return 0, fmt.Errorf("bench: stream %s: %w", name, err)
		}
		sum += s.CachedInfo().State.LastSeq
	}
	return sum, nil
}
