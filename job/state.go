package job

import "fmt"

// State is a job's place in its life. The names are DESIGN.md's and appear
// verbatim in JSON, events and `fleet jobs show --json`.
type State string

const (
	Queued     State = "queued"     // in the backlog (Unroutable is a flag on it)
	Blocked    State = "blocked"    // waiting on dependencies, review or budget
	Dispatched State = "dispatched" // published to a pool
	Running    State = "running"    // claimed: owner + epoch
	Succeeded  State = "succeeded"  // terminal
	Failed     State = "failed"     // attempt failed; waits out its backoff
	Dead       State = "dead"       // terminal: max attempts, or poison
	Cancelled  State = "cancelled"  // terminal
)

// States lists every state, in life order.
var States = []State{Queued, Blocked, Dispatched, Running, Succeeded, Failed, Dead, Cancelled}

// Terminal reports whether no transition leaves s.
func (s State) Terminal() bool { return s == Succeeded || s == Dead || s == Cancelled }

// Valid reports whether s is a known state.
func (s State) Valid() bool {
	_, ok := transitions[s]
	return ok
}

// transitions is the table of allowed transitions, and the only one in fleet.
// running → running is a re-claim after the previous holder lost its lease
// (a new epoch); running → queued is a release (graceful factory shutdown,
// or the reconciler re-admitting a job whose lease lapsed with no message).
var transitions = map[State][]State{
	Queued:     {Dispatched, Blocked, Cancelled, Dead},
	Blocked:    {Queued, Cancelled},
	Dispatched: {Running, Queued, Cancelled, Dead},
	Running:    {Running, Succeeded, Failed, Dead, Queued, Cancelled},
	Failed:     {Queued, Dead, Cancelled},
	Succeeded:  {},
	Dead:       {},
	Cancelled:  {},
}

// CanTransition reports whether from → to is in the table.
func CanTransition(from, to State) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// CheckTransition returns ErrIllegalTransition (wrapped with the states)
// when from → to is not in the table.
func CheckTransition(from, to State) error {
	if CanTransition(from, to) {
		return nil
	}
	return fmt.Errorf("%w: %s → %s", ErrIllegalTransition, from, to)
}
