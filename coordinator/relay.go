package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// The relay writes the audit trail. Every write of a job record is a
// message of the fleet_jobs bucket's stream, and every record carries the
// transition its write made (job.Record.Moved/From), so the bucket's stream
// *is* the outbox: the leader reads it in order and publishes one event per
// transition on FLEET_EVENTS, with Nats-Msg-Id "<job>:<rev>". A writer that
// dies right after its compare-and-set loses nothing, because the event was
// never its to publish; a relay that dies resumes from its checkpoint (the
// key relayKey in fleet_config: every message up to it has been relayed),
// and what it publishes again inside the duplicate window is dropped by
// JetStream. Dead jobs are copied to FLEET_DEAD here too, for the same
// reason. One publisher in revision order also means FLEET_EVENTS holds each
// job's history in order.
//
// The bucket keeps jobHistory revisions per key (broker.Topology), so a
// relay that lags — across a leader failover, or under a burst — still
// finds every revision it has not relayed, unless one job was written more
// than that many times meanwhile. Once a revision is relayed, the ones
// before it have no reader left and are purged, so the bucket holds each
// job's latest record plus what is not relayed yet.

const (
	relayKey          = "relay"
	relayCheckpoint   = time.Second // how often the checkpoint is saved
	relayAckWait      = 5 * time.Second
	relayWindow       = 4096 // events in flight
	relayCompactQueue = 1 << 16
)

// relayedRev is a job's revision that has been relayed.
type relayedRev struct {
	job string
	seq uint64
}

type relayed struct {
	seq  uint64      // stream sequence of the record's message (its revision)
	ev   *nats.Msg   // the event to publish, if this revision is a transition
	id   string      // its message id
	dead *job.Record // the record, if it died at this revision
	job  string      // the record's job id
	// replaces: the revision replaced an earlier one (it is not the job's
	// creation), which is not needed once this one is relayed.
	replaces bool
	ack      jetstream.PubAckFuture
	sent     time.Time // when ack's publish went out
}

// relay runs until ctx ends.
func (c *Coordinator) relay(ctx context.Context, dec *decodedRecords) error {
	start, err := c.relayStart(ctx)
	if err != nil {
		return err
	}
	kv, err := c.b.JS.Stream(ctx, broker.JobsKVStream)
	if err != nil {
		return fmt.Errorf("relay: %s: %w", broker.JobsKVStream, err)
	}
	// Revisions older than one already relayed are needed by nobody.
	toCompact := make(chan relayedRev, relayCompactQueue)
	compacted := make(chan struct{})
	go func() {
		defer close(compacted)
		c.compact(ctx, kv, toCompact)
	}()
	defer func() { close(toCompact); <-compacted }()
	inflight := make(chan relayed, relayWindow)
	cons, err := c.consumeJobs(ctx, start, dec, func(seq uint64, r *job.Record, _ int) {
		select {
		case inflight <- c.relayOne(seq, r):
		case <-ctx.Done():
		}
	})
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	defer cons.Stop()
	c.log.Debug("relay started", zap.Uint64("from_seq", start))

	var done, saved uint64
	save := time.NewTicker(relayCheckpoint)
	defer save.Stop()
	for {
		select {
		case <-ctx.Done():
			if done > saved {
				sctx, cancel := context.WithTimeout(context.Background(), time.Second)
				c.saveRelay(sctx, done)
				cancel()
			}
			return nil
		case it := <-inflight:
			if !c.settleRelayed(ctx, it) {
				continue
			}
			done = it.seq
			if it.replaces {
				select {
				case toCompact <- relayedRev{it.job, it.seq}:
				default: // older revisions stay: only disk, and the bucket's history bounds them
				}
			}
		case <-save.C:
			if done > saved {
				c.saveRelay(ctx, done)
				saved = done
			}
		}
	}
}

