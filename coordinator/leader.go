package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// Bounds on the leader's work in flight.
const (
	maxOutstanding = 256 // dispatches/requeues in flight at once
	leaderWorkers  = 32
	markBudget     = 64 // unroutable marks per gate round
)

// result is what a worker reports back to the leader loop.
type result struct {
	e   *entry
	ev  *job.Event // the transition written, if any
	err error
}

// lead runs the leader's duties until ctx ends: it rebuilds the model from
// a snapshot of fleet_jobs and then follows every later write to the
// bucket, follows fleet_factories, relays the audit trail, and runs the
// gate, retries, the reconciler and the queue-state fold. One goroutine
// owns the model; workers only do I/O and report back.
func (c *Coordinator) lead(ctx context.Context) error {
	m := newModel(c.cfg.Prefetch, c.cfg.GateOff)

	// The snapshot: every record's last revision. A write made while it is
	// read is either in it or has a higher revision than any in it, so the
	// model then follows the bucket's stream from above the highest seen.
	jobsW, err := c.jobs.KV.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("leader: read jobs: %w", err)
	}
	var dispatched []*entry
	var snapRev uint64
	for u := range jobsW.Updates() {
		if u == nil {
			break
		}
		snapRev = max(snapRev, u.Revision())
		if r, ok := c.decodeRecord(u); ok {
			m.apply(job.EventFor(job.Record{}, r, u.Revision()))
			if r.State == job.Dispatched {
				dispatched = append(dispatched, m.jobs[r.ID])
			}
		}
	}
	_ = jobsW.Stop()
	if ctx.Err() != nil {
		return nil
	}

	// Every later write, whoever made it. This is not the relay's read: a
	// relay catching up on the audit trail (after a takeover, say) must
	// never hold the gate back. The two reads share their decoding.
	decoded := &decodedRecords{}
	written := make(chan job.Event, 4096)
	follow, err := c.consumeJobs(ctx, snapRev+1, decoded, func(seq uint64, r *job.Record, size int) {
		if r == nil {
			return
		}
		// The job store may not have the revision yet: a record written
		// by another process, or one this process's ingest created whose
		// write returns after the write reaches here. Without it, the
		// job's dispatch would read it first (a round trip on the path to
		// run-start).
		c.jobs.Observe(*r, seq, size)
		select {
		case written <- job.EventFor(job.Record{}, *r, seq):
		case <-ctx.Done():
		}
	})
	if err != nil {
		return fmt.Errorf("leader: %w", err)
	}
	defer follow.Stop()

	// Writes of this process are applied at once, so the gate never
	// over-admits while they travel.
	local := make(chan job.Event, 4096)
	c.mu.Lock()
	c.local = local
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.local = nil
		c.mu.Unlock()
	}()

	rctx, stopRelay := context.WithCancel(ctx)
	relayDone := make(chan error, 1)
	go func() { relayDone <- c.relay(rctx, decoded) }()
	defer func() {
		stopRelay()
		<-relayDone
	}()

	facW, err := c.facs.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("leader: watch factories: %w", err)
	}
	defer func() { _ = facW.Stop() }()

	work := make(chan func() result, maxOutstanding)
	results := make(chan result, maxOutstanding)
	var wg sync.WaitGroup
	wctx, stopWorkers := context.WithCancel(context.Background())
	for range leaderWorkers {
		wg.Go(func() {
			for fn := range work {
				results <- fn()
			}
		})
	}
	defer func() {
		close(work)
		stopWorkers()
		// Drain so workers blocked on results can finish.
		go func() {
			for range results {
			}
		}()
		wg.Wait()
		close(results)
	}()
	outstanding := 0
	submit := func(fn func() result) bool {
		if outstanding >= maxOutstanding {
			return false
		}
		outstanding++
		work <- fn
		return true
	}

	// A dispatch whose message may have been lost with the previous leader
	// is published again under the same message id: a no-op if it exists.
	for _, e := range dispatched {
		if !submit(func() result { return c.republish(wctx, e) }) {
			break
		}
	}

	advisories := make(chan *nats.Msg, 256)
	advSub, err := c.b.NC.ChanSubscribe(subjects.MaxDeliveriesAdvisory, advisories)
	if err != nil {
		return fmt.Errorf("leader: max-deliveries advisories: %w", err)
	}
	defer func() { _ = advSub.Unsubscribe() }()
	reconcile := time.NewTicker(c.cfg.ReconcileEvery)
	defer reconcile.Stop()

	c.log.Info("leader ready", zap.Int("jobs", len(m.jobs)), zap.Int("factories", len(m.facs)))
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	qsOut := make(chan map[string]job.QueueState, 1)
	qsDone := make(chan struct{})
	qctx, stopQS := context.WithCancel(ctx)
	go func() { defer close(qsDone); c.queueStateWriter(qctx, qsOut) }()
	defer func() { stopQS(); <-qsDone }()
	publishQS := func(now time.Time) {
		states := c.queueState(m, now)
		select { // replace a state not yet written
		case <-qsOut:
		default:
		}
		qsOut <- states
	}
	publishQS(time.Now())
	lastQS := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-written:
			m.apply(ev)
		case ev := <-local:
			m.apply(ev)
		case err := <-relayDone:
			relayDone <- err // for the deferred wait
			return fmt.Errorf("leader: relay stopped: %w", err)
		case r := <-results:
			outstanding--
			c.settle(m, r)
		case u, ok := <-facW.Updates():
			if !ok {
				return errors.New("leader: factory watch closed")
			}
			if u == nil {
				continue // end of the initial values
			}
			if u.Operation() != jetstream.KeyValuePut {
				m.putFactory(u.Key(), nil)
				continue
			}
			var fi job.FactoryInfo
			if err := json.Unmarshal(u.Value(), &fi); err != nil || fi.Pool == "" {
				c.log.Warn("undecodable factory record", zap.String("factory", u.Key()))
				continue
			}
			m.putFactory(u.Key(), &fi)
		case adv := <-advisories:
			data := adv.Data
			c.spawn(func() { c.maxDelivered(wctx, data) })
		case now := <-reconcile.C:
			lapsed, unclaimed, stranded := m.reconcileCandidates(now, c.cfg.LeaseTTL, c.cfg.ReRouteAfter)
			for _, e := range lapsed {
				e.pending, e.checked = true, now.UnixNano()
				if !submit(func() result { return c.readmitLapsed(wctx, e) }) {
					e.pending = false
				}
			}
			for _, e := range unclaimed {
				e.pending, e.checked = true, now.UnixNano()
				if !submit(func() result { return c.checkDispatched(wctx, e) }) {
					e.pending = false
				}
			}
			for _, e := range stranded {
				e.pending = true
				if !submit(func() result { return c.reroute(wctx, e) }) {
					e.pending = false
				}
			}
		case now := <-tick.C:
			for _, id := range m.expireFactories(now, c.cfg.FactoryTTL) {
				c.log.Warn("factory lost: no heartbeat", zap.String("factory", id), zap.Duration("ttl", c.cfg.FactoryTTL))
			}
			for _, e := range m.dueRetries(now, maxOutstanding-outstanding) {
				submit(func() result { return c.requeue(wctx, e) })
			}
			if now.Sub(lastQS) >= c.cfg.QueueStateEvery {
				lastQS = now
				publishQS(now)
			}
		}
		// Fold whatever else is already waiting before deciding.
		for drained := 0; drained < 1024; drained++ {
			select {
			case ev := <-written:
				m.apply(ev)
				continue
			case ev := <-local:
				m.apply(ev)
				continue
			case r := <-results:
				outstanding--
				c.settle(m, r)
				continue
			default:
			}
			break
		}
		orders, marks := m.admit(maxOutstanding-outstanding, markBudget)
		for _, o := range orders {
			submit(func() result { return c.dispatch(wctx, o.e, o.pool) })
		}
		for _, e := range marks {
			if !submit(func() result { return c.markUnroutable(wctx, e) }) {
				e.marking = false
			}
		}
	}
}

