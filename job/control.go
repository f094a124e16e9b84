package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/agentqueue/fleet/subjects"
)

// Control-API wire types: the requests factories and the CLI send on
// fleet.ctl.<verb> and the replies coordinators send back. Every request is
// decoded strictly by DecodeRequest and checked by its Validate method.

// MaxControlBytes bounds a control request.
const MaxControlBytes = 64 << 10

// MaxOutputTail bounds the output tail a factory reports.
const MaxOutputTail = 4 << 10

// Request is a decodable control request.
type Request interface {
	Validate() error
}

// DecodeRequest parses a control request of type T strictly.
func DecodeRequest[T any, P interface {
	*T
	Request
}](data []byte) (T, error) {
	var v T
	if len(data) > MaxControlBytes {
		return v, fmt.Errorf("%w: request is %d bytes, the limit is %d", ErrBadRequest, len(data), MaxControlBytes)
	}
	if !utf8.Valid(data) {
		return v, fmt.Errorf("%w: request is not valid UTF-8", ErrBadRequest)
	}
	fast, ok := any(&v).(fastMessage)
	if !ok || decodeFast(data, fast) != nil {
		var zero T
		v = zero
		if err := decodeStrict(data, &v); err != nil {
			return v, fmt.Errorf("%w: %s", ErrBadRequest, describeJSONError(err))
		}
	}
	if err := P(&v).Validate(); err != nil {
		return v, err
	}
	return v, nil
}

func badRequest(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, a...))
}

