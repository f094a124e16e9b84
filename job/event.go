package job

import (
	"encoding/json"
	"fmt"
	"time"
)

// Event is one state transition, published on fleet.events.<product>.<job>.
// From/To let a reader check a history against the transition table and spot
// a gap.
type Event struct {
	JobID   string    `json:"job_id"`
	Product string    `json:"product"`
	From    State     `json:"from"`
	To      State     `json:"to"`
	Epoch   uint64    `json:"epoch,omitempty"`
	Attempt int       `json:"attempt,omitempty"`
	Pool    string    `json:"pool,omitempty"`
	Owner   string    `json:"owner,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	At      time.Time `json:"at"`
	Rev     uint64    `json:"rev"` // fleet_jobs revision this transition wrote
	// What the backlog orders a queued job by.
	Priority   int       `json:"priority,omitempty"`
	Created    time.Time `json:"created,omitzero"`
	Requires   Labels    `json:"requires,omitempty"`
	RetryAt    time.Time `json:"retry_at,omitzero"`
	Unroutable bool      `json:"unroutable,omitempty"`
}

// EventFor describes the transition from prev to next.
func EventFor(prev, next Record, rev uint64) Event {
	from := prev.State
	if prev.ID == "" {
		from = "" // creation
	}
	e := Event{JobID: next.ID, Product: next.Spec.Product, From: from, To: next.State,
		Epoch: next.Epoch, Attempt: next.Attempt, Pool: next.Pool, Owner: next.Owner, At: next.Updated,
		Rev: rev, Priority: next.Spec.Priority, Created: next.Created, Requires: next.Spec.Requires,
		RetryAt: next.RetryAt, Unroutable: next.Unroutable}
	switch next.State {
	case Failed, Dead, Cancelled, Queued:
		e.Reason = next.LastError
	}
	return e
}

// Transition returns the event of the transition that the revision rev of
// r wrote, if it wrote one (see Record.Moved).
func (r Record) Transition(rev uint64) (Event, bool) {
	if !r.Moved {
		return Event{}, false
	}
	prev := Record{}
	if r.From != "" {
		prev = Record{ID: r.ID, State: r.From}
	}
	return EventFor(prev, r, rev), true
}

// DecodeEvent parses an event read from FLEET_EVENTS.
func DecodeEvent(b []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return e, err
	}
	if !e.To.Valid() {
		return e, fmt.Errorf("job: event for %s: unknown state %q", e.JobID, e.To)
	}
	return e, nil
}

// Encode returns the event's JSON, as encoding/json writes it (see codec.go).
func (e Event) Encode() []byte {
	if eventEncodable(&e) {
		return appendEvent(make([]byte, 0, eventSizeHint(&e)), &e)
	}
	b, _ := json.Marshal(e) // a time outside RFC 3339: nil, as it always was
	return b
}