// settle applies a worker's result to the model.
func (c *Coordinator) settle(m *model, r result) {
	if r.ev != nil {
		m.apply(*r.ev)
	}
	if r.err != nil {
		c.log.Debug("leader operation", zap.String("job_id", r.e.id), zap.Error(r.err))
	}
	// Whatever did not happen is undone; an event supersedes it if the
	// record moved on without us.
	if r.e.pending && m.jobs[r.e.id] == r.e {
		switch r.e.state {
		case job.Queued: // a dispatch that did not happen
			m.undo(r.e)
		case job.Failed: // a retry that did not happen: back in the retry heap
			m.leave(r.e)
			r.e.pending = false
			m.enter(r.e)
		default: // a reconciler check that changed nothing
			r.e.pending = false
		}
	}
	r.e.marking = false
}

// committed publishes a worker's transition and reports it to the model.
func (c *Coordinator) committed(ctx context.Context, e *entry, prev, next job.Record, rev uint64) result {
	c.commit(prev, next, rev)
	ev := job.EventFor(prev, next, rev)
	return result{e: e, ev: &ev}
}

// resynced reports an operation that found the record elsewhere than the
// model thought (its event was lost or is still in flight): the record read
// is handed back so the model catches up. It is how the model heals if an
// event is ever missing.
func resynced(e *entry, r job.Record, rev uint64, err error) result {
	if r.ID == "" || rev == 0 {
		return result{e: e, err: err}
	}
	ev := job.EventFor(job.Record{}, r, rev)
	return result{e: e, ev: &ev, err: err}
}

