package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// serveControl subscribes to fleet.ctl.* in the coordinators' queue group.
func (c *Coordinator) serveControl() (*nats.Subscription, error) {
	sub, err := c.b.NC.QueueSubscribe(subjects.Ctl("*"), subjects.CtlQueueGroup, func(m *nats.Msg) {
		c.spawn(func() { c.handle(m) })
	})
	if err != nil {
		return nil, fmt.Errorf("coordinator: serve control API: %w", err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	return sub, nil
}

func (c *Coordinator) handle(m *nats.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	verb := strings.TrimPrefix(m.Subject, subjects.CtlRoot+".")
	var reply any
	switch verb {
	case subjects.VerbClaim:
		reply = c.claim(ctx, m.Data)
	case subjects.VerbRenew:
		reply = c.leaseCall(ctx, m.Data, c.renew)
	case subjects.VerbComplete:
		reply = c.complete(ctx, m.Data)
	case subjects.VerbRelease:
		reply = c.leaseCall(ctx, m.Data, c.release)
	case subjects.VerbLease:
		reply = c.leaseCall(ctx, m.Data, c.checkLease)
	case subjects.VerbCancel:
		reply = c.cancel(ctx, m.Data)
	case subjects.VerbRegister, subjects.VerbHeartbeat:
		reply = c.register(ctx, m.Data, verb == subjects.VerbRegister)
	case subjects.VerbDeregister:
		reply = c.deregister(ctx, m.Data)
	default:
		reply = job.LeaseReply{Err: job.NewCtlError(fmt.Errorf("%w: unknown control verb %q", job.ErrBadRequest, verb))}
	}
	c.met.ctl(verb, reply)
	if m.Reply == "" {
		return
	}
	data, _ := json.Marshal(reply)
	if err := m.Respond(data); err != nil {
		c.log.Debug("control reply not sent", zap.String("verb", verb), zap.Error(err))
	}
}

func (c *Coordinator) claim(ctx context.Context, data []byte) job.ClaimReply {
	req, err := job.DecodeRequest[job.ClaimRequest](data)
	if err != nil {
		return job.ClaimReply{Err: job.NewCtlError(err)}
	}
	var res job.ClaimResult
	prev, next, rev, err := c.jobs.Mutate(ctx, req.JobID, func(r job.Record) (job.Record, bool, error) {
		n, cr := r.Claim(req, time.Now().UTC(), c.cfg.LeaseTTL)
		res = cr
		return n, cr.Changed, nil
	})
	if err != nil {
		if errors.Is(err, job.ErrNotFound) {
			// A message for a job with no record: nothing to run, drop it.
			return job.ClaimReply{Verdict: job.VerdictDrop, Reason: err.Error()}
		}
		return job.ClaimReply{Err: job.NewCtlError(err)}
	}
	if res.Changed {
		c.commit(prev, next, rev)
	}
	out := job.ClaimReply{Verdict: res.Verdict, Reason: res.Reason, RetryMs: res.Retry.Milliseconds()}
	if res.Verdict == job.VerdictRun {
		out.Epoch, out.Attempt, out.LeaseUntil, out.Spec = next.Epoch, next.Attempt, next.LeaseUntil, &next.Spec
	}
	return out
}

type leaseOp func(ctx context.Context, req job.LeaseRequest) (job.LeaseReply, error)

func (c *Coordinator) leaseCall(ctx context.Context, data []byte, op leaseOp) job.LeaseReply {
	req, err := job.DecodeRequest[job.LeaseRequest](data)
	if err == nil {
		var r job.LeaseReply
		if r, err = op(ctx, req); err == nil {
			return r
		}
	}
	if errors.Is(err, job.ErrStaleEpoch) {
		c.met.stale.Inc()
	}
	return job.LeaseReply{Err: job.NewCtlError(err)}
}

func (c *Coordinator) renew(ctx context.Context, req job.LeaseRequest) (job.LeaseReply, error) {
	_, next, _, err := c.jobs.Mutate(ctx, req.JobID, func(r job.Record) (job.Record, bool, error) {
		n, err := r.Renew(req.Epoch, req.Factory, time.Now().UTC(), c.cfg.LeaseTTL)
		return n, err == nil, err
	})
	return job.LeaseReply{State: next.State, LeaseUntil: next.LeaseUntil}, err
}

func (c *Coordinator) release(ctx context.Context, req job.LeaseRequest) (job.LeaseReply, error) {
	prev, next, rev, err := c.jobs.Mutate(ctx, req.JobID, func(r job.Record) (job.Record, bool, error) {
		n, err := r.Release(req.Epoch, req.Factory, req.Reason, time.Now().UTC())
		return n, err == nil, err
	})
	if err == nil {
		c.commit(prev, next, rev)
	}
	return job.LeaseReply{State: next.State}, err
}

func (c *Coordinator) checkLease(ctx context.Context, req job.LeaseRequest) (job.LeaseReply, error) {
	r, _, err := c.jobs.Get(ctx, req.JobID)
	if err != nil {
		return job.LeaseReply{}, err
	}
	if err := r.CheckLease(req.Epoch, time.Now().UTC()); err != nil {
		return job.LeaseReply{State: r.State}, err
	}
	return job.LeaseReply{State: r.State, LeaseUntil: r.LeaseUntil}, nil
}

func (c *Coordinator) complete(ctx context.Context, data []byte) job.LeaseReply {
	req, err := job.DecodeRequest[job.CompleteRequest](data)
	if err != nil {
		return job.LeaseReply{Err: job.NewCtlError(err)}
	}
	prev, next, rev, err := c.jobs.Mutate(ctx, req.JobID, func(r job.Record) (job.Record, bool, error) {
		n, err := r.Complete(req.Epoch, req.Factory, req.Outcome, time.Now().UTC(), c.cfg.Backoff)
		return n, err == nil, err
	})
	if err != nil {
		if errors.Is(err, job.ErrStaleEpoch) {
			c.met.stale.Inc()
		}
		return job.LeaseReply{Err: job.NewCtlError(err)}
	}
	c.commit(prev, next, rev)
	return job.LeaseReply{State: next.State}
}

func (c *Coordinator) cancel(ctx context.Context, data []byte) job.LeaseReply {
	req, err := job.DecodeRequest[job.CancelRequest](data)
	if err != nil {
		return job.LeaseReply{Err: job.NewCtlError(err)}
	}
	reason := req.Reason
	if reason == "" {
		reason = "by operator"
	}
	prev, next, rev, err := c.jobs.Mutate(ctx, req.JobID, func(r job.Record) (job.Record, bool, error) {
		n, err := r.Cancel(reason, time.Now().UTC())
		return n, err == nil, err
	})
	if err != nil {
		return job.LeaseReply{Err: job.NewCtlError(err)}
	}
	c.commit(prev, next, rev)
	return job.LeaseReply{State: next.State}
}

// register records a factory (and, on first sight of its pool, makes sure
// the pool's consumer exists) and tells it where to pull from.
func (c *Coordinator) register(ctx context.Context, data []byte, first bool) job.RegisterReply {
	info, err := job.DecodeRequest[job.FactoryInfo](data)
	if err != nil {
		return job.RegisterReply{Err: job.NewCtlError(err)}
	}
	c.mu.Lock()
	known := c.pools[info.Pool]
	c.mu.Unlock()
	if first || !known {
		if err := c.b.EnsurePoolConsumer(ctx, info.Pool, c.cfg.LeaseTTL, c.cfg.PoolStateOnDisk); err != nil {
			return job.RegisterReply{Err: job.NewCtlError(err)}
		}
		c.mu.Lock()
		c.pools[info.Pool] = true
		c.mu.Unlock()
	}
	info.LastSeen = time.Now().UTC()
	data, _ = json.Marshal(info)
	if _, err := c.facs.Put(ctx, info.ID, data); err != nil {
		return job.RegisterReply{Err: job.NewCtlError(err)}
	}
	if first {
		c.log.Info("factory registered", zap.String("factory", info.ID), zap.String("pool", info.Pool),
			zap.Strings("caps", info.Caps), zap.Int("slots", info.Slots))
	}
	return job.RegisterReply{Stream: subjects.StreamJobs, Consumer: subjects.PoolConsumer(info.Pool),
		LeaseTTL: c.cfg.LeaseTTL, Renew: c.cfg.RenewEvery}
}

func (c *Coordinator) deregister(ctx context.Context, data []byte) job.RegisterReply {
	info, err := job.DecodeRequest[job.FactoryInfo](data)
	if err != nil {
		return job.RegisterReply{Err: job.NewCtlError(err)}
	}
	if err := c.facs.Delete(ctx, info.ID); err != nil {
		return job.RegisterReply{Err: job.NewCtlError(err)}
	}
	c.log.Info("factory deregistered", zap.String("factory", info.ID), zap.String("pool", info.Pool))
	return job.RegisterReply{}
}
