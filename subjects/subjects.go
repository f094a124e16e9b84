// Package subjects owns every NATS name fleet uses: streams, consumers, KV
// buckets, subjects, header keys, and the validation of the tokens (product,
// pool, job id) that are spliced into them. Nothing else in fleet builds a
// subject by hand.
package subjects

import (
	"errors"
	"fmt"
	"strings"
)

// Streams.
const (
	StreamIngest = "FLEET_INGEST"
	StreamJobs   = "FLEET_JOBS"
	StreamEvents = "FLEET_EVENTS"
	StreamLogs   = "FLEET_LOGS"
	StreamDead   = "FLEET_DEAD"
)

// KV buckets.
const (
	BucketJobs       = "fleet_jobs"
	BucketFactories  = "fleet_factories"
	BucketQueueState = "fleet_queue_state"
	BucketBudgets    = "fleet_budgets"
	BucketConfig     = "fleet_config"
)

// Subject roots. Each stream captures Root+".>".
const (
	IngestRoot = "fleet.ingest"
	JobsRoot   = "fleet.jobs"
	EventsRoot = "fleet.events"
	LogsRoot   = "fleet.logs"
	DeadRoot   = "fleet.dead"
	CtlRoot    = "fleet.ctl"
)

// CtlQueueGroup is the queue group every coordinator serves fleet.ctl.* in.
const CtlQueueGroup = "fleet-coordinators"

// Control verbs, served on fleet.ctl.<verb>.
const (
	VerbClaim      = "claim"
	VerbRenew      = "renew"
	VerbComplete   = "complete"
	VerbRelease    = "release"
	VerbRegister   = "register"
	VerbHeartbeat  = "heartbeat"
	VerbDeregister = "deregister"
	VerbCancel     = "cancel"
	VerbLease      = "lease"
	VerbSubmit     = "submit"
)

// Header keys carried on fleet messages.
const (
	HeaderMsgID       = "Nats-Msg-Id"
	HeaderReason      = "Fleet-Reason"
	HeaderProduct     = "Fleet-Product"
	HeaderJobID       = "Fleet-Job-Id"
	HeaderDispatchGen = "Fleet-Dispatch-Gen"
	HeaderEpoch       = "Fleet-Epoch"
	HeaderStream      = "Fleet-Stream"
	HeaderReplyTo     = "Fleet-Reply-To"
	HeaderSource      = "Fleet-Source-Subject"
	HeaderKind        = "Fleet-Kind"
)

// Queue-state keys.
const (
	QueueStateTotal = "total"
	queueStatePool  = "pool."
)

// MaxTokenLen bounds every token spliced into a subject or key.
const MaxTokenLen = 64

// ErrInvalidToken is returned for a product, pool or job id that is not a
// safe subject token.
var ErrInvalidToken = errors.New("subjects: invalid token")

// ValidToken reports whether s may be used as a product, pool or job id:
// 1..MaxTokenLen characters from [A-Za-z0-9_-]. It rejects every character
// with a meaning in a subject ('.', '*', '>', whitespace).
func ValidToken(s string) bool {
	if len(s) == 0 || len(s) > MaxTokenLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// CheckToken returns a descriptive error if s is not a valid token; what
// names the token ("product", "pool", "job id") for the message.
func CheckToken(what, s string) error {
	if ValidToken(s) {
		return nil
	}
	if s == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalidToken, what)
	}
	if len(s) > MaxTokenLen {
		return fmt.Errorf("%w: %s is %d characters, the limit is %d", ErrInvalidToken, what, len(s), MaxTokenLen)
	}
	return fmt.Errorf("%w: %s %q may only contain letters, digits, '_' and '-'", ErrInvalidToken, what, s)
}

// Ingest is the subject a submission for product is published on.
func Ingest(product string) string { return IngestRoot + "." + product }

// Jobs is the subject admitted jobs for pool are published on.
func Jobs(pool string) string { return JobsRoot + "." + pool }

// Events is the subject a job's state transitions are published on.
func Events(product, jobID string) string { return EventsRoot + "." + product + "." + jobID }

// EventsForJob matches one job's events whatever its product.
func EventsForJob(jobID string) string { return EventsRoot + ".*." + jobID }

// Logs is the subject a job's output lines are published on.
func Logs(jobID string) string { return LogsRoot + "." + jobID }

// Dead is the subject rejected submissions and dead jobs of product land on.
func Dead(product string) string { return DeadRoot + "." + product }

// Ctl is the control-API subject for verb.
func Ctl(verb string) string { return CtlRoot + "." + verb }

// PoolConsumer is the durable pull consumer name for pool.
func PoolConsumer(pool string) string { return "pool-" + pool }

// QueueStatePool is the fleet_queue_state key for pool.
func QueueStatePool(pool string) string { return queueStatePool + pool }

// ProductFromIngest returns the product token of an ingest subject.
func ProductFromIngest(subject string) (string, bool) {
	p, ok := strings.CutPrefix(subject, IngestRoot+".")
	if !ok || strings.Contains(p, ".") {
		return "", false
	}
	return p, true
}

// DeadProduct is the product used on FLEET_DEAD when a submission's subject
// carried no usable product.
const DeadProduct = "_unknown"

// MaxDeliveriesAdvisory is the subject JetStream announces a message of
// FLEET_JOBS that hit its consumer's MaxDeliver on.
const MaxDeliveriesAdvisory = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + StreamJobs + ".*"