// compact removes, for each relayed revision it is given, the job's
// older revisions, until ctx ends or revs is closed: nothing reads them
// any more, so a finished job keeps only its final record and a long job
// does not pile up a revision per renewal. It purges the job's key below
// the relayed revision — normally exactly one message, the revision it
// replaced, which costs the broker O(1). (Purging a finished job's whole
// history at once removed several messages, and a purge of more than one
// makes nats-server recount every consumer's pending messages: O(keys in
// the bucket) per finished job.)
func (c *Coordinator) compact(ctx context.Context, kv jetstream.Stream, revs <-chan relayedRev) {
	for r := range revs {
		if ctx.Err() != nil {
			return
		}
		if err := kv.Purge(ctx, jetstream.WithPurgeSubject(broker.JobsKVSubject(r.job)), jetstream.WithPurgeSequence(r.seq)); err != nil && ctx.Err() == nil {
			c.log.Debug("relay: older revisions not purged", zap.String("job_id", r.job), zap.Uint64("below", r.seq), zap.Error(err))
		}
	}
}

// relayOne turns the write at seq (r: its record, nil if none) into the
// work of relaying it, publishing its event at once (asynchronously).
func (c *Coordinator) relayOne(seq uint64, r *job.Record) relayed {
	it := relayed{seq: seq}
	if r == nil {
		return it
	}
	it.job, it.replaces = r.ID, !(r.Moved && r.From == "")
	ev, ok := r.Transition(seq)
	if !ok {
		return it
	}
	it.ev = nats.NewMsg(subjects.Events(r.Spec.Product, r.ID))
	it.ev.Data = ev.Encode()
	it.id = r.ID + ":" + strconv.FormatUint(seq, 10)
	if r.State == job.Dead {
		it.dead = r
	}
	var err error
	it.sent = time.Now()
	if it.ack, err = c.b.JS.PublishMsgAsync(it.ev, jetstream.WithMsgID(it.id)); err != nil {
		it.ack = nil // published again, synchronously, when settled
	}
	return it
}

// settleRelayed waits until the event of it is stored (publishing it again
// if its asynchronous publish failed or went unanswered) and dead-letters a
// dead job. It reports false only when ctx ended first.
func (c *Coordinator) settleRelayed(ctx context.Context, it relayed) bool {
	if it.ev == nil {
		return true
	}
	stored := false
	if it.ack != nil {
		// The wait counts from the publish, not from here: when a stream
		// leader is lost with a window of acks in flight, they all time out
		// together (a fresh wait per event cost minutes of relay lag).
		t := time.NewTimer(max(0, relayAckWait-time.Since(it.sent)))
		select {
		case <-it.ack.Ok():
			stored = true
		case <-it.ack.Err():
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	if !stored && !c.retry(ctx, "event "+it.id, func(ctx context.Context) error {
		_, err := c.b.JS.PublishMsg(ctx, it.ev, jetstream.WithMsgID(it.id))
		return err
	}) {
		return false
	}
	if d := it.dead; d != nil && !c.retry(ctx, "dead letter of "+d.ID, func(ctx context.Context) error {
		return c.b.DeadLetter(ctx, d.Spec.Product, broker.DeadJob, d.LastError, d.ID, "dead:"+d.ID, d.Encode(), nil)
	}) {
		return false
	}
	return true
}

// retry runs op until it succeeds or ctx ends, backing off up to 2s.
func (c *Coordinator) retry(ctx context.Context, what string, op func(context.Context) error) bool {
	for backoff := 50 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
		if ctx.Err() != nil {
			return false
		}
		octx, cancel := context.WithTimeout(ctx, relayAckWait)
		err := op(octx)
		cancel()
		if err == nil {
			return true
		}
		c.log.Warn("relay: retrying", zap.String("what", what), zap.Error(err))
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
	}
}

// relayStart is the first sequence of the bucket's stream not yet relayed.
func (c *Coordinator) relayStart(ctx context.Context) (uint64, error) {
	e, err := c.cfgKV.Get(ctx, relayKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("relay: read checkpoint: %w", err)
	}
	n, err := strconv.ParseUint(string(e.Value()), 10, 64)
	if err != nil {
		c.log.Warn("relay: unreadable checkpoint; relaying from the beginning", zap.ByteString("value", e.Value()))
		return 1, nil
	}
	return n + 1, nil
}

func (c *Coordinator) saveRelay(ctx context.Context, seq uint64) {
	if _, err := c.cfgKV.Put(ctx, relayKey, []byte(strconv.FormatUint(seq, 10))); err != nil {
		c.log.Warn("relay: checkpoint not saved", zap.Uint64("seq", seq), zap.Error(err))
	}
}
