package job

import "time"

// QueueState is a value in fleet_queue_state: under key "total" for the
// whole fleet, under "pool.<name>" for one pool. For a pool, Queued counts
// the waiting jobs that pool could run (its demand).
type QueueState struct {
	Pool             string    `json:"pool,omitempty"`
	Caps             Labels    `json:"caps,omitempty"`
	Queued           int       `json:"queued"`
	Unroutable       int       `json:"unroutable"`
	Blocked          int       `json:"blocked"`
	Dispatched       int       `json:"dispatched"`
	Running          int       `json:"running"`
	RetryWaiting     int       `json:"retry_waiting"`
	Factories        int       `json:"factories"`
	WaitingFactories int       `json:"waiting_factories"` // live factories with a free slot
	Slots            int       `json:"slots"`
	FreeSlots        int       `json:"free_slots"`
	OldestQueuedSec  float64   `json:"oldest_queued_age_sec"`
	Gate             string    `json:"gate"` // "on" | "off"
	Leader           string    `json:"leader,omitempty"`
	Updated          time.Time `json:"updated"`
}
