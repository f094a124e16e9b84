package job

import (
	"encoding/json"
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
}

// EventFor describes the transition from prev to next.
func EventFor(prev, next Record) Event {
	from := prev.State
	if prev.ID == "" {
		from = "" // creation
	}
	e := Event{JobID: next.ID, Product: next.Spec.Product, From: from, To: next.State,
		Epoch: next.Epoch, Attempt: next.Attempt, Pool: next.Pool, Owner: next.Owner, At: next.Updated}
	switch next.State {
	case Failed, Dead, Cancelled, Queued:
		e.Reason = next.LastError
	}
	return e
}

// Encode returns the event's JSON.
func (e Event) Encode() []byte {
	b, _ := json.Marshal(e) // plain types only
	return b
}