// consumeJobs reads every write to fleet_jobs from stream sequence from
// (1: the beginning), in order, and hands fn each one's sequence, record
// (nil for a delete or an undecodable record, which is logged) and encoded
// size. The record comes from dec and is shared: fn must not change it.
func (c *Coordinator) consumeJobs(ctx context.Context, from uint64, dec *decodedRecords, fn func(seq uint64, r *job.Record, size int)) (jetstream.ConsumeContext, error) {
	oc, err := c.b.JS.OrderedConsumer(ctx, broker.JobsKVStream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: max(from, 1)})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", broker.JobsKVStream, err)
	}
	cc, err := oc.Consume(func(msg jetstream.Msg) {
		meta, err := msg.Metadata()
		if err != nil {
			return
		}
		if msg.Headers().Get("KV-Operation") != "" {
			fn(meta.Sequence.Stream, nil, 0)
			return
		}
		r, err := dec.decode(meta.Sequence.Stream, msg.Data())
		if err != nil {
			c.log.Warn("undecodable job record skipped", zap.String("subject", msg.Subject()), zap.Error(err))
			fn(meta.Sequence.Stream, nil, 0)
			return
		}
		fn(meta.Sequence.Stream, r, len(msg.Data()))
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", broker.JobsKVStream, err)
	}
	return cc, nil
}

// decodedRecords shares the decoding of fleet_jobs' revisions between the
// leader's two readers of the bucket's stream, the model's and the relay's:
// they read the same revisions at about the same time, so whichever is
// first decodes and the other takes its record (decoding records is a
// large share of the leader's CPU). It remembers the last len(slots)
// revisions; a reader further behind decodes for itself.
type decodedRecords struct {
	mu    sync.Mutex
	slots [4096]struct {
		seq uint64
		r   *job.Record
	}
}

// decode returns the record stored at stream sequence seq, whose message
// data is data.
func (d *decodedRecords) decode(seq uint64, data []byte) (*job.Record, error) {
	slot := &d.slots[seq%uint64(len(d.slots))]
	d.mu.Lock()
	r := slot.r
	hit := slot.seq == seq && r != nil
	d.mu.Unlock()
	if hit {
		return r, nil
	}
	rec, err := job.DecodeRecord(data)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	slot.seq, slot.r = seq, &rec
	d.mu.Unlock()
	return &rec, nil
}

// decodeRecord decodes a record read from the bucket; an undecodable one is logged and
// skipped.
func (c *Coordinator) decodeRecord(u jetstream.KeyValueEntry) (job.Record, bool) {
	if u == nil || u.Operation() != jetstream.KeyValuePut {
		return job.Record{}, false
	}
	r, err := job.DecodeRecord(u.Value())
	if err != nil {
		c.log.Warn("undecodable job record skipped", zap.String("job_id", u.Key()), zap.Error(err))
		return job.Record{}, false
	}
	return r, true
}

var errNotQueued = errors.New("job is no longer queued")

