package job

import (
	"encoding/json"
	"fmt"
	"time"
)

// Record is a job's durable state: the value of its key in fleet_jobs. Every
// change is a compare-and-set on the key's revision; the methods below are
// the pure rules for each change and return the new record.
type Record struct {
	ID          string    `json:"id"`
	Spec        Spec      `json:"spec"`
	State       State     `json:"state"`
	Unroutable  bool      `json:"unroutable,omitempty"`
	Pool        string    `json:"pool,omitempty"`
	DispatchGen uint64    `json:"dispatch_gen"`
	Epoch       uint64    `json:"epoch"`
	Owner       string    `json:"owner,omitempty"`
	LeaseUntil  time.Time `json:"lease_until,omitzero"`
	StreamSeq   uint64    `json:"stream_seq,omitempty"` // FLEET_JOBS sequence of the claimed message
	Delivery    uint64    `json:"delivery,omitempty"`   // JetStream delivery count of the claimed message
	Attempt     int       `json:"attempt"`
	RetryAt     time.Time `json:"retry_at,omitzero"`
	ExitCode    *int      `json:"exit_code,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	OutputTail  string    `json:"output_tail,omitempty"`
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
	Started     time.Time `json:"started,omitzero"`
	Finished    time.Time `json:"finished,omitzero"`

	// Moved and From describe the write that stored this revision: whether
	// it changed the state, and from what. The store stamps them on every
	// write, so each revision of fleet_jobs carries its own transition and
	// the audit trail can be derived from the bucket's stream alone.
	Moved bool  `json:"moved,omitempty"`
	From  State `json:"from,omitempty"`
}

// NewRecord makes the queued record of a validated spec.
func NewRecord(id string, spec Spec, now time.Time) Record {
	return Record{ID: id, Spec: spec, State: Queued, Created: now, Updated: now}
}

// Encode returns the record's JSON, as encoding/json writes it (see codec.go).
func (r Record) Encode() []byte {
	if recordEncodable(&r) {
		return appendRecord(make([]byte, 0, recordSizeHint(&r)), &r)
	}
	// A time outside RFC 3339 or a payload that is not JSON: encoding/json
	// refuses the record, and says why.
	b, err := json.Marshal(r)
	if err != nil {
		panic(fmt.Sprintf("job: encode record %s: %v", r.ID, err))
	}
	return b
}

// DecodeRecord parses a record read from fleet_jobs.
func DecodeRecord(b []byte) (Record, error) {
	var r Record
	if err := decodeRecord(b, &r); err != nil {
		return r, fmt.Errorf("job: decode record: %w", err)
	}
	if !r.State.Valid() {
		return r, fmt.Errorf("job: decode record %s: unknown state %q", r.ID, r.State)
	}
	return r, nil
}

func (r Record) to(s State, now time.Time) (Record, error) {
	if err := CheckTransition(r.State, s); err != nil {
		return r, fmt.Errorf("job %s: %w", r.ID, err)
	}
	r.State = s
	r.Updated = now
	return r, nil
}

// Dispatch moves a queued job into pool under a new dispatch generation; the
// generation travels on the pool message so a stale copy can be recognised.
func (r Record) Dispatch(pool string, now time.Time) (Record, error) {
	n, err := r.to(Dispatched, now)
	if err != nil {
		return r, err
	}
	n.Pool, n.Unroutable = pool, false
	n.DispatchGen++
	return n, nil
}

// Verdict is the answer to a claim.
type Verdict string

const (
	VerdictRun   Verdict = "run"   // run it under the returned epoch
	VerdictDrop  Verdict = "drop"  // this delivery is obsolete: ack it, run nothing
	VerdictLater Verdict = "later" // another factory holds a live lease: nak with delay
)

// ClaimResult is the pure outcome of a claim.
type ClaimResult struct {
	Verdict Verdict
	Reason  string
	Retry   time.Duration // for VerdictLater
	Changed bool          // the record must be written
}

// Claim applies a factory's claim of a delivery. A claim succeeds for a
// dispatched job of the same generation, or for a running one whose lease
// has lapsed or whose message JetStream has since redelivered (a higher
// delivery count of the same stream message proves the previous delivery is
// no longer current; a different copy of the message proves nothing and
// waits). Each success bumps the epoch: the fencing token.
func (r Record) Claim(c ClaimRequest, now time.Time, lease time.Duration) (Record, ClaimResult) {
	drop := func(why string) (Record, ClaimResult) { return r, ClaimResult{Verdict: VerdictDrop, Reason: why} }
	switch {
	case r.State.Terminal():
		return drop("job is " + string(r.State))
	case c.DispatchGen < r.DispatchGen:
		return drop(fmt.Sprintf("delivery is of dispatch %d, the job is at dispatch %d", c.DispatchGen, r.DispatchGen))
	case c.DispatchGen > r.DispatchGen:
		// The message is newer than the record read: a copy of the record
		// that is behind. Never drop on it (the ack would lose the job).
		return r, ClaimResult{Verdict: VerdictLater, Retry: time.Second,
			Reason: fmt.Sprintf("delivery is of dispatch %d, the record read is at dispatch %d", c.DispatchGen, r.DispatchGen)}
	case r.State == Running:
		redelivered := c.StreamSeq == r.StreamSeq && c.Delivery > r.Delivery
		if now.Before(r.LeaseUntil) && !redelivered {
			return r, ClaimResult{Verdict: VerdictLater, Reason: "held by " + r.Owner + " under a live lease", Retry: r.LeaseUntil.Sub(now)}
		}
	case r.State != Dispatched:
		return drop("job is " + string(r.State))
	}
	if r.Attempt >= r.Spec.MaxAttempts {
		n, err := r.to(Dead, now)
		if err != nil {
			return drop(err.Error())
		}
		n.LastError = fmt.Sprintf("lease lost on every one of %d attempts (last: %s)", r.Attempt, orNone(r.LastError))
		n.Finished = now
		return n, ClaimResult{Verdict: VerdictDrop, Reason: n.LastError, Changed: true}
	}
	n, err := r.to(Running, now)
	if err != nil {
		return drop(err.Error())
	}
	n.Epoch++
	n.Attempt++
	n.Owner = c.Factory
	n.Delivery, n.StreamSeq = c.Delivery, c.StreamSeq
	n.LeaseUntil = now.Add(lease)
	n.Started = now
	return n, ClaimResult{Verdict: VerdictRun, Changed: true}
}

func orNone(s string) string {
	if s == "" {
		return "no error recorded"
	}
	return s
}

// checkHolder refuses a call whose epoch is not the record's current one.
func (r Record) checkHolder(epoch uint64, factory string) error {
	switch {
	case epoch > r.Epoch:
		return fmt.Errorf("%w: job %s never issued epoch %d", ErrBadRequest, r.ID, epoch)
	case epoch < r.Epoch:
		return fmt.Errorf("%w: job %s is at epoch %d, the call carries %d", ErrStaleEpoch, r.ID, r.Epoch, epoch)
	case r.State != Running:
		return fmt.Errorf("%w: job %s is %s", ErrStaleEpoch, r.ID, r.State)
	case factory != "" && factory != r.Owner:
		return fmt.Errorf("%w: job %s is owned by %s", ErrNotOwner, r.ID, r.Owner)
	}
	return nil
}

// CheckLease reports whether epoch is still the job's current lease.
func (r Record) CheckLease(epoch uint64, now time.Time) error {
	if err := r.checkHolder(epoch, ""); err != nil {
		return err
	}
	if !now.Before(r.LeaseUntil) {
		return fmt.Errorf("%w: job %s lease lapsed at %s", ErrStaleEpoch, r.ID, r.LeaseUntil.Format(time.RFC3339Nano))
	}
	return nil
}

// Renew extends the holder's lease.
func (r Record) Renew(epoch uint64, factory string, now time.Time, lease time.Duration) (Record, error) {
	if err := r.checkHolder(epoch, factory); err != nil {
		return r, err
	}
	r.LeaseUntil = now.Add(lease)
	r.Updated = now
	return r, nil
}

// Outcome is what a factory reports at the end of a run.
type Outcome struct {
	ExitCode   int    `json:"exit_code"`
	Error      string `json:"error,omitempty"` // set when the run failed for another reason (timeout, spawn)
	OutputTail string `json:"output_tail,omitempty"`
}

// Succeeded reports whether the run counts as a success.
func (o Outcome) Succeeded() bool { return o.ExitCode == 0 && o.Error == "" }

// Complete records the end of the holder's run: succeeded; or failed with a
// retry time after backoff; or dead once its attempts are spent.
func (r Record) Complete(epoch uint64, factory string, o Outcome, now time.Time, backoff Backoff) (Record, error) {
	if err := r.checkHolder(epoch, factory); err != nil {
		return r, err
	}
	next := Succeeded
	if !o.Succeeded() {
		next = Failed
		if r.Attempt >= r.Spec.MaxAttempts {
			next = Dead
		}
	}
	n, err := r.to(next, now)
	if err != nil {
		return r, err
	}
	code := o.ExitCode
	n.ExitCode = &code
	n.OutputTail = o.OutputTail
	n.LeaseUntil = time.Time{}
	switch next {
	case Succeeded:
		n.LastError = ""
		n.Finished = now
	case Failed:
		n.LastError = o.describe()
		n.RetryAt = now.Add(backoff.Delay(r.Attempt))
	case Dead:
		n.LastError = fmt.Sprintf("failed %d of %d attempts; last: %s", r.Attempt, r.Spec.MaxAttempts, o.describe())
		n.Finished = now
	}
	return n, nil
}

func (o Outcome) describe() string {
	if o.Error != "" {
		return o.Error
	}
	return fmt.Sprintf("exit code %d", o.ExitCode)
}

// Release gives a running job back to the backlog without spending an
// attempt (a factory shutting down gracefully).
func (r Record) Release(epoch uint64, factory, reason string, now time.Time) (Record, error) {
	if err := r.checkHolder(epoch, factory); err != nil {
		return r, err
	}
	n, err := r.to(Queued, now)
	if err != nil {
		return r, err
	}
	n.Attempt--
	n.LeaseUntil, n.Owner = time.Time{}, ""
	n.LastError = "released: " + reason
	return n, nil
}

// Requeue moves a job back to the backlog: a failed job whose backoff is
// over, or a dispatched/running job the reconciler re-admits.
func (r Record) Requeue(reason string, now time.Time) (Record, error) {
	n, err := r.to(Queued, now)
	if err != nil {
		return r, err
	}
	n.RetryAt, n.LeaseUntil, n.Owner = time.Time{}, time.Time{}, ""
	if reason != "" {
		n.LastError = reason
	}
	return n, nil
}

// Cancel stops a job that has not finished.
func (r Record) Cancel(reason string, now time.Time) (Record, error) {
	if r.State.Terminal() {
		return r, fmt.Errorf("%w: job %s is %s", ErrFinished, r.ID, r.State)
	}
	n, err := r.to(Cancelled, now)
	if err != nil {
		return r, err
	}
	n.LastError = "cancelled: " + reason
	n.Finished = now
	n.LeaseUntil = time.Time{}
	return n, nil
}

// Kill marks a job dead for a reason outside its runs (poison message).
func (r Record) Kill(reason string, now time.Time) (Record, error) {
	n, err := r.to(Dead, now)
	if err != nil {
		return r, err
	}
	n.LastError = reason
	n.Finished = now
	return n, nil
}

// Backoff is exponential retry backoff: Base·2^(attempt-1), capped at Max.
type Backoff struct {
	Base time.Duration
	Max  time.Duration
}

// DefaultBackoff is used where a zero Backoff is given.
var DefaultBackoff = Backoff{Base: 2 * time.Second, Max: 5 * time.Minute}

// Delay returns the wait after the given failed attempt (1-based).
func (b Backoff) Delay(attempt int) time.Duration {
	if b.Base <= 0 {
		b = DefaultBackoff
	}
	if b.Max <= 0 {
		b.Max = DefaultBackoff.Max
	}
	d := b.Base
	for i := 1; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}
