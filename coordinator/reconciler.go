package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// The reconciler repairs what JetStream cannot, on the leader:
//
//   - a running job whose lease lapsed and whose message is gone (acked by a
//     zombie, or lost) would never be redelivered: it is re-admitted;
//   - a dispatched job whose pool has had no live factory for ReRouteAfter
//     is taken back and routed again;
//   - a dispatched job unclaimed for a lease in a live pool must have its
//     message in FLEET_JOBS: a lost publish is made again, a message
//     consumed without a claim is replaced by a new dispatch;
//   - a message that hit MaxDeliver stays in the work queue for ever: it is
//     copied to FLEET_DEAD, deleted, and its job marked dead.
//
// Its checks produce work items for the leader's workers; nothing here
// touches the model.

// reconcileCandidates collects, for the periodic check, running jobs whose
// lease could have lapsed, dispatched jobs unclaimed for a lease in a live
// pool, and dispatched jobs stranded in a dead pool. Each is looked at again
// only a lease after its last look, so a long backlog costs O(backlog) reads
// per lease, not per tick.
func (m *model) reconcileCandidates(now time.Time, lease, reroute time.Duration) (lapsed, unclaimed, stranded []*entry) {
	for _, e := range m.jobs {
		if e.pending {
			continue
		}
		quiet := now.Sub(time.Unix(0, max(e.at, e.checked))) > lease
		switch e.state {
		case job.Running:
			// The record is read only once the lease could have lapsed
			// since the claim; renewals move it, so the read decides.
			if quiet {
				lapsed = append(lapsed, e)
			}
		case job.Dispatched:
			p := m.pools[e.pool]
			switch {
			case p == nil || len(p.facs) == 0 && !p.deadSince.IsZero() && now.Sub(p.deadSince) > reroute:
				stranded = append(stranded, e)
			case quiet:
				unclaimed = append(unclaimed, e)
			}
		}
	}
	return lapsed, unclaimed, stranded
}

// readmitLapsed re-admits a running job whose lease lapsed a while ago and
// whose message is no longer in FLEET_JOBS.
func (c *Coordinator) readmitLapsed(ctx context.Context, e *entry) result {
	r, rev, err := c.jobs.Get(ctx, e.id)
	if err != nil || r.State != job.Running || time.Since(r.LeaseUntil) < c.cfg.LeaseTTL/2 {
		return resynced(e, r, rev, err)
	}
	if r.StreamSeq != 0 {
		_, gerr := c.jobStream.GetMsg(ctx, r.StreamSeq)
		if gerr == nil {
			return result{e: e} // JetStream still has it: its redelivery will be claimed
		}
		if !errors.Is(gerr, jetstream.ErrMsgNotFound) {
			return result{e: e, err: gerr}
		}
	}
	epoch := r.Epoch
	res, moved := c.requeueIf(ctx, e, func(r job.Record) bool { return r.State == job.Running && r.Epoch == epoch },
		fmt.Sprintf("lease of epoch %d lapsed and its message is gone; re-admitted", epoch))
	if moved {
		c.log.Warn("re-admitted a job whose lease lapsed with no message", zap.String("job_id", e.id), zap.Uint64("epoch", epoch))
	}
	return res
}

// requeueIf gives a job back to the backlog with reason if its record still
// is as the caller saw it (still), and reports whether it did.
func (c *Coordinator) requeueIf(ctx context.Context, e *entry, still func(job.Record) bool, reason string) (result, bool) {
	prev, next, rev, err := c.jobs.Mutate(ctx, e.id, func(r job.Record) (job.Record, bool, error) {
		if !still(r) {
			return r, false, nil
		}
		n, err := r.Requeue(reason, time.Now().UTC())
		return n, err == nil, err
	})
	if err != nil || prev.State == job.Queued || next.State != job.Queued {
		return resynced(e, prev, rev, err), false
	}
	return c.committed(ctx, e, prev, next, rev), true
}