// dispatch moves a queued job into pool: the record first (so the dispatch
// generation exists before any message names it), then the pool message.
func (c *Coordinator) dispatch(ctx context.Context, e *entry, pool string) result {
	now := time.Now().UTC()
	prev, next, rev, err := c.jobs.Mutate(ctx, e.id, func(r job.Record) (job.Record, bool, error) {
		if r.State != job.Queued {
			return r, false, errNotQueued
		}
		n, err := r.Dispatch(pool, now)
		return n, err == nil, err
	})
	if err != nil {
		return resynced(e, prev, rev, err)
	}
	c.commit(prev, next, rev)
	ev := job.EventFor(prev, next, rev)
	if err := c.publishDispatchRetrying(ctx, next); err != nil {
		// Give the job back to the backlog; if that fails too, the leader's
		// next start republishes it.
		p2, n2, rev2, rerr := c.jobs.Mutate(ctx, e.id, func(r job.Record) (job.Record, bool, error) {
			if r.State != job.Dispatched || r.DispatchGen != next.DispatchGen {
				return r, false, nil
			}
			n, err := r.Requeue("dispatch not published: "+err.Error(), time.Now().UTC())
			return n, err == nil, err
		})
		if rerr == nil && n2.State == job.Queued && p2.State == job.Dispatched {
			c.commit(p2, n2, rev2)
			ev = job.EventFor(p2, n2, rev2)
		}
		return result{e: e, ev: &ev, err: err}
	}
	return result{e: e, ev: &ev}
}

// publishDispatch publishes the pool message of a dispatch; the message id
// (job and dispatch generation) makes a repeat a no-op.
func (c *Coordinator) publishDispatch(ctx context.Context, r job.Record) (*jetstream.PubAck, error) {
	msg := nats.NewMsg(subjects.Jobs(r.Pool))
	msg.Header.Set(subjects.HeaderJobID, r.ID)
	msg.Header.Set(subjects.HeaderDispatchGen, fmt.Sprint(r.DispatchGen))
	msg.Data, _ = json.Marshal(struct {
		JobID       string `json:"job_id"`
		DispatchGen uint64 `json:"dispatch_gen"`
		Title       string `json:"title,omitempty"`
	}{r.ID, r.DispatchGen, r.Spec.Title})
	return c.b.JS.PublishMsg(ctx, msg, jetstream.WithMsgID(broker.DispatchMsgID(r.ID, r.DispatchGen)))
}

// publishDispatchRetrying rides out a short broker outage (a stream leader
// election) for up to dispatchPublishFor before dispatch gives the job back:
// giving it back at once made every retry two more record revisions.
func (c *Coordinator) publishDispatchRetrying(ctx context.Context, r job.Record) error {
	deadline := time.Now().Add(dispatchPublishFor)
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, time.Second) {
		_, err := c.publishDispatch(ctx, r)
		if err == nil || time.Now().Add(backoff).After(deadline) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
	}
}

const dispatchPublishFor = 5 * time.Second

func (c *Coordinator) republish(ctx context.Context, e *entry) result {
	r, _, err := c.jobs.Get(ctx, e.id)
	if err == nil && r.State == job.Dispatched {
		_, err = c.publishDispatch(ctx, r)
	}
	return result{e: e, err: err}
}

// requeue returns a failed job to the backlog once its backoff is over.
func (c *Coordinator) requeue(ctx context.Context, e *entry) result {
	res, _ := c.requeueIf(ctx, e, func(r job.Record) bool { return r.State == job.Failed }, "")
	return res
}

// markUnroutable flags a queued job that no live pool can serve.
func (c *Coordinator) markUnroutable(ctx context.Context, e *entry) result {
	prev, next, rev, err := c.jobs.Mutate(ctx, e.id, func(r job.Record) (job.Record, bool, error) {
		if r.State != job.Queued || r.Unroutable {
			return r, false, nil
		}
		r.Unroutable = true
		r.Updated = time.Now().UTC()
		return r, true, nil
	})
	if err != nil || !next.Unroutable || prev.Unroutable {
		return resynced(e, prev, rev, err)
	}
	// A flag, not a transition: no event on FLEET_EVENTS, only the model learns.
	ev := job.EventFor(prev, next, rev)
	return result{e: e, ev: &ev}
}
