package factory

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// handle takes one delivery from claim to ack. Once a call is refused for a
// stale epoch it sends nothing more on the delivery: no ack, no nak, no +WPI.
func (f *Factory) handle(hard context.Context, msg jetstream.Msg) {
	md, err := msg.Metadata()
	jobID := msg.Headers().Get(subjects.HeaderJobID)
	gen, gerr := strconv.ParseUint(msg.Headers().Get(subjects.HeaderDispatchGen), 10, 64)
	if err != nil || gerr != nil || !subjects.ValidToken(jobID) {
		f.log.Warn("malformed job message terminated", zap.String("subject", msg.Subject()))
		_ = msg.TermWithReason("not a fleet job message")
		return
	}
	log := f.log.With(zap.String("job_id", jobID))
	ctx, cancel := context.WithTimeout(hard, 10*time.Second)
	var claim job.ClaimReply
	err = f.b.Call(ctx, subjects.VerbClaim, job.ClaimRequest{JobID: jobID, DispatchGen: gen, Factory: f.cfg.ID,
		StreamSeq: md.Sequence.Stream, Delivery: md.NumDelivered}, &claim)
	cancel()
	if err == nil {
		err = claim.Err.AsError()
	}
	switch {
	case err != nil:
		log.Warn("claim failed; message returned for redelivery", zap.Error(err))
		_ = msg.NakWithDelay(time.Second)
		return
	case claim.Verdict == job.VerdictDrop:
		log.Debug("delivery dropped", zap.String("reason", claim.Reason))
		_ = msg.Ack()
		return
	case claim.Verdict == job.VerdictLater:
		_ = msg.NakWithDelay(time.Duration(claim.RetryMs)*time.Millisecond + 100*time.Millisecond)
		return
	case claim.Verdict != job.VerdictRun || claim.Spec == nil:
		log.Error("unexpected claim reply", zap.String("verdict", string(claim.Verdict)))
		_ = msg.NakWithDelay(time.Second)
		return
	}
	log = log.With(zap.Uint64("epoch", claim.Epoch))
	log.Debug("running", zap.Int("attempt", claim.Attempt))
	l := &lease{f: f, msg: msg, jobID: jobID, epoch: claim.Epoch, until: claim.LeaseUntil, log: log}
	runCtx, stopRun := context.WithCancelCause(hard)
	defer stopRun(nil)
	keeperDone := make(chan struct{})
	go func() {
		defer close(keeperDone)
		l.keep(runCtx, stopRun)
	}()
	out := f.cfg.Runner.Run(runCtx, Task{JobID: jobID, Epoch: claim.Epoch, Attempt: claim.Attempt, Spec: *claim.Spec,
		NATSURL: f.b.NC.ConnectedUrlRedacted(), Log: l.shipLine})
	cause := context.Cause(runCtx)
	stopRun(errRunEnded)
	<-keeperDone
	switch {
	case errors.Is(cause, errFenced), errors.Is(cause, errLeaseLost), errors.Is(cause, errConnGone):
		log.Warn("run abandoned; nothing reported", zap.Error(cause))
	case errors.Is(cause, errShutdown):
		l.release("factory shut down before the job finished")
	default:
		l.complete(out)
	}
}

var errRunEnded = errors.New("run ended")

// lease is one claimed delivery's lease, kept alive while the job runs.
type lease struct {
	f     *Factory
	msg   jetstream.Msg
	jobID string
	epoch uint64
	until time.Time
	log   *zap.Logger

	logMu   sync.Mutex // shipLine is called from the stdout and stderr pumps
	lastLog jetstream.PubAckFuture
}