// checkDispatched looks at a job unclaimed for a whole lease in a live pool:
// its message should be waiting in FLEET_JOBS. The message is published
// again under its message id. If none was ever stored (a publish lost with
// a broker node), that stores it. If JetStream reports a duplicate, its
// answer names the stored copy; if that copy is gone — consumed without a
// claim taking the job — the job is dispatched again under a new
// generation. A message merely waiting its turn is left alone.
func (c *Coordinator) checkDispatched(ctx context.Context, e *entry) result {
	r, rev, err := c.jobs.Get(ctx, e.id)
	if err != nil || r.State != job.Dispatched {
		return resynced(e, r, rev, err)
	}
	ack, err := c.publishDispatch(ctx, r)
	if err != nil {
		return result{e: e, err: err}
	}
	if !ack.Duplicate {
		c.log.Warn("a dispatched job had no message; published it again", zap.String("job_id", e.id), zap.Uint64("dispatch_gen", r.DispatchGen))
		return result{e: e}
	}
	if _, err := c.jobStream.GetMsg(ctx, ack.Sequence); !errors.Is(err, jetstream.ErrMsgNotFound) {
		return result{e: e, err: err} // still waiting in the queue (or unreadable now)
	}
	gen := r.DispatchGen
	res, moved := c.requeueIf(ctx, e, func(r job.Record) bool { return r.State == job.Dispatched && r.DispatchGen == gen },
		fmt.Sprintf("message of dispatch %d was consumed without a claim; dispatched again", gen))
	if moved {
		c.log.Warn("a dispatched job's message was consumed without a claim; dispatching it again", zap.String("job_id", e.id), zap.Uint64("dispatch_gen", gen))
	}
	return res
}

// reroute takes back a dispatched job from a pool with no live factory. Its
// old message, if a factory of that pool ever claims it, is dropped as a
// stale dispatch generation.
func (c *Coordinator) reroute(ctx context.Context, e *entry) result {
	pool := e.pool
	res, moved := c.requeueIf(ctx, e, func(r job.Record) bool { return r.State == job.Dispatched && r.Pool == pool },
		"pool "+pool+" has no live factory; routed again")
	if moved {
		c.log.Warn("re-routing a job stranded in a dead pool", zap.String("job_id", e.id), zap.String("pool", pool))
	}
	return res
}

// maxDelivered handles one MaxDeliver advisory: the message is read by its
// stream sequence, kept in FLEET_DEAD, deleted, and its job marked dead.
func (c *Coordinator) maxDelivered(ctx context.Context, data []byte) {
	var adv struct {
		Stream     string `json:"stream"`
		Consumer   string `json:"consumer"`
		StreamSeq  uint64 `json:"stream_seq"`
		Deliveries uint64 `json:"deliveries"`
	}
	if err := json.Unmarshal(data, &adv); err != nil || adv.Stream != subjects.StreamJobs || adv.StreamSeq == 0 {
		return
	}
	raw, err := c.jobStream.GetMsg(ctx, adv.StreamSeq)
	if err != nil {
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			c.log.Warn("max-deliveries message unreadable", zap.Uint64("seq", adv.StreamSeq), zap.Error(err))
		}
		return
	}
	id := raw.Header.Get(subjects.HeaderJobID)
	reason := fmt.Sprintf("delivered %d times by %s without finishing (poison message)", adv.Deliveries, adv.Consumer)
	gen, _ := parseUint(raw.Header.Get(subjects.HeaderDispatchGen))
	killed := false
	if subjects.ValidToken(id) {
		// The job dies with the reason; commit dead-letters its record.
		prev, next, rev, err := c.jobs.Mutate(ctx, id, func(r job.Record) (job.Record, bool, error) {
			if r.State.Terminal() || r.DispatchGen != gen || !job.CanTransition(r.State, job.Dead) {
				return r, false, nil
			}
			n, err := r.Kill(reason, time.Now().UTC())
			return n, err == nil, err
		})
		if err == nil && next.State == job.Dead && prev.State != job.Dead {
			c.log.Warn("poison job marked dead", zap.String("job_id", id), zap.Uint64("deliveries", adv.Deliveries))
			c.commit(prev, next, rev)
			killed = true
		}
	}
	if !killed {
		// No live job owns it (unknown, finished, or an older dispatch):
		// keep the message itself.
		extra := nats.Header{}
		extra.Set(subjects.HeaderSource, raw.Subject)
		extra.Set(subjects.HeaderStream, fmt.Sprintf("%s:%d", subjects.StreamJobs, adv.StreamSeq))
		if err := c.b.DeadLetter(ctx, subjects.DeadProduct, broker.DeadJob, reason, id,
			fmt.Sprintf("maxdeliver:%d", adv.StreamSeq), raw.Data, extra); err != nil {
			c.log.Error("poison message not dead-lettered; left in place", zap.Uint64("seq", adv.StreamSeq), zap.Error(err))
			return
		}
	}
	if err := c.jobStream.DeleteMsg(ctx, adv.StreamSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		c.log.Warn("poison message not deleted", zap.Uint64("seq", adv.StreamSeq), zap.Error(err))
	}
}

func parseUint(s string) (uint64, error) {
	var n uint64
	_, err := fmt.Sscan(s, &n)
	return n, err
}
