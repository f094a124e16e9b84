// Package scheduler holds fleet's routing rules as pure functions: which
// pools can serve a job (hard capability filter), which of them gets it
// (score), the order jobs leave the backlog in, and a person-readable
// explanation of why a job is waiting.
package scheduler

import (
	"fmt"
	"sort"
	"strings"

	"github.com/agentqueue/fleet/job"
)

// Pool is the scheduler's view of one capability pool.
type Pool struct {
	Name      string
	Caps      job.Labels // what every live factory of the pool offers
	Factories int        // live factories
	Slots     int        // their slots in total
	Inflight  int        // jobs dispatched to or running in the pool
	Prefetch  int        // extra jobs the gate lets wait in the pool's queue
}

// Live reports whether the pool has a factory to run anything.
func (p Pool) Live() bool { return p.Factories > 0 && p.Slots > 0 }

// Room is how many more jobs the gate may release into the pool now.
func (p Pool) Room() int { return max(0, p.Slots+p.Prefetch-p.Inflight) }

// Serves reports whether the pool passes the hard filter for req.
func (p Pool) Serves(req job.Labels) bool { return p.Live() && p.Caps.Covers(req) }

// Candidates returns the live pools that can run a job requiring req.
func Candidates(req job.Labels, pools []Pool) []Pool {
	var out []Pool
	for _, p := range pools {
		if p.Serves(req) {
			out = append(out, p)
		}
	}
	return out
}

// Better orders pools for release: more room first, ties by name for
// determinism. It is the order Pick chooses by, and the order a caller
// keeping candidates in a heap must keep them in.
func Better(a, b Pool) bool {
	if ra, rb := a.Room(), b.Room(); ra != rb {
		return ra > rb
	}
	return a.Name < b.Name
}

// Pick chooses among candidate pools the one to release a job into now: the
// one with the most room (spreading load), ties by name for determinism.
// ok is false when no candidate has room.
func Pick(candidates []Pool) (best Pool, ok bool) {
	for _, p := range candidates {
		if p.Room() > 0 && (!ok || Better(p, best)) {
			best, ok = p, true
		}
	}
	return best, ok
}

// Item is a queued job as the backlog orders it.
type Item struct {
	ID       string
	Priority int
	Created  int64 // unix nanos
}

// Before orders the backlog: higher priority first, then older first, then
// by id so the order is total.
func Before(a, b Item) bool {
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	if a.Created != b.Created {
		return a.Created < b.Created
	}
	return a.ID < b.ID
}

// Explain says in words why a job requiring req is where it is.
func Explain(req job.Labels, pools []Pool) string {
	cands := Candidates(req, pools)
	need := "nothing"
	if len(req) > 0 {
		need = strings.Join(req, ", ")
	}
	if len(cands) == 0 {
		var live []string
		for _, p := range pools {
			if p.Live() {
				live = append(live, fmt.Sprintf("%s [%s]", p.Name, strings.Join(p.Caps, ", ")))
			}
		}
		sort.Strings(live)
		if len(live) == 0 {
			return fmt.Sprintf("unroutable: requires %s, and no factory is live; start one with `fleet factory --cap ...`", need)
		}
		return fmt.Sprintf("unroutable: requires %s, which no live pool offers (live: %s); enroll a factory with those capabilities", need, strings.Join(live, "; "))
	}
	if best, ok := Pick(cands); ok {
		return fmt.Sprintf("routable: requires %s; pool %s has room for %d more", need, best.Name, best.Room())
	}
	var parts []string
	for _, p := range cands {
		parts = append(parts, fmt.Sprintf("%s (%d slots, %d in flight)", p.Name, p.Slots, p.Inflight))
	}
	return fmt.Sprintf("waiting for a free slot: requires %s; every pool that can run it is full: %s", need, strings.Join(parts, ", "))
}