func checkJob(id string) error {
	if err := subjects.CheckToken("job id", id); err != nil {
		return fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return nil
}

func checkFactory(id string) error {
	if err := subjects.CheckToken("factory id", id); err != nil {
		return fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return nil
}

// ClaimRequest claims one delivery of a job.
type ClaimRequest struct {
	JobID       string `json:"job_id"`
	DispatchGen uint64 `json:"dispatch_gen"`
	Factory     string `json:"factory"`
	StreamSeq   uint64 `json:"stream_seq"` // FLEET_JOBS sequence of this message
	Delivery    uint64 `json:"delivery"`   // JetStream delivery count of this message
}

func (c *ClaimRequest) Validate() error {
	if err := checkJob(c.JobID); err != nil {
		return err
	}
	if c.DispatchGen == 0 || c.Delivery == 0 || c.StreamSeq == 0 {
		return badRequest("claim needs dispatch_gen, stream_seq and delivery ≥ 1")
	}
	return checkFactory(c.Factory)
}

// ClaimReply answers a claim. On VerdictRun it carries the epoch (the fencing
// token) and the spec to run.
type ClaimReply struct {
	Verdict    Verdict   `json:"verdict"`
	Reason     string    `json:"reason,omitempty"`
	RetryMs    int64     `json:"retry_ms,omitempty"`
	Epoch      uint64    `json:"epoch,omitempty"`
	Attempt    int       `json:"attempt,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitzero"`
	Spec       *Spec     `json:"spec,omitempty"`
	Err        *CtlError `json:"error,omitempty"`
}

// LeaseRequest is renew, lease check and release: a call by the holder of an epoch.
type LeaseRequest struct {
	JobID   string `json:"job_id"`
	Epoch   uint64 `json:"epoch"`
	Factory string `json:"factory,omitempty"` // empty for a lease check from the job itself
	Reason  string `json:"reason,omitempty"`  // release only
}

func (l *LeaseRequest) Validate() error {
	if err := checkJob(l.JobID); err != nil {
		return err
	}
	if l.Epoch == 0 {
		return badRequest("epoch must be ≥ 1")
	}
	if l.Factory != "" {
		if err := checkFactory(l.Factory); err != nil {
			return err
		}
	}
	if len(l.Reason) > 1024 {
		return badRequest("reason is %d bytes, the limit is 1024", len(l.Reason))
	}
	return nil
}

// CompleteRequest reports the end of a run.
type CompleteRequest struct {
	JobID   string  `json:"job_id"`
	Epoch   uint64  `json:"epoch"`
	Factory string  `json:"factory"`
	Outcome Outcome `json:"outcome"`
}

func (c *CompleteRequest) Validate() error {
	if err := checkJob(c.JobID); err != nil {
		return err
	}
	if c.Epoch == 0 {
		return badRequest("epoch must be ≥ 1")
	}
	if err := checkFactory(c.Factory); err != nil {
		return err
	}
	if len(c.Outcome.OutputTail) > MaxOutputTail {
		return badRequest("output_tail is %d bytes, the limit is %d", len(c.Outcome.OutputTail), MaxOutputTail)
	}
	if len(c.Outcome.Error) > 1024 {
		return badRequest("outcome error is %d bytes, the limit is 1024", len(c.Outcome.Error))
	}
	return nil
}

// LeaseReply answers renew, complete, release and lease check.
type LeaseReply struct {
	State      State     `json:"state,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitzero"`
	Err        *CtlError `json:"error,omitempty"`
}

// CancelRequest cancels a job.
type CancelRequest struct {
	JobID  string `json:"job_id"`
	Reason string `json:"reason,omitempty"`
}

func (c *CancelRequest) Validate() error {
	if err := checkJob(c.JobID); err != nil {
		return err
	}
	if len(c.Reason) > 1024 {
		return badRequest("reason is %d bytes, the limit is 1024", len(c.Reason))
	}
	return nil
}

// FactoryInfo is a factory's registration and heartbeat, and its value in
// fleet_factories.
type FactoryInfo struct {
	ID       string    `json:"id"`
	Pool     string    `json:"pool"`
	Caps     Labels    `json:"caps"`
	Slots    int       `json:"slots"`
	Busy     int       `json:"busy"`
	Host     string    `json:"host,omitempty"`
	Started  time.Time `json:"started,omitzero"`
	LastSeen time.Time `json:"last_seen,omitzero"` // set by the coordinator
}

func (f *FactoryInfo) Validate() error {
	if err := checkFactory(f.ID); err != nil {
		return err
	}
	if err := subjects.CheckToken("pool", f.Pool); err != nil {
		return fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	caps, err := ParseLabels(f.Caps)
	if err != nil {
		return badRequest("caps: %v", err)
	}
	f.Caps = caps
	if f.Slots < 1 || f.Slots > 1024 {
		return badRequest("slots %d is out of range [1, 1024]", f.Slots)
	}
	if f.Busy < 0 || f.Busy > f.Slots {
		return badRequest("busy %d is out of range [0, %d]", f.Busy, f.Slots)
	}
	if len(f.Host) > 256 {
		return badRequest("host is too long")
	}
	return nil
}

// RegisterReply tells a factory where to pull and how often to renew.
type RegisterReply struct {
	Stream   string        `json:"stream,omitempty"`
	Consumer string        `json:"consumer,omitempty"`
	LeaseTTL time.Duration `json:"lease_ttl,omitempty"`
	Renew    time.Duration `json:"renew,omitempty"`
	Err      *CtlError     `json:"error,omitempty"`
}

// CtlError is an error on the wire.
type CtlError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// NewCtlError wraps err for the wire.
func NewCtlError(err error) *CtlError {
	if err == nil {
		return nil
	}
	return &CtlError{Code: Code(err), Message: err.Error()}
}

// Error implements error.
func (e *CtlError) Error() string { return e.Message }

// Unwrap gives the sentinel of the code, so errors.Is(err, ErrStaleEpoch) holds.
func (e *CtlError) Unwrap() error { return ErrorForCode(e.Code) }

// AsError returns e as an error, nil when e is nil.
func (e *CtlError) AsError() error {
	if e == nil {
		return nil
	}
	return e
}

// DecodeReply parses a reply into v, a pointer to a zero reply; a reply is
// from our own coordinators but is still checked for shape.
func DecodeReply(data []byte, v any) error {
	switch r := v.(type) {
	case *ClaimReply:
		if decodeFast(data, r) == nil {
			return nil
		}
		*r = ClaimReply{}
	case *LeaseReply:
		if decodeFast(data, r) == nil {
			return nil
		}
		*r = LeaseReply{}
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode control reply: %w", err)
	}
	return nil
}

// ErrNoReply is returned by callers when no coordinator answered.
var ErrNoReply = errors.New("job: no coordinator answered")
