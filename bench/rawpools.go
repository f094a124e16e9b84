package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// RawPoolsResult is raw JetStream under a dispatch case's shape: as many
// pools (durable consumers on one work-queue stream, a subject each) and
// connections as the fleet's case, with no fleet at all.
type RawPoolsResult struct {
	Name         string
	Pools        int
	Conns        int // connections, each with Workers pulling workers
	Workers      int
	Steady       SteadyResult
	BurstJobs    int
	BurstElapsed time.Duration
	BurstPerSec  float64
}

// rawPoolWait is each worker's pull expiry: as long as a factory's, so that
// idle workers cost the server what idle factories do.
const rawPoolWait = 5 * time.Second

// RawPools measures raw JetStream dispatch spread over pools: a work-queue
// stream with one subject and one durable pull consumer per pool (its state
// in memory, as the fleet's pool consumers keep theirs by default); conns
// connections of workers pulling workers each, connection c bound to pool
// c mod pools; each worker loops Fetch(1) and DoubleAcks. A publisher
// offers rate jobs/s for steadyFor, round-robin over the pools (publish →
// receive is RunStart, → DoubleAck returned is Completed), then publishes
// burst jobs at once (first publish to last ack is the burst rate).
func RawPools(ctx context.Context, url string, pools, conns, workers int, rate float64, steadyFor time.Duration, burst int) (RawPoolsResult, error) {
	res := RawPoolsResult{Name: "1 pool", Pools: pools, Conns: conns, Workers: workers}
	if pools > 1 {
		res.Name = fmt.Sprintf("%d pools", pools)
	}
	total := int(rate * steadyFor.Seconds())
	if pools < 1 || conns < pools || workers < 1 || total < 1 || burst < 1 {
		return res, fmt.Errorf("bench: RawPools(%d pools, %d conns, %d workers, %d steady, %d burst)", pools, conns, workers, total, burst)
	}
	stream, base := uniqueNames("POOLS")
	var failures asyncFailures
	pubNC, js, err := dialPublisher(url, stream+"-pub", &failures)
	if err != nil {
		return res, err
	}
	defer pubNC.Close()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{base + ".>"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Replicas: 1})
	if err != nil {
		return res, fmt.Errorf("bench: create stream %s: %w", stream, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		_ = js.DeleteStream(dctx, stream)
		cancel()
	}()
	subject := func(p int) string { return base + ".p" + strconv.Itoa(p) }
	for p := range pools {
		if _, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "p" + strconv.Itoa(p), FilterSubject: subject(p),
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MemoryStorage: true}); err != nil {
			return res, fmt.Errorf("bench: create consumer %d: %w", p, err)
		}
	}

	n := total + burst
	var (
		base0     = time.Now()
		runStart  = make([]time.Duration, n)
		completed = make([]time.Duration, n)
		handled   = make([]atomic.Bool, n)
		done      atomic.Int64
		lastAck   atomic.Int64 // offset from base0 of the latest DoubleAck
		failure   firstErr
		wg        sync.WaitGroup
	)
	runCtx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		wg.Wait()
	}()
	fail := func(err error) {
		if runCtx.Err() == nil {
			failure.set(err)
			cancel()
		}
	}
	handle := func(msg jetstream.Msg) {
		got := time.Since(base0)
		data := msg.Data()
		if len(data) != steadyHeader {
			fail(fmt.Errorf("bench: payload of %d bytes", len(data)))
			return
		}
		i, sent := binary.BigEndian.Uint64(data[0:8]), time.Duration(binary.BigEndian.Uint64(data[8:16]))
		if err := msg.DoubleAck(runCtx); err != nil {
			fail(fmt.Errorf("bench: double ack: %w", err))
			return
		}
		acked := time.Since(base0)
		if i >= uint64(n) || handled[i].Swap(true) {
			return
		}
		runStart[i], completed[i] = got-sent, acked-sent
		for {
			prev := lastAck.Load()
			if int64(acked) <= prev || lastAck.CompareAndSwap(prev, int64(acked)) {
				break
			}
		}
		done.Add(1)
	}
	for c := range conns {
		nc, err := connect(url, fmt.Sprintf("%s-w%d", stream, c))
		if err != nil {
			return res, err
		}
		defer nc.Close()
		wjs, err := jetstream.New(nc)
		if err != nil {
			return res, err
		}
		cons, err := wjs.Consumer(ctx, stream, "p"+strconv.Itoa(c%pools))
		if err != nil {
			return res, fmt.Errorf("bench: bind consumer: %w", err)
		}
		for range workers {
			wg.Go(func() {
				for runCtx.Err() == nil {
					fctx, fcancel := context.WithTimeout(runCtx, rawPoolWait)
					batch, err := cons.Fetch(1, jetstream.FetchContext(fctx))
					if err != nil {
						fcancel()
						if runCtx.Err() == nil && fctx.Err() == nil {
							fail(fmt.Errorf("bench: fetch: %w", err))
						}
						continue
					}
					for msg := range batch.Messages() {
						handle(msg)
					}
					fcancel()
				}
			})
		}
	}
	publish := func(i int) error {
		buf := make([]byte, steadyHeader)
		binary.BigEndian.PutUint64(buf[0:8], uint64(i))
		binary.BigEndian.PutUint64(buf[8:16], uint64(time.Since(base0)))
		return publishAsync(runCtx, js, subject(i%pools), buf)
	}
	published := func() error {
		if err := waitPublished(runCtx, js); err != nil {
			return err
		}
		return failures.err()
	}
	// Let every worker's first pull reach the server.
	if err := sleep(runCtx, 200*time.Millisecond+time.Duration(conns)*time.Millisecond); err != nil {
		return res, err
	}

	sent, window, err := paced(runCtx, rate, total, publish)
	if err == nil {
		err = published()
	}
	if err == nil {
		err = awaitDone(runCtx, &done, sent)
	}
	if err != nil {
		if failure.err != nil {
			return res, failure.err
		}
		return res, err
	}
	res.Steady = SteadyResult{Offered: float64(sent) / window.Seconds(), Duration: window, Sent: sent, Done: int(done.Load()),
		RunStart: Summarize(runStart[:sent]), Completed: Summarize(completed[:sent])}

	first := time.Since(base0)
	for i := total; i < n; i++ {
		if err := publish(i); err != nil {
			return res, err
		}
	}
	if err := published(); err != nil {
		return res, err
	}
	if err := awaitDone(runCtx, &done, n); err != nil {
		if failure.err != nil {
			return res, failure.err
		}
		return res, err
	}
	res.BurstJobs = burst
	res.BurstElapsed = time.Duration(lastAck.Load()) - first
	res.BurstPerSec = float64(burst) / res.BurstElapsed.Seconds()
	return res, nil
}
