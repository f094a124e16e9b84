package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// Call sends a control request on fleet.ctl.<verb> and decodes the reply.
// It returns job.ErrNoReply when no coordinator is serving.
func (b *Broker) Call(ctx context.Context, verb string, req, reply any) error {
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode %s request: %w", verb, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	msg, err := b.NC.RequestWithContext(ctx, subjects.Ctl(verb), data)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("%w: %s: %v (is `fleet coordinator` running?)", job.ErrNoReply, verb, err)
		}
		return fmt.Errorf("%s: %w", verb, err)
	}
	return job.DecodeReply(msg.Data, reply)
}

// Verdict is the coordinator's answer to a submission.
type Verdict struct {
	JobID  string `json:"job_id,omitempty"`
	Status string `json:"status"` // accepted | duplicate | rejected
	Reason string `json:"reason,omitempty"`
	Seq    uint64 `json:"seq,omitempty"` // FLEET_INGEST sequence
}

// Verdict statuses.
const (
	StatusAccepted  = "accepted"
	StatusDuplicate = "duplicate"
	StatusRejected  = "rejected"
	StatusPending   = "pending" // acknowledged by JetStream, no coordinator verdict yet
)

// ErrRejected is returned by Submit for a submission the coordinator refused.
var ErrRejected = errors.New("submission rejected")

// Submit publishes a raw submission for product on fleet.ingest.<product>,
// deduplicated by idemKey, and waits up to wait for a coordinator's verdict.
// A submission is accepted once JetStream acknowledges it: with no verdict
// in time the returned status is "pending", and the job is still safe.
func (b *Broker) Submit(ctx context.Context, product, idemKey string, data []byte, wait time.Duration) (Verdict, error) {
	if err := subjects.CheckToken("product", product); err != nil {
		return Verdict{}, err
	}
	inbox := b.NC.NewRespInbox()
	sub, err := b.NC.SubscribeSync(inbox)
	if err != nil {
		return Verdict{}, fmt.Errorf("submit: %w", err)
	}
	defer sub.Unsubscribe()
	msg := nats.NewMsg(subjects.Ingest(product))
	msg.Data = data
	msg.Header.Set(subjects.HeaderReplyTo, inbox)
	var opts []jetstream.PublishOpt
	if idemKey != "" {
		opts = append(opts, jetstream.WithMsgID(product+":"+idemKey))
	}
	ack, err := b.JS.PublishMsg(ctx, msg, opts...)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) {
			return Verdict{}, fmt.Errorf("submit: no FLEET_INGEST stream answered: start a coordinator or `fleet up` first: %w", err)
		}
		return Verdict{}, fmt.Errorf("submit: publish: %w", err)
	}
	v := Verdict{Status: StatusPending, Seq: ack.Sequence}
	if idemKey != "" {
		v.JobID = job.IDForKey(product, idemKey)
	}
	if ack.Duplicate {
		v.Status = StatusDuplicate
		return v, nil
	}
	if wait <= 0 {
		return v, nil
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	reply, err := sub.NextMsgWithContext(wctx)
	if err != nil {
		return v, nil // pending: the coordinator has not answered yet
	}
	var got Verdict
	if err := json.Unmarshal(reply.Data, &got); err != nil {
		return v, fmt.Errorf("submit: bad verdict: %w", err)
	}
	got.Seq = ack.Sequence
	if got.Status == StatusRejected {
		return got, fmt.Errorf("%w: %s", ErrRejected, got.Reason)
	}
	return got, nil
}

// Dead kinds, in the Fleet-Kind header of FLEET_DEAD messages.
const (
	DeadRejected = "rejected" // a submission that failed validation
	DeadJob      = "dead"     // a job that spent its attempts or was poison
)

// DeadLetter stores body on fleet.dead.<product> with a person-readable
// reason. msgID deduplicates a retried dead-lettering.
func (b *Broker) DeadLetter(ctx context.Context, product, kind, reason, jobID, msgID string, body []byte, extra nats.Header) error {
	if !subjects.ValidToken(product) {
		product = subjects.DeadProduct
	}
	msg := nats.NewMsg(subjects.Dead(product))
	msg.Data = body
	for k, vs := range extra {
		for _, v := range vs {
			msg.Header.Add(k, v)
		}
	}
	msg.Header.Set(subjects.HeaderKind, kind)
	msg.Header.Set(subjects.HeaderReason, reason)
	if jobID != "" {
		msg.Header.Set(subjects.HeaderJobID, jobID)
	}
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	if _, err := b.JS.PublishMsg(ctx, msg, opts...); err != nil {
		return fmt.Errorf("dead-letter %s: %w", orDefault(jobID, msgID), err)
	}
	return nil
}

// DispatchMsgID is the Nats-Msg-Id of a job's dispatch generation.
func DispatchMsgID(jobID string, gen uint64) string { return jobID + ":" + strconv.FormatUint(gen, 10) }

// ReadQueueState reads every key of fleet_queue_state.
func (b *Broker) ReadQueueState(ctx context.Context) (map[string]job.QueueState, error) {
	kv, err := b.KV(ctx, subjects.BucketQueueState)
	if err != nil {
		return nil, err
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("read queue state: %w", err)
	}
	out := map[string]job.QueueState{}
	for k := range lister.Keys() {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue // deleted between list and get
		}
		var qs job.QueueState
		if err := json.Unmarshal(e.Value(), &qs); err == nil {
			out[k] = qs
		}
	}
	return out, nil
}
