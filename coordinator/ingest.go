package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// ingestConsumer is the durable every coordinator pulls submissions from.
const ingestConsumer = "coordinator-ingest"

func (c *Coordinator) startIngest(ctx context.Context) (jetstream.ConsumeContext, error) {
	cons, err := c.b.JS.CreateOrUpdateConsumer(ctx, subjects.StreamIngest, jetstream.ConsumerConfig{
		Durable:       ingestConsumer,
		Description:   "coordinators validating submissions",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 4096,
		MaxWaiting:    4096,
	})
	if err != nil {
		return nil, fmt.Errorf("coordinator: ingest consumer: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		c.spawn(func() { c.ingest(m) })
	}, jetstream.PullMaxMessages(256), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		c.log.Debug("ingest consume", zap.Error(err))
	}))
	if err != nil {
		return nil, fmt.Errorf("coordinator: consume ingest: %w", err)
	}
	return cc, nil
}

// ingest validates one submission and records it as a job, or dead-letters
// it with the reason. The message is acked only once its outcome is stored.
func (c *Coordinator) ingest(m jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	meta, err := m.Metadata()
	if err != nil {
		c.log.Error("ingest message without metadata", zap.Error(err))
		_ = m.Term()
		return
	}
	v, err := c.admit(ctx, m, meta)
	if err != nil {
		c.log.Warn("ingest failed, will retry", zap.Uint64("seq", meta.Sequence.Stream), zap.Error(err))
		_ = m.NakWithDelay(time.Second)
		return
	}
	if err := m.Ack(); err != nil {
		c.log.Debug("ingest ack", zap.Error(err))
	}
	c.reply(m.Headers().Get(subjects.HeaderReplyTo), v)
}

func (c *Coordinator) admit(ctx context.Context, m jetstream.Msg, meta *jetstream.MsgMetadata) (broker.Verdict, error) {
	product, ok := subjects.ProductFromIngest(m.Subject())
	var spec job.Spec
	err := fmt.Errorf("%w: subject %q does not name a valid product", job.ErrInvalidSpec, m.Subject())
	if ok {
		spec, err = job.DecodeSpecFor(m.Data(), product)
	}
	if err != nil {
		c.met.rejected.Inc()
		extra := nats.Header{}
		extra.Set(subjects.HeaderSource, m.Subject())
		extra.Set(subjects.HeaderStream, subjects.StreamIngest+":"+strconv.FormatUint(meta.Sequence.Stream, 10))
		if derr := c.b.DeadLetter(ctx, product, broker.DeadRejected, err.Error(), "",
			"rejected:"+strconv.FormatUint(meta.Sequence.Stream, 10)+":"+strconv.FormatInt(meta.Timestamp.UnixNano(), 10),
			m.Data(), extra); derr != nil {
			return broker.Verdict{}, derr
		}
		return broker.Verdict{Status: broker.StatusRejected, Reason: err.Error()}, nil
	}
	id := job.IDForMessage(product, meta.Sequence.Stream, meta.Timestamp.UnixNano())
	if spec.IdempotencyKey != "" {
		id = job.IDForKey(product, spec.IdempotencyKey)
	}
	rec := job.NewRecord(id, spec, time.Now().UTC())
	rev, err := c.jobs.Create(ctx, rec)
	if errors.Is(err, broker.ErrExists) {
		c.met.duplicates.Inc()
		return broker.Verdict{JobID: id, Status: broker.StatusDuplicate, Reason: "a job with this idempotency key exists"}, nil
	}
	if err != nil {
		return broker.Verdict{}, err
	}
	c.met.accepted.Inc()
	c.commit(job.Record{}, rec, rev)
	return broker.Verdict{JobID: id, Status: broker.StatusAccepted}, nil
}

// reply sends the verdict to a submitter waiting on an inbox. Only inbox
// subjects are answered, so a submission cannot make the coordinator publish
// into fleet's own subjects.
func (c *Coordinator) reply(to string, v broker.Verdict) {
	if to == "" || !strings.HasPrefix(to, nats.InboxPrefix) || strings.ContainsAny(to, "*> \t\r\n") {
		return
	}
	data, _ := json.Marshal(v)
	if err := c.b.NC.Publish(to, data); err != nil {
		c.log.Debug("verdict not sent", zap.Error(err))
	}
}