// keep renews the lease every renew interval: +WPI on the message, then
// renew on the record. A stale epoch stops the run at once; failing to renew
// until the lease lapses stops it too.
func (l *lease) keep(ctx context.Context, stop context.CancelCauseFunc) {
	l.f.mu.Lock()
	every, ttl := l.f.renew, l.f.leaseTTL
	l.f.mu.Unlock()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Now().After(l.until) {
			stop(errLeaseLost)
			return
		}
		rctx, cancel := context.WithTimeout(ctx, min(every, 5*time.Second))
		var r job.LeaseReply
		err := l.f.b.Call(rctx, subjects.VerbRenew, job.LeaseRequest{JobID: l.jobID, Epoch: l.epoch, Factory: l.f.cfg.ID}, &r)
		cancel()
		if err == nil {
			err = r.Err.AsError()
		}
		switch {
		case err == nil:
			// +WPI only once the record confirms we still hold the job.
			_ = l.msg.InProgress()
			l.until = r.LeaseUntil
			if l.until.IsZero() {
				l.until = time.Now().Add(ttl)
			}
		case errors.Is(err, job.ErrStaleEpoch), errors.Is(err, job.ErrNotOwner), errors.Is(err, job.ErrBadRequest):
			l.log.Warn("lease refused; killing the run", zap.Error(err))
			stop(errFenced)
			return
		default:
			if ctx.Err() == nil {
				l.log.Warn("renew failed; will retry until the lease lapses", zap.Error(err), zap.Time("lease_until", l.until))
			}
		}
	}
}

// complete reports the outcome, then acks. It retries while no coordinator
// answers, holding the message with +WPI, until the lease would lapse.
func (l *lease) complete(out job.Outcome) {
	l.flushLogs()
	req := job.CompleteRequest{JobID: l.jobID, Epoch: l.epoch, Factory: l.f.cfg.ID, Outcome: out}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var r job.LeaseReply
		err := l.f.b.Call(ctx, subjects.VerbComplete, req, &r)
		cancel()
		if err == nil {
			err = r.Err.AsError()
		}
		if err == nil {
			// A plain ack, not a double ack: once the outcome is recorded a
			// lost ack is harmless (the redelivery's claim sees a finished
			// job and drops it), so waiting for the broker's confirmation
			// would only hold the slot for a round trip.
			if aerr := l.msg.Ack(); aerr != nil {
				l.log.Debug("ack after complete", zap.Error(aerr))
			}
			l.log.Debug("completed", zap.String("state", string(r.State)))
			return
		}
		if !errors.Is(err, job.ErrNoReply) || time.Now().After(l.until) || l.f.b.NC.IsClosed() {
			l.log.Warn("outcome not recorded; sending nothing more", zap.Error(err))
			return
		}
		_ = l.msg.InProgress()
		time.Sleep(250 * time.Millisecond)
	}
}

// release gives the job back for retry without spending an attempt.
func (l *lease) release(reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var r job.LeaseReply
	err := l.f.b.Call(ctx, subjects.VerbRelease, job.LeaseRequest{JobID: l.jobID, Epoch: l.epoch, Factory: l.f.cfg.ID, Reason: reason}, &r)
	if err == nil {
		err = r.Err.AsError()
	}
	if err != nil {
		l.log.Warn("release refused; the lease will lapse instead", zap.Error(err))
		return
	}
	_ = l.msg.Ack()
	l.log.Info("released for retry")
}

// shipLine publishes one output line on fleet.logs.<job>, tagged with the
// epoch so a reader can tell a fenced run's lines.
func (l *lease) shipLine(stream string, line []byte) {
	m := nats.NewMsg(subjects.Logs(l.jobID))
	m.Header.Set(subjects.HeaderEpoch, strconv.FormatUint(l.epoch, 10))
	m.Header.Set(subjects.HeaderStream, stream)
	m.Data = append([]byte(nil), line...)
	l.logMu.Lock()
	defer l.logMu.Unlock()
	fut, err := l.f.b.JS.PublishMsgAsync(m)
	if err != nil {
		l.log.Debug("log line dropped", zap.Error(err))
		return
	}
	l.lastLog = fut
}

// flushLogs waits until the job's last log line is stored (lines are stored
// in order), so a reader who sees the outcome can read every line.
func (l *lease) flushLogs() {
	l.logMu.Lock()
	fut := l.lastLog
	l.logMu.Unlock()
	if fut == nil {
		return
	}
	select {
	case <-fut.Ok():
	case <-fut.Err():
	case <-time.After(5 * time.Second):
	}
}
